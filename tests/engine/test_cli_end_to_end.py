"""End-to-end through the CLI on a tiny generated image folder: train → eval → predict, and run-folder validity."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from vlprompt.cli.main import main

BASE = ["--backbone", "vlp-tiny-rn", "--pretrained", "random", "--device", "cpu"]


def _train(folder, out, *extra):
    return main(["train", "--dataset", f"folder:{folder}", "--shots", "4", "--epochs", "3", "--n-ctx", "4",
                 "--out", str(out), "--cache-dir", "", *BASE, *extra])


def test_train_eval_predict(image_folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(image_folder, out) == 0
    cfg = json.loads((out / "config.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    learner = json.loads((out / "learner.json").read_text())
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert cfg["method"] == "coop" and cfg["shots"] == 4 and cfg["seed"] == 1
    assert cfg["dataset"]["classnames"] == ["blue_jay", "green_frog", "red_fox"]
    assert len(cfg["fewshot"]["train"]) == 12 and all(not p.startswith("/") for p in cfg["fewshot"]["train"])
    assert cfg["backbone"]["name"] == "vlp-tiny-rn" and cfg["train"]["epochs"] == 3
    for key in ("accuracy", "macro_f1", "per_class_accuracy", "num_test", "train_seconds", "eval_seconds",
                "peak_memory_mb"):
        assert key in metrics
    assert metrics["num_test"] == 12 and 0 <= metrics["accuracy"] <= 100
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[0]["lr"] == pytest.approx(1e-5) and history[1]["lr"] == pytest.approx(0.002)
    assert learner["classnames"] == cfg["dataset"]["classnames"] and learner["config"]["n_ctx"] == 4
    assert set(load_file(str(out / "learner.safetensors"))) == {"ctx"}

    # eval on the same data reproduces the training run's test accuracy
    assert main(["eval", "--run", str(out), "--dataset", f"folder:{image_folder}", "--device", "cpu",
                 "--cache-dir", ""]) == 0
    ev = json.loads((out / "eval_data" / "metrics.json").read_text())
    assert ev["accuracy"] == pytest.approx(metrics["accuracy"])

    capsys.readouterr()
    assert main(["predict", "--run", str(out), str(image_folder / "test" / "red_fox"), "--json", "--device", "cpu"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(lines) == 4 and all(x["top"][0]["label"] in cfg["dataset"]["classnames"] for x in lines)


def test_same_seed_same_result_and_refuses_overwrite(image_folder, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _train(image_folder, a, "--augment", "online") == 0
    assert _train(image_folder, b, "--augment", "online") == 0
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert ma["accuracy"] == mb["accuracy"]
    import torch

    assert torch.equal(load_file(str(a / "learner.safetensors"))["ctx"], load_file(str(b / "learner.safetensors"))["ctx"])
    capsys.readouterr()
    assert _train(image_folder, a) == 2
    assert "already holds a finished run" in capsys.readouterr().err
    assert _train(image_folder, a, "--overwrite") == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--dataset", "folder:/nonexistent", "--out", "X"], "nonexistent"),
        (["train", "--dataset", "folder:{f}", "--out", "{o}", "--augment", "cached:0"], "--augment 'cached:0'"),
        (["train", "--dataset", "folder:{f}", "--out", "{o}", "--backbone", "RN5O"], "Did you mean"),
        (["train", "--dataset", "folder:{f}", "--out", "{o}", "--precision", "amp", "--device", "cpu"], "needs a GPU"),
        (["predict", "--run", "{o}", "{f}"], "not a finished vlprompt training run"),
    ],
)
def test_bad_input_is_one_readable_line(image_folder, tmp_path, capsys, argv, message):
    argv = [a.format(f=image_folder, o=tmp_path / "o") for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1
