"""``--tensorboard``: the event files, read back with TensorBoard's own reader (``EventAccumulator``,
``EventMultiplexer``), hold exactly the values of ``history.jsonl`` / ``metrics.json``, one event per optimiser
step; a resumed run continues the log without repeating a step; a missing package is one clear error."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import vlprompt.engine.train_state as TS
from vlprompt.cli.main import main
from vlprompt.engine import tracking as T
from vlprompt.engine.recipe import steps_per_epoch

EPOCHS, SHOTS, BATCH = 3, 4, 5
STEP_TAGS = {"train/loss", "train/accuracy", "train/lr"}
EPOCH_TAGS = {"epoch/loss", "epoch/train_accuracy", "epoch/lr"}


def _argv(data, out, *extra, epochs=EPOCHS):
    return ["train", "--dataset", f"folder:{data}", "--shots", str(SHOTS), "--epochs", str(epochs), "--n-ctx", "2",
            "--batch-size", str(BATCH), "--backbone", "vlp-tiny-rn", "--pretrained", "random", "--device", "cpu",
            "--cache-dir", "", "--augment", "none", "--out", str(out), *extra]


def _events(run_dir) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir / T.LOG_DIR))
    acc.Reload()
    return acc


def _scalars(acc: EventAccumulator) -> dict[str, list[tuple[int, float]]]:
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _history(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]


def _f32(x: float) -> pytest.approx:
    return pytest.approx(x, rel=1e-6)  # TensorBoard stores scalars as float32


def test_train_events_equal_history_metrics_and_the_recipe(image_folder, tmp_path):
    out = tmp_path / "run"
    assert main(_argv(image_folder, out, "--tensorboard")) == 0
    history, metrics = _history(out), json.loads((out / "metrics.json").read_text())
    config = json.loads((out / "config.json").read_text())
    acc = _events(out)
    scalars = _scalars(acc)
    evals = {f"eval/{k}" for k in ("accuracy", "macro_f1", "val_accuracy") if k in metrics}
    assert set(scalars) == STEP_TAGS | EPOCH_TAGS | evals and {"eval/accuracy", "eval/macro_f1"} <= evals

    # One event per optimiser step, numbered 1..E·S over all epochs. 3 classes × 4 shots = 12 images in batches
    # of 5 with drop_last (Dassl's rule): 2 steps per epoch.
    spe = steps_per_epoch(len(config["fewshot"]["train"]), BATCH)
    assert len(config["fewshot"]["train"]) == 12 and spe == 2
    for tag in STEP_TAGS:
        assert [s for s, _ in scalars[tag]] == list(range(1, EPOCHS * spe + 1)), tag
    # The official schedule (reference §2.1): warm-up 1e-5 in epoch 1, then cosine from 0.002 over T=3 epochs.
    lrs = [1e-5, 0.002, 0.002 * 0.5 * (1 + math.cos(math.pi / 3))]
    assert [v for _, v in scalars["train/lr"]] == [_f32(lr) for lr in lrs for _ in range(spe)]
    assert [v for _, v in scalars["epoch/lr"]] == [_f32(lr) for lr in lrs]
    # Per-step values average (equal batch sizes) to the epoch's history record; epoch/* ARE the records.
    for e, rec in enumerate(history):
        steps = slice(e * spe, (e + 1) * spe)
        assert sum(v for _, v in scalars["train/loss"][steps]) / spe == pytest.approx(rec["loss"], rel=1e-5)
        assert sum(v for _, v in scalars["train/accuracy"][steps]) / spe == _f32(rec["train_accuracy"])
        for tag, key in (("epoch/loss", "loss"), ("epoch/train_accuracy", "train_accuracy"), ("epoch/lr", "lr")):
            assert scalars[tag][e] == (rec["epoch"], _f32(rec[key])), tag
    assert [r["epoch"] for r in history] == [s for s, _ in scalars["epoch/loss"]] == [1, 2, 3]
    # Test metrics at the end, at step = epochs.
    for tag in evals:
        assert scalars[tag] == [(EPOCHS, _f32(metrics[tag.split("/", 1)[1]]))], tag
    # The HPARAMS dashboard's entry: the run's method, shots, seed, with the eval metrics.
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["method"].string_value == "coop" and start.hparams["shots"].number_value == SHOTS
    assert start.hparams["label"].string_value == config["label"] == "CoOp M=2 end"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} == evals
    # One log directory with one event file; nothing else added to the run folder.
    assert [p.parent.name for p in T.event_files(out / T.LOG_DIR)] == [T.LOG_DIR]
    assert {p.name for p in out.iterdir()} == {"config.json", "history.jsonl", "learner.json", "learner.safetensors",
                                              "metrics.json", TS.LOCK_FILE, T.LOG_DIR}


def test_no_flag_no_log_directory(image_folder, tmp_path):
    out = tmp_path / "run"
    assert main(_argv(image_folder, out, "--epochs", "1")) == 0
    assert not (out / T.LOG_DIR).exists()


class _Stop(Exception):
    pass


def test_the_writer_is_closed_when_training_fails(image_folder, tmp_path, monkeypatch):
    """A run that fails in the middle of epoch 2 (after its first step) closes (flushes) its writer, and the
    events up to the failure are readable."""
    step_scalars, close = T.step_scalars, T.TensorBoardTracker.close
    closed = []

    def failing(record):
        if record["global_step"] == 4:
            raise _Stop
        return step_scalars(record)

    def spy_close(self):
        closed.append(self.log_dir)
        close(self)

    monkeypatch.setattr(T, "step_scalars", failing)
    monkeypatch.setattr(T.TensorBoardTracker, "close", spy_close)
    out = tmp_path / "run"
    with pytest.raises(_Stop):
        main(["--debug", *_argv(image_folder, out, "--tensorboard")])
    assert closed == [out / T.LOG_DIR]
    scalars = _scalars(_events(out))
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3]
    assert [s for s, _ in scalars["epoch/loss"]] == [1] and not (out / "metrics.json").exists()


def test_resume_continues_the_log_without_repeating_steps(image_folder, tmp_path, monkeypatch):
    """A kill after epoch 3's history line and events, before its state is saved (state: epoch 2): the resumed run
    redoes epoch 3; its log must equal an uninterrupted run's, step for step and value for value."""
    epochs = 4
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert main(_argv(image_folder, ref, "--tensorboard", epochs=epochs)) == 0
    save = TS.save_train_state

    def stop_before_saving_3(*a, **k):
        if k["epoch"] == 3:
            raise _Stop
        save(*a, **k)

    with monkeypatch.context() as m:
        m.setattr(TS, "save_train_state", stop_before_saving_3)
        with pytest.raises(_Stop):
            main(["--debug", *_argv(image_folder, out, "--tensorboard", epochs=epochs)])
    spe = steps_per_epoch(12, BATCH)
    interrupted = _scalars(_events(out))
    assert [s for s, _ in interrupted["train/loss"]] == list(range(1, 3 * spe + 1))  # epoch 3 was logged ...
    assert json.loads((out / TS.TRAIN_STATE_JSON).read_text())["epoch"] == 2  # ... but not saved
    # A kill while writing leaves a torn record at the end of the event file: skipped, not fatal.
    with T.event_files(out / T.LOG_DIR)[-1].open("ab") as f:
        f.write(b"\x20\x00\x00\x00\x00")

    assert main(_argv(image_folder, out, "--tensorboard", epochs=epochs)) == 0
    assert json.loads((out / "config.json").read_text())["resumes"][0]["after_epoch"] == 2
    resumed, reference = _scalars(_events(out)), _scalars(_events(ref))
    assert set(resumed) == set(reference)
    for tag, events in reference.items():
        steps = [s for s, _ in resumed[tag]]
        assert len(steps) == len(set(steps)), f"{tag}: a step recorded twice"
        # bit-identical values: the resumed training is exact (tests/reliability/test_reliability_resume.py)
        assert sorted(resumed[tag]) == events, tag
    assert len(reference["train/loss"]) == epochs * spe
    assert [v for _, v in resumed["epoch/loss"]] == [_f32(r["loss"]) for r in _history(out)]
    # The earlier file (rewritten: epochs 1-2's steps) and the resumed writer's file.
    assert len(T.event_files(out / T.LOG_DIR)) == 2

    # --overwrite starts a new log: the old run's events are gone.
    assert main(_argv(image_folder, out, "--tensorboard", "--overwrite", epochs=1)) == 0
    assert len(_scalars(_events(out))["train/loss"]) == spe and len(T.event_files(out / T.LOG_DIR)) == 1
    # ... and so does --overwrite without the flag: no stale log of the replaced run is left behind.
    assert main(_argv(image_folder, out, "--overwrite", epochs=1)) == 0
    assert not (out / T.LOG_DIR).exists()


