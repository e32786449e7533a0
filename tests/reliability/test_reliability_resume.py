"""Interrupted training runs resume to the same result as uninterrupted ones (real SIGKILLed subprocesses too)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import vlprompt.engine.train_state as TS
from vlprompt.cli.main import main

EPOCHS = 5

# Runs the CLI in a child process with the tiny test backbones registered. argv[3] holds test instrumentation:
# "sleep:S" pauses S seconds after each saved epoch (so the parent can kill it between epochs); "killsave:E"
# SIGKILLs the process itself in the middle of writing epoch E's state (temporary file written, not yet renamed).
CHILD = r"""
import os, signal, sys, time
import open_clip, torch
open_clip.add_model_config(sys.argv[1])
torch.set_num_threads(int(sys.argv[2]))
import vlprompt._io as io_
import vlprompt.engine.train_state as TS
mode, value = sys.argv[3].split(":")
save, replace = TS.save_train_state, os.replace
def slow_save(*a, **k):
    save(*a, **k)
    time.sleep(float(value))
def killing_replace(src, dst):
    if str(dst).endswith(f"train_state-e{int(value):04d}.safetensors"):
        os.kill(os.getpid(), signal.SIGKILL)
    replace(src, dst)
if mode == "sleep":
    TS.save_train_state = slow_save
else:
    io_.os.replace = killing_replace
