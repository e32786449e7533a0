"""The v2 task suite: 11 tasks mirroring CoOp's datasets, class counts, split files, caches keyed by the renderer."""

from __future__ import annotations

import dataclasses
import json

import pytest

from vlprompt.errors import ConfigError
from vlprompt.microclip import tasks2, world2
from vlprompt.microclip.caption_words import word_token_ids

COOP_DATASETS = {"ImageNet", "Caltech101", "OxfordPets", "StanfordCars", "Flowers102", "FGVCAircraft", "Food101",
                 "DTD", "SUN397", "EuroSAT", "UCF101"}
CLASS_COUNTS = {"objects": 64, "shapes": 12, "colour_shapes": 32, "size_shapes": 24, "shades": 24, "aircraft": 24,
                "colours": 8, "textures": 8, "scenes": 28, "thermal": 10, "positions": 5}


def test_specialist_task_names_its_classes_in_words_the_model_never_read():
    spec = tasks2.TASKS["thermal"]
    assert spec.mirrors == "EuroSAT" and spec.names[:3] == ("orbicular", "quadrate", "deltoid")
    assert [v["shape"] for v in spec.class_values()][:3] == ["circle", "square", "triangle"]  # what is drawn
    with pytest.raises(ValueError, match="2 names for 10 classes"):
        dataclasses.replace(spec, names=("a", "b"))


def test_suite_mirrors_the_eleven_datasets_with_the_issue_class_counts():
    assert {n: len(tasks2.TASKS[n].classnames) for n in tasks2.FEWSHOT_TASKS} == CLASS_COUNTS
    assert {tasks2.TASKS[n].mirrors for n in tasks2.FEWSHOT_TASKS} == COOP_DATASETS
    assert max(CLASS_COUNTS.values()) >= 50 and len(tasks2.BASE2NEW_TASKS) >= 4
    assert tasks2.DOMAIN_SHIFT == {"objects": ("objects_sketch", "objects_cartoon", "objects_hard", "objects_v2")}
    words = world2.caption_words()
    caption_tokens = {t for ids in word_token_ids(sorted(words)) for t in ids}
    for name, spec in tasks2.TASKS.items():
        names = spec.classnames
        assert len(set(names)) == len(names), name
        assert spec.character and spec.zero_shot, name
        # prompts use trained words only; the specialist task's names use no token the captions ever use
        plain = [] if spec.names else names
        for text in (spec.template.format(c) for c in [*plain, ""]):
            assert set(text.replace(".", " . ").split()) <= words, (name, text)
        if spec.names:
            assert not {t for ids in word_token_ids(names) for t in ids} & caption_tokens, name
    assert tasks2.TASKS["scenes"].classnames[:2] == ["circle and square", "circle and triangle"]
    assert [n for n in tasks2.FEWSHOT_TASKS if not tasks2.TASKS[n].flip_ok] == ["positions"]


def _small(monkeypatch, *names):
    for n in names:
        monkeypatch.setitem(tasks2.TASKS, n, dataclasses.replace(tasks2.TASKS[n], n_train=2, n_val=1, n_test=2))


def test_write_task_labels_shifted_sets_and_cache_key(tmp_path, monkeypatch):
    _small(monkeypatch, "objects", "objects_hard")
    src = tasks2.write_task("objects", tmp_path)
    assert src == tmp_path / "v2" / "objects" / "split.json"
    split = json.loads(src.read_text())
    assert [len(split[p]) for p in ("train", "val", "test")] == [128, 64, 128]
    tgt = json.loads(tasks2.write_task("objects_hard", tmp_path).read_text())
    assert [len(tgt[p]) for p in ("train", "val", "test")] == [128, 64, 128]  # _small gave it train/val images
    for part in ("train", "val"):  # which are the source's
        assert [(src.parent / r).read_bytes() for r, _, _ in split[part][:4]] == [
            (tmp_path / "v2" / "objects_hard" / r).read_bytes() for r, _, _ in tgt[part][:4]]
    assert (src.parent / split["test"][0][0]).read_bytes() != (
        tmp_path / "v2" / "objects_hard" / tgt["test"][0][0]).read_bytes()
    manifest = json.loads((src.parent / "manifest.json").read_text())
    assert manifest["world"] == world2.world_fingerprint() and manifest["classnames"][9] == "striped square"
    stamp = src.stat().st_mtime_ns
    assert tasks2.write_task("objects", tmp_path) == src and src.stat().st_mtime_ns == stamp  # reused
    monkeypatch.setattr(world2, "world_fingerprint", lambda: "v2-another-renderer")
    tasks2.write_task("objects", tmp_path)  # a new renderer invalidates the cache
    assert json.loads((src.parent / "manifest.json").read_text())["world"] == "v2-another-renderer"


def test_shifted_sets_are_test_sets():
    for name in tasks2.DOMAIN_SHIFT["objects"]:
        spec = tasks2.TASKS[name]
        assert (spec.n_train, spec.n_val, spec.n_test) == (0, 0, tasks2.TASKS["objects"].n_test), name


def test_scene_and_colour_classes_render_what_they_name(monkeypatch):
    spec = tasks2.TASKS["scenes"]
    assert spec.class_values()[0] == {"shape": "circle", "shape2": "square", "count": "two"}
    with pytest.raises(ConfigError, match="unknown v2 micro task"):
        tasks2.write_task("imagenet")
