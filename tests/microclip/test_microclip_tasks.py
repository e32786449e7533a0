"""Micro benchmark tasks: split_zhou files, counts, idempotent atomic writing, domain-shift pairing."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
from PIL import Image

from vlprompt.errors import ConfigError
from vlprompt.microclip import tasks, world


def test_task_table_is_well_formed():
    assert 6 <= len(tasks.FEWSHOT_TASKS) <= 10
    words = world.caption_words()
    for name, spec in tasks.TASKS.items():
        names = spec.classnames
        assert len(set(names)) == len(names) >= 2, name
        # class names and the hand-written template only use words the text tower was trained on
        for text in (spec.template.format(c) for c in names):
            assert set(text.replace(".", " . ").split()) <= words, (name, text)
        assert 40 <= spec.n_test <= 60 and spec.n_train >= 16
    for source, targets in tasks.DOMAIN_SHIFT.items():
        assert source in tasks.FEWSHOT_TASKS
        for t in targets:
            assert tasks.TASKS[t].classnames == tasks.TASKS[source].classnames
            assert tasks.TASKS[t].test_styles != tasks.TASKS[source].styles


def test_write_task_split_format_counts_and_idempotence(tmp_path, monkeypatch):
    spec = tasks.TASKS["sizes"]
    path = tasks.write_task("sizes", tmp_path, seed=0)
    assert path == tmp_path / "sizes" / "split.json"
    split = json.loads(path.read_text())
    assert set(split) == {"train", "val", "test"}
    c = len(spec.classnames)
    assert [len(split[p]) for p in ("train", "val", "test")] == [c * spec.n_train, c * spec.n_val, c * spec.n_test]
    seen = set()
    for part in ("train", "val", "test"):
        for rel, label, cname in split[part]:
            assert not os.path.isabs(rel) and rel.startswith(f"images/{cname.replace(' ', '_')}/")
            assert spec.classnames[label] == cname
            seen.add(rel)
    assert len(seen) == c * (spec.n_train + spec.n_val + spec.n_test)  # no file used twice
    with Image.open(path.parent / split["test"][0][0]) as im:
        assert im.size == (64, 64) and im.mode == "RGB"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left behind

    # reused as-is when complete
    img = path.parent / split["train"][0][0]
    before = (img.stat().st_mtime_ns, path.stat().st_mtime_ns)
    assert tasks.write_task("sizes", tmp_path, seed=0) == path
    assert (img.stat().st_mtime_ns, path.stat().st_mtime_ns) == before
    # a corrupted image is detected by the manifest hash and the task is rewritten with the same bytes
    good = img.read_bytes()
    img.write_bytes(b"broken")
    tasks.write_task("sizes", tmp_path, seed=0)
    assert img.read_bytes() == good
    # a change to the world's rendering (its fingerprint) invalidates the cache
    monkeypatch.setattr(world, "world_fingerprint", lambda: "another-renderer")
    tasks.write_task("sizes", tmp_path, seed=0)
    assert json.loads((path.parent / "manifest.json").read_text())["world"] == "another-renderer"
    monkeypatch.undo()
    # another seed draws other images
    other = tasks.write_task("sizes", tmp_path / "s1", seed=1)
    assert (other.parent / split["train"][0][0]).read_bytes() != good


def test_domain_shift_target_shares_source_train_images(tmp_path, monkeypatch):
    for name in ("shapes", "shapes_sketch"):  # shrink the tasks to keep the test fast
        monkeypatch.setitem(tasks.TASKS, name, dataclasses.replace(tasks.TASKS[name], n_train=2, n_val=1, n_test=2))
    src = json.loads(tasks.write_task("shapes", tmp_path).read_text())
    tgt = json.loads(tasks.write_task("shapes_sketch", tmp_path).read_text())

    def pixels(name, rel):
        return np.asarray(Image.open(tmp_path / name / rel))

    assert src["train"] == tgt["train"]
    for rel, _, _ in src["train"]:
        assert np.array_equal(pixels("shapes", rel), pixels("shapes_sketch", rel))
    t = pixels("shapes_sketch", tgt["test"][0][0]).astype(int)
    assert (t[..., 0] == t[..., 1]).all()  # sketches are grey
    s = pixels("shapes", src["test"][0][0]).astype(int)
    assert not (s[..., 0] == s[..., 1]).all()  # photos are not


def test_unknown_task_and_default_cache_dir(monkeypatch, tmp_path):
    with pytest.raises(ConfigError, match="unknown micro task 'nope'.*positions"):
        tasks.write_task("nope", tmp_path)
    monkeypatch.setenv("VLPROMPT_CACHE", str(tmp_path / "c"))
    assert tasks.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("VLPROMPT_CACHE")
    assert tasks.default_cache_dir().parts[-3:] == (".cache", "vlprompt", "microclip_tasks")