from vlprompt.cli.main import main
sys.exit(main(sys.argv[4:]))
"""


def _argv(data, out, *extra):
    return ["train", "--dataset", f"folder:{data}", "--shots", "4", "--epochs", str(EPOCHS), "--n-ctx", "4",
            "--backbone", "vlp-tiny-rn", "--pretrained", "random", "--device", "cpu", "--cache-dir", "", "--out", str(out), *extra]


def _child(tiny_model_configs, mode, argv):
    cmd = [sys.executable, "-c", CHILD, str(tiny_model_configs), str(torch.get_num_threads()), mode, *argv]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _saved_epoch(out):
    try:
        return json.loads((out / TS.TRAIN_STATE_JSON).read_text())["epoch"]
    except (OSError, ValueError):  # not there yet
        return 0


def _history(out):
    return [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]


def _assert_same_run(a, b):
    """Bit-identical context, identical metrics and per-epoch losses; no training state left behind."""
    ctx_a, ctx_b = (load_file(str(d / "learner.safetensors"))["ctx"] for d in (a, b))
    assert torch.equal(ctx_a, ctx_b)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    for key in ("accuracy", "macro_f1", "per_class_accuracy", "val_accuracy"):
        assert ma.get(key) == mb.get(key), key
    ha, hb = _history(a), _history(b)
    assert [h["epoch"] for h in hb] == list(range(1, EPOCHS + 1))
    assert [(h["lr"], h["loss"], h["train_accuracy"]) for h in ha] == [(h["lr"], h["loss"], h["train_accuracy"])
                                                                        for h in hb]
    assert not list(b.glob("train_state*")) and not list(b.glob(".*tmp"))
    # Only JSON and safetensors artifacts (plus the empty lock file): nothing pickled, nothing half-written.
    assert {p.name for p in b.iterdir()} == {"config.json", "history.jsonl", "learner.json", "learner.safetensors",
                                            "metrics.json", TS.LOCK_FILE}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The conftest ``image_folder`` layout (3 classes, train/ and test/), built once for this module."""
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("resume") / "data"
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("test", 4)):
        for cls, col in {"red_fox": (200, 40, 40), "green_frog": (40, 180, 60), "blue_jay": (40, 60, 200)}.items():
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                arr = np.clip(np.array(col) + rng.integers(-20, 20, 3), 0, 255).astype(np.uint8)
                Image.fromarray(np.broadcast_to(arr, (24, 24, 3)).copy()).save(root / split / cls / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """An uninterrupted run (online augmentation: the image encoder sees fresh random crops every step)."""
    ref = tmp_path_factory.mktemp("reference") / "run"
    assert main(_argv(data, ref, "--augment", "online")) == 0
    return ref


@pytest.mark.slow
def test_sigkill_between_epochs_then_rerun_resumes_identically(data, tmp_path, reference, tiny_model_configs):
    out = tmp_path / "killed"
    proc = _child(tiny_model_configs, "sleep:0.5", _argv(data, out, "--augment", "online"))
    deadline = time.monotonic() + 120
    while _saved_epoch(out) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, f"child ended early: {proc.stderr.read()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "metrics.json").exists() and (out / "config.json").exists()
    saved = _saved_epoch(out)
    assert 2 <= saved < EPOCHS
    # The same command continues after the saved epoch (no --resume needed) ...
    assert main(_argv(data, out, "--augment", "online")) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["resumes"][0]["after_epoch"] == saved
    _assert_same_run(reference, out)


@pytest.mark.slow
def test_sigkill_in_the_middle_of_saving_the_state(data, tmp_path, reference, tiny_model_configs):
    out = tmp_path / "killed"
    proc = _child(tiny_model_configs, "killsave:3", _argv(data, out, "--augment", "online"))
    proc.wait(timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-2000:]
    # Epoch 3's history line and temporary weights file were written, nothing else: the trusted state is epoch 2.
    assert _saved_epoch(out) == 2 and len(_history(out)) == 3
    assert [p.name for p in out.glob("train_state-e*")] == ["train_state-e0002.safetensors"]
    assert len(list(out.glob(".train_state-e0003.safetensors.*.tmp"))) == 1
    assert main(_argv(data, out, "--augment", "online", "--resume")) == 0
    _assert_same_run(reference, out)


def test_interrupted_between_weights_and_json(data, tmp_path, reference, monkeypatch):
    """What a kill right after epoch 3's weights file is renamed (before its JSON) leaves behind."""
    out = tmp_path / "out"
    write_json = TS.atomic_write_json

    def stop_at_3(path, obj):
        if str(path).endswith(TS.TRAIN_STATE_JSON) and obj["epoch"] == 3:
            raise _Stop
        write_json(path, obj)

    with monkeypatch.context() as m:
        m.setattr(TS, "atomic_write_json", stop_at_3)
        with pytest.raises(_Stop):
            main(["--debug", *_argv(data, out, "--augment", "online")])
    assert _saved_epoch(out) == 2 and len(_history(out)) == 3
    assert sorted(p.name for p in out.glob("train_state-e*")) == ["train_state-e0002.safetensors",
                                                                  "train_state-e0003.safetensors"]
    assert main(_argv(data, out, "--augment", "online")) == 0
    _assert_same_run(reference, out)


def test_a_second_process_training_into_the_folder_is_refused(data, tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    with TS.run_lock(out):  # as another process holding the folder would
        assert main(_argv(data, out, "--augment", "none")) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"another vlprompt process (pid {os.getpid()}) is training into --out" in err
    assert not (out / "config.json").exists()


class _Stop(Exception):
    pass


def _interrupt_after(monkeypatch, epoch):
    """Make the next training stop right after saving ``epoch`` (what a kill at that moment leaves)."""
    save = TS.save_train_state

    def stopping(*a, **k):
        save(*a, **k)
        if k["epoch"] == epoch:
            raise _Stop

    monkeypatch.setattr(TS, "save_train_state", stopping)
    return lambda: monkeypatch.setattr(TS, "save_train_state", save)


@pytest.mark.parametrize("augment", ["cached:2"])  # K views drawn from the global RNG before training
def test_resume_in_feature_modes(image_folder, tmp_path, monkeypatch, augment):
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert main(_argv(image_folder, ref, "--augment", augment)) == 0
    restore = _interrupt_after(monkeypatch, 2)
    with pytest.raises(_Stop):
        main(["--debug", *_argv(image_folder, out, "--augment", augment)])
    restore()
    with (out / "history.jsonl").open("a") as f:
        f.write('{"epoch": 3, "lr": 0.0')  # a torn line, as a kill during the append leaves it
    assert main(_argv(image_folder, out, "--augment", augment)) == 0
    _assert_same_run(ref, out)


def test_interrupted_during_final_evaluation(data, tmp_path, reference, monkeypatch):
    import vlprompt.runs.train as R

    out = tmp_path / "out"

    def dead(*a, **k):
        raise _Stop

    with monkeypatch.context() as m:
        m.setattr(R, "save_learner", dead)
        with pytest.raises(_Stop):
            main(["--debug", *_argv(data, out, "--augment", "online")])
    assert _saved_epoch(out) == EPOCHS and not (out / "learner.json").exists()
    assert main(_argv(data, out, "--augment", "online")) == 0  # straight to saving and evaluating
    _assert_same_run(reference, out)


def test_resume_refusals_and_finished_runs(image_folder, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    restore = _interrupt_after(monkeypatch, 2)
    with pytest.raises(_Stop):
        main(["--debug", *_argv(image_folder, out, "--augment", "none")])
    restore()
    capsys.readouterr()
    # Another configuration is refused, naming what differs; nothing is touched.
    assert main(_argv(image_folder, out, "--augment", "none", "--lr", "0.01")) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "unfinished run (epoch 2 saved)" in err and "train.lr: 0.002 → 0.01" in err and "--overwrite" in err
    assert _saved_epoch(out) == 2 and len(_history(out)) == 2
    assert main(_argv(image_folder, out, "--resume", "--overwrite")) == 2
    assert "contradict" in capsys.readouterr().err
    # A damaged state is refused, not trusted.
    weights = next(out.glob("train_state-e*.safetensors"))
    good = weights.read_bytes()
    weights.write_bytes(good[:-8] + bytes(b ^ 0xFF for b in good[-8:]))  # flipped bits
    assert main(_argv(image_folder, out, "--augment", "none")) == 2
    assert "checksum" in capsys.readouterr().err
    weights.write_bytes(good)
    # --overwrite starts over; the finished run is then kept by --resume and refused without it.
    assert main(_argv(image_folder, out, "--augment", "none", "--lr", "0.01", "--overwrite")) == 0
    assert json.loads((out / "config.json").read_text()).get("resumes") is None
    before = (out / "metrics.json").read_bytes()
    capsys.readouterr()
    assert main(_argv(image_folder, out, "--augment", "none", "--lr", "0.01", "--resume")) == 0
    assert "accuracy" in capsys.readouterr().out and (out / "metrics.json").read_bytes() == before
    assert main(_argv(image_folder, out, "--augment", "none", "--lr", "0.01")) == 2
    assert "already holds a finished run" in capsys.readouterr().err
    assert main(_argv(image_folder, out, "--augment", "none", "--resume")) == 2  # finished, but another lr
    assert "a finished run with a different configuration" in capsys.readouterr().err


def test_history_reader_ignores_only_a_torn_last_line(tmp_path):
    from vlprompt.errors import ArtifactError

    path = tmp_path / "history.jsonl"
    path.write_text('{"epoch": 1}\n{"epoch": 2}\n{"epo')
    assert TS.read_history(path) == [{"epoch": 1}, {"epoch": 2}]
    assert TS.truncate_history(path, 1) == [{"epoch": 1}] and path.read_text() == '{"epoch": 1}\n'
    path.write_text('{"epoch": 1}\ngarbage\n{"epoch": 3}\n')
    with pytest.raises(ArtifactError, match="line 2"):
        TS.read_history(path)