# A child process training with the tiny test backbones registered, each optimiser step slowed down (so that the
# parent can SIGKILL it in the middle of an epoch, with that epoch's first step events already written).
CHILD = r"""
import sys, time
import open_clip, torch
open_clip.add_model_config(sys.argv[1])
torch.set_num_threads(int(sys.argv[2]))  # the reference run's count: float sums depend on it
import vlprompt.engine.tracking as T
step_scalars = T.step_scalars
def slow(record):
    time.sleep(0.15)
    return step_scalars(record)
T.step_scalars = slow
from vlprompt.cli.main import main
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.slow
def test_sigkill_mid_epoch_then_rerun_gives_the_uninterrupted_log(image_folder, tmp_path, tiny_model_configs):
    import os
    import signal
    import subprocess
    import time

    epochs = 4
    ref, out = tmp_path / "ref", tmp_path / "killed"
    assert main(_argv(image_folder, ref, "--tensorboard", epochs=epochs)) == 0
    argv = _argv(image_folder, out, "--tensorboard", epochs=epochs)
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tiny_model_configs), str(torch.get_num_threads()), *argv],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    state, spe = out / TS.TRAIN_STATE_JSON, steps_per_epoch(12, BATCH)

    def saved_and_logged() -> tuple[int, int]:
        try:
            saved = json.loads(state.read_text())["epoch"]
        except (OSError, ValueError, KeyError):  # not there yet
            saved = 0
        logged = len(_scalars(_events(out)).get("train/loss", [])) if T.event_files(out / T.LOG_DIR) else 0
        return saved, logged

    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:  # until a step beyond the saved epoch is logged
        saved, logged = saved_and_logged()
        if saved >= 1 and logged > saved * spe:
            break
        time.sleep(0.01)
    assert proc.poll() is None, f"child ended early: {proc.stderr.read()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (out / "metrics.json").exists()
    saved, logged = saved_and_logged()
    assert saved < epochs and logged > saved * spe  # steps logged beyond the saved state: to be dropped
    assert main(argv) == 0
    resumed, reference = _scalars(_events(out)), _scalars(_events(ref))
    assert set(resumed) == set(reference)
    for tag, events in reference.items():
        assert sorted(resumed[tag]) == events and len(resumed[tag]) == len(events), tag


def test_rewrite_deduplicates_and_is_repeatable(tmp_path):
    """What a kill between the rewrite's rename and its deletions leaves (the same events in two files) is
    repaired by the next rewrite; steps beyond the kept ones and non-train tags are dropped."""
    d = tmp_path / "tb"
    for _ in range(2):  # two files with the same events
        tracker = T.TensorBoardTracker(d)
        for step in range(1, 5):
            tracker.log_scalars({"train/loss": step / 10, "epoch/loss": step}, step)
        tracker.close()
    assert len(T.event_files(d)) == 2
    assert T.keep_completed_steps(d, 3) == 3
    assert T.keep_completed_steps(d, 3) == 3  # idempotent
    acc = EventAccumulator(str(d))
    acc.Reload()
    assert acc.Tags()["scalars"] == ["train/loss"]
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(1, _f32(0.1)), (2, _f32(0.2)), (3, _f32(0.3))]
    assert len(T.event_files(d)) == 1 and not list(d.glob(".*"))


def test_zeroshot_and_linear_probe_log_their_metrics(image_folder, tmp_path):
    common = ["--dataset", f"folder:{image_folder}", "--backbone", "vlp-tiny-rn", "--pretrained", "random",
              "--device", "cpu", "--cache-dir", "", "--tensorboard"]
    zs, lp = tmp_path / "zs", tmp_path / "lp"
    assert main(["zeroshot", *common, "--out", str(zs)]) == 0
    assert main(["linear-probe", *common, "--shots", "4", "--search-steps", "1", "--out", str(lp)]) == 0
    for run, expected in ((zs, {"accuracy", "macro_f1"}), (lp, {"accuracy", "macro_f1", "val_accuracy"})):
        metrics = json.loads((run / "metrics.json").read_text())
        scalars = _scalars(_events(run))
        assert set(scalars) == {f"eval/{k}" for k in expected}, run.name
        for key in expected:  # step 0: no prompt is trained
            assert scalars[f"eval/{key}"] == [(0, _f32(metrics[key]))], (run.name, key)


def test_missing_tensorboard_package_is_one_clear_error(image_folder, tmp_path, monkeypatch, capsys):
    # as on an installation without the extra: torch's wrapper cannot be imported
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    out = tmp_path / "run"
    assert main(_argv(image_folder, out, "--tensorboard")) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--tensorboard needs the tensorboard package" in err
    assert "pip install 'vlprompt[tensorboard]'" in err and "run without --tensorboard" in err
    assert not out.exists()  # refused before anything was loaded or written
    runs = tmp_path / "runs"
    assert main(["benchmark", "--datasets", f"folder:{image_folder}", "--methods", "zeroshot", "--shots", "1",
                 "--seeds", "1", "--backbone", "vlp-tiny-rn", "--pretrained", "random", "--device", "cpu",
                 "--out", str(runs), "--tensorboard"]) == 2
    assert "pip install 'vlprompt[tensorboard]'" in capsys.readouterr().err and not runs.exists()
    # without the flag nothing needs the package
    assert main(_argv(image_folder, out, "--epochs", "1")) == 0


def test_grid_writes_one_log_directory_per_run(image_folder, tmp_path, capsys):
    """``vlprompt benchmark --tensorboard``: TensorBoard's own directory walk (``tensorboard --logdir RUNS``) finds
    exactly one run per grid cell, each holding its own metrics."""
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    from vlprompt.benchmark import BenchmarkConfig, plan

    runs = tmp_path / "runs"
    grid = ["benchmark", "--datasets", f"folder:{image_folder}", "--shots", "1", "--seeds", "1,2", "--epochs", "2",
            "--n-ctx", "2", "--augment", "none", "--backbone", "vlp-tiny-rn", "--pretrained", "random",
            "--device", "cpu", "--cache-dir", "", "--out", str(runs), "--no-report"]
    assert main([*grid, "--tensorboard"]) == 0
    jobs = plan(BenchmarkConfig(datasets=(f"folder:{image_folder}",), shots=(1,), seeds=(1, 2), out=str(runs)))
    assert len(jobs) == 7  # zero-shot + (coop, coop-csc, linear probe) × 2 seeds
    multiplexer = EventMultiplexer().AddRunsFromDirectory(str(runs))
    multiplexer.Reload()
    expected = {str((job.out / T.LOG_DIR).relative_to(runs)) for job in jobs}
    assert set(multiplexer.Runs()) == expected
    for job in jobs:
        acc = multiplexer.GetAccumulator(str((job.out / T.LOG_DIR).relative_to(runs)))
        metrics = json.loads((job.out / "metrics.json").read_text())
        assert [(e.step, e.value) for e in acc.Scalars("eval/accuracy")] == [
            (0 if job.method in ("zeroshot", "linear-probe") else 2, _f32(metrics["accuracy"]))], str(job)
        has_steps = "train/loss" in acc.Tags()["scalars"]
        assert has_steps == (job.method in ("coop", "coop-csc")), str(job)
    # The flag is not a setting of the recipe: the grid resumes without it (every run finished: all skipped).
    capsys.readouterr()
    assert main(grid) == 0
    assert "7 already finished" in capsys.readouterr().out


def _dist_worker(rank: int, ports: list[int], folder: str, out: str) -> None:
    import torch

    torch.manual_seed(0)  # the tiny random backbone: the same weights in every process
    assert main(_argv(folder, out, "--tensorboard", "--batch-size", "6", "--lr", "0.05")) == 0


def test_under_torchrun_only_rank_0_writes_the_global_batch_values(image_folder, tmp_path):
    import os

    import torch

    if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "distributed"))
    from dist_ranks import run_ranks

    out = tmp_path / "two"
    run_ranks(_dist_worker, str(image_folder), str(out))
    files = T.event_files(out / T.LOG_DIR)
    assert len(files) == 1  # one writer
    scalars, history = _scalars(_events(out)), _history(out)
    spe = steps_per_epoch(12, 6)  # the global batch of 6 (3 rows per rank): 2 steps per epoch
    assert [s for s, _ in scalars["train/loss"]] == list(range(1, EPOCHS * spe + 1))
    for e, rec in enumerate(history):  # per-step values are the global batch's: they average to the epoch record
        steps = scalars["train/loss"][e * spe : (e + 1) * spe]
        assert sum(v for _, v in steps) / spe == pytest.approx(rec["loss"], rel=1e-5)
        assert scalars["epoch/loss"][e] == (e + 1, _f32(rec["loss"]))
