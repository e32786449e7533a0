"""A run folder's own config.json re-runs that run: `vlprompt train --config RUN/config.json --out RUN2` gives the
same metrics, the same per-epoch losses and bit-identical learned vectors, in a fresh process started from another
folder; a flag given on the command line overrides the recorded value (and is recorded); a re-run whose data or
weights changed since is refused instead of silently training on something else."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import make_image
from vlprompt.cli.main import main

TINY = ["--backbone", "vlp-tiny-rn", "--pretrained", "random", "--device", "cpu", "--cache-dir", ""]


@pytest.fixture
def hard_folder(tmp_path):
    """3 classes of nearby noisy colours: micro-CLIP's accuracy is far from 100% and depends on the seed, so equal
    metrics are evidence (a saturated 100% would be equal whatever was trained)."""
    rng = np.random.default_rng(0)
    colors = {"a_cls": (120, 100, 100), "b_cls": (100, 120, 100), "c_cls": (100, 100, 120)}
    for split, n in (("train", 12), ("test", 8)):
        for cls, col in colors.items():
            d = tmp_path / "hard" / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                make_image(d / f"{i}.png", tuple(int(c + rng.integers(-30, 30)) for c in col))
    return tmp_path / "hard"


def _read(run):
    metrics = json.loads((run / "metrics.json").read_text())
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    config = json.loads((run / "config.json").read_text())
    with safe_open(str(run / "learner.safetensors"), "pt") as f:
        meta = f.metadata()
    return metrics, history, config, load_file(str(run / "learner.safetensors")), meta


def test_run_config_reruns_the_identical_run_in_a_fresh_process(hard_folder, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    # non-default settings everywhere, so that a re-run which ignored any of them would differ
    argv = ["train", "--dataset", f"folder:{hard_folder}", "--shots", "4", "--seed", "3", "--epochs", "3",
            "--n-ctx", "4", "--csc", "--lr", "0.01", "--batch-size", "4", "--warmup-epochs", "0", "--augment",
            "online", "--crop-scale-min", "0.5", "--backbone", "microclip", "--device", "cpu", "--cache-dir", "",
            "--label", "my variant", "--out", str(a)]
    assert main(argv) == 0
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # the recorded thread count
    (tmp_path / "elsewhere").mkdir()
    proc = subprocess.run([sys.executable, "-m", "vlprompt", "train", "--config", str(a / "config.json"), "--out",
                           str(b), "--cache-dir", ""], cwd=tmp_path / "elsewhere", env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "config_file" not in proc.stderr, proc.stderr  # same versions and thread count: no replay warning

    ma, ha, ca, wa, meta_a = _read(a)
    mb, hb, cb, wb, meta_b = _read(b)
    for key in ("accuracy", "macro_f1", "per_class_accuracy", "num_test", "val_accuracy"):
        assert mb[key] == ma[key], key
    assert 0 < ma["accuracy"] < 100  # not saturated (see the fixture)
    assert [(h["epoch"], h["loss"], h["train_accuracy"], h["lr"]) for h in hb] == [(h["epoch"], h["loss"], h["train_accuracy"], h["lr"])
                                                                        for h in ha]
    assert set(wa) == set(wb) == {"ctx"} and wa["ctx"].shape == (3, 4, 128)  # CSC: one 4-vector context per class
    assert torch.equal(wa["ctx"], wb["ctx"])  # bit-identical
    assert meta_a == meta_b
    drop = ("started",)
    assert {k: v for k, v in cb.items() if k not in drop} == {k: v for k, v in ca.items() if k not in drop}
    assert ca["label"] == "my variant" and ca["learner"]["csc"] is True and ca["train"]["crop_scale_min"] == 0.5


def test_command_line_overrides_the_record_and_is_recorded(image_folder, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["train", "--dataset", f"folder:{image_folder}", "--shots", "4", "--epochs", "2", "--n-ctx", "4",
                 "--lr", "0.01", "--augment", "none", *TINY, "--out", str(a)]) == 0
    assert main(["train", "--config", str(a / "config.json"), "--seed", "2", "--epochs", "3", "--out", str(b)]) == 0
    _, ha, ca, wa, _ = _read(a)
    _, hb, cb, wb, _ = _read(b)
    assert (ca["seed"], cb["seed"]) == (1, 2) and (ca["train"]["epochs"], cb["train"]["epochs"]) == (2, 3)
    assert [h["epoch"] for h in hb] == [1, 2, 3]
    assert cb["fewshot"]["train"] != ca["fewshot"]["train"]  # seed 2 draws other images (no refusal: --seed given)
    assert not torch.equal(wa["ctx"], wb["ctx"])
    # what was not overridden still comes from the record
    assert cb["learner"] == ca["learner"] and cb["learner"]["n_ctx"] == 4
    assert cb["train"]["lr"] == 0.01 and cb["train"]["augment"] == "none" and cb["backbone"] == ca["backbone"]
    assert cb["data"] == ca["data"] and cb["data"]["root"] is None  # an absolute folder: no root needed


def test_changed_data_or_weights_are_refused_not_silently_rerun(image_folder, tmp_path, capsys):
    a = tmp_path / "a"
    assert main(["train", "--dataset", f"folder:{image_folder}", "--shots", "2", "--epochs", "1", "--n-ctx", "2",
                 "--augment", "none", *TINY, "--out", str(a)]) == 0
    config = json.loads((a / "config.json").read_text())
    capsys.readouterr()

    # the weights recorded are not those built now
    changed = dict(config, backbone={**config["backbone"], "fingerprint": "w2:0000"})
    (tmp_path / "w.json").write_text(json.dumps(changed))
    assert main(["train", "--config", str(tmp_path / "w.json"), "--out", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert "weight fingerprint" in err and "w2:0000" in err and "the weights changed" in err
    assert not (tmp_path / "w").exists()  # refused before the run folder is created

    # an image of the recorded few-shot subset was deleted: the sampler now draws another subset
    victim = config["fewshot"]["train"][0]
    (image_folder / victim).unlink()
    assert main(["train", "--config", str(a / "config.json"), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "few-shot train images differ from the recorded ones" in err
    assert f"recorded but not drawn now: '{victim}'" in err and str(a / "config.json") in err
    assert not (tmp_path / "b").exists()
    # giving a data flag on the command line takes control: no check against the record
    assert main(["train", "--config", str(a / "config.json"), "--seed", "1", "--out", str(tmp_path / "c")]) == 0

    # renamed classes are named as such
    shutil.move(image_folder / "train" / "red_fox", image_folder / "train" / "red_wolf")
    shutil.move(image_folder / "test" / "red_fox", image_folder / "test" / "red_wolf")
    assert main(["train", "--config", str(a / "config.json"), "--out", str(tmp_path / "d")]) == 2
    assert "class names are now" in capsys.readouterr().err


def test_relative_dataset_path_reruns_from_another_folder(image_folder, tmp_path, monkeypatch):
    """`--dataset folder:data` is resolved against the working directory, which the record keeps as its root."""
    monkeypatch.chdir(image_folder.parent)
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["train", "--dataset", "folder:data", "--shots", "2", "--epochs", "1", "--n-ctx", "2",
                 "--augment", "none", *TINY, "--out", str(a)]) == 0
    config = json.loads((a / "config.json").read_text())
    assert config["dataset"]["spec"] == "folder:data" and config["data"]["root"] == str(image_folder.parent)
    monkeypatch.chdir(tmp_path / "a")
    assert main(["train", "--config", str(a / "config.json"), "--out", str(b)]) == 0
    assert torch.equal(load_file(str(a / "learner.safetensors"))["ctx"], load_file(str(b / "learner.safetensors"))["ctx"])


def test_zeroshot_and_linear_probe_rerun_from_their_config(image_folder, tmp_path, capsys):
    common = ["--dataset", f"folder:{image_folder}", *TINY]
    z1, z2, z3 = tmp_path / "z1", tmp_path / "z2", tmp_path / "z3"
    assert main(["zeroshot", *common, "--template", "a blurry photo of a {}.", "--out", str(z1)]) == 0
    assert main(["zeroshot", "--config", str(z1 / "config.json"), "--out", str(z2)]) == 0
    c1, c2 = (json.loads((d / "config.json").read_text()) for d in (z1, z2))
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (z1, z2))
    assert c2["learner"] == c1["learner"] == {"templates": ["a blurry photo of a {}."]}
    assert (m2["accuracy"], m2["per_class_accuracy"]) == (m1["accuracy"], m1["per_class_accuracy"])
    # --templates on the command line replaces the recorded --template (they exclude each other)
    assert main(["zeroshot", "--config", str(z1 / "config.json"), "--templates", "ensemble7", "--out", str(z3)]) == 0
    from vlprompt.data.templates import get_templates

    c3 = json.loads((z3 / "config.json").read_text())
    assert c3["learner"]["templates"] == get_templates("ensemble7", c1["dataset"]["template"], dataset="folder")
    assert "a blurry photo of a {}." not in c3["learner"]["templates"]
    # a zero-shot record is not a training run
    assert main(["train", "--config", str(z1 / "config.json"), "--out", str(tmp_path / "t")]) == 2
    assert "records a 'zeroshot' run, not a prompt-learning one; re-run it with vlprompt zeroshot --config" in \
        capsys.readouterr().err

    p1, p2 = tmp_path / "p1", tmp_path / "p2"
    assert main(["linear-probe", *common, "--shots", "4", "--search-steps", "2", "--max-iter", "50",
                 "--out", str(p1)]) == 0
    assert main(["linear-probe", "--config", str(p1 / "config.json"), "--out", str(p2)]) == 0
    c1, c2 = (json.loads((d / "config.json").read_text()) for d in (p1, p2))
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (p1, p2))
    assert c2["learner"]["num_steps"] == 2 and c2["learner"]["max_iter"] == 50
    assert (m2["C"], m2["accuracy"], m2["val_accuracy"]) == (m1["C"], m1["accuracy"], m1["val_accuracy"])
    w1, w2 = (load_file(str(d / "probe.safetensors")) for d in (p1, p2))
    assert set(w1) == set(w2) == {"coef", "intercept", "classes"}
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


def test_benchmark_layout_rerun_and_moved_data_is_still_checked(tmp_path, capsys):
    """An official CoOp layout (oxford_pets, split_zhou_OxfordPets.json, Dassl's sampler): the record keeps --root,
    the re-run is identical; data moved elsewhere re-runs with --root NEW and is still checked against the record."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
    from coop_layouts import write_split_json

    write_split_json("oxford_pets", str(tmp_path / "DATA"))
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert main(["train", "--dataset", "oxford_pets", "--root", str(tmp_path / "DATA"), "--shots", "2", "--epochs",
                 "2", "--n-ctx", "2", "--augment", "none", *TINY, "--out", str(a)]) == 0
    config = json.loads((a / "config.json").read_text())
    assert config["data"]["root"] == str(tmp_path / "DATA") and config["dataset"]["spec"] == "oxford_pets"
    assert len(config["fewshot"]["train"]) == 6
    assert main(["train", "--config", str(a / "config.json"), "--out", str(b)]) == 0
    ctx = load_file(str(a / "learner.safetensors"))["ctx"]
    assert torch.equal(ctx, load_file(str(b / "learner.safetensors"))["ctx"])

    shutil.move(tmp_path / "DATA", tmp_path / "MOVED")
    capsys.readouterr()
    assert main(["train", "--config", str(a / "config.json"), "--out", str(c)]) == 2
    assert f"data root '{tmp_path / 'DATA'}' does not exist" in capsys.readouterr().err
    assert main(["train", "--config", str(a / "config.json"), "--root", str(tmp_path / "MOVED"), "--out", str(c)]) == 0
    assert torch.equal(ctx, load_file(str(c / "learner.safetensors"))["ctx"])
    # a changed split file under the moved root is caught: the few-shot draw differs from the record
    split_file = tmp_path / "MOVED" / "oxford_pets" / "split_zhou_OxfordPets.json"
    split = json.loads(split_file.read_text())
    split["train"] = split["train"][::-1]
    split_file.write_text(json.dumps(split))
    assert main(["train", "--config", str(a / "config.json"), "--root", str(tmp_path / "MOVED"), "--out",
                 str(tmp_path / "d")]) == 2
    assert "few-shot train images differ from the recorded ones" in capsys.readouterr().err
