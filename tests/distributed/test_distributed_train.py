"""`vlprompt train` / `vlprompt eval` in 2 processes (gloo, as torchrun starts them) equal the 1-process run, and
only rank 0 writes the run folder and the feature cache."""

from __future__ import annotations

import json
import os

import pytest
import torch
from dist_ranks import run_ranks
from safetensors.torch import load_file

from vlprompt.cli.main import main

pytestmark = pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")


def _train(folder, out, cache, *extra) -> int:
    torch.manual_seed(0)  # the tiny backbone is randomly initialised: the same weights in every process
    # 5 classes of 4 shots: 20 images, batches of 8 over 2 ranks; 5 classes split 3 + 2 for the text encoder
    return main(["train", "--dataset", f"folder:{folder}", "--shots", "4", "--epochs", "2", "--n-ctx", "4",
                 "--backbone", "vlp-tiny-vit", "--pretrained", "random", "--device", "cpu", "--batch-size", "8", "--lr", "0.05",
                 "--warmup-epochs", "0", "--out", str(out), "--cache-dir", str(cache), *extra])


def _eval(run, folder, out) -> int:
    torch.manual_seed(0)
    return main(["eval", "--run", str(run), "--dataset", f"folder:{folder}", "--device", "cpu", "--out", str(out),
                 "--cache-dir", ""])


def _worker(rank: int, ports: list[int], folder: str, out: str, cache: str, extra: tuple) -> None:
    assert _train(folder, f"{out}/run", cache, *extra) == 0
    os.environ["MASTER_PORT"] = str(ports[1])  # a fresh process group for the second command
    assert _eval(f"{out}/run", folder, f"{out}/eval") == 0


@pytest.fixture
def five_class_folder(tmp_path):
    from conftest import make_image

    for split, n in (("train", 4), ("test", 3)):
        for c in range(5):
            d = tmp_path / "data" / split / f"class_{c}"
            d.mkdir(parents=True)
            for i in range(n):
                make_image(d / f"{i}.png", (40 * c + 20, 200 - 30 * c, 60 + 10 * i), marker=(c * 3, i * 4))
    return tmp_path / "data"


@pytest.mark.parametrize("augment", ["cached:2", "online"])
def test_two_process_train_and_eval_equal_one_process(five_class_folder, tmp_path, augment):
    one, two = tmp_path / "one", tmp_path / "two"
    assert _train(five_class_folder, one / "run", one / "cache", "--augment", augment) == 0
    assert _eval(one / "run", five_class_folder, one / "eval") == 0
    run_ranks(_worker, str(five_class_folder), str(two), str(two / "cache"), ("--augment", augment), ports=2)

    ctx1 = load_file(str(one / "run" / "learner.safetensors"))["ctx"]
    ctx2 = load_file(str(two / "run" / "learner.safetensors"))["ctx"]
    torch.testing.assert_close(ctx2, ctx1, atol=1e-5, rtol=0)
    m1, m2 = (json.loads((d / "run" / "metrics.json").read_text()) for d in (one, two))
    assert m2["accuracy"] == m1["accuracy"] and m2["per_class_accuracy"] == m1["per_class_accuracy"]
    h1, h2 = ([json.loads(x) for x in (d / "run" / "history.jsonl").read_text().splitlines()] for d in (one, two))
    assert [h["epoch"] for h in h2] == [1, 2]  # one writer: each epoch recorded once
    for a, b in zip(h1, h2, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5) and b["train_accuracy"] == a["train_accuracy"]
    e1, e2 = (json.loads((d / "eval" / "metrics.json").read_text()) for d in (one, two))
    assert e2["accuracy"] == e1["accuracy"] == m1["accuracy"]

    # the same files as a 1-process run: nothing extra, no leftover temporaries or training state
    assert sorted(p.name for p in (two / "run").iterdir()) == sorted(p.name for p in (one / "run").iterdir())
    assert sorted(p.name for p in (two / "cache").rglob("*")) == sorted(p.name for p in (one / "cache").rglob("*"))
    cfg1, cfg2 = (json.loads((d / "run" / "config.json").read_text()) for d in (one, two))
    assert cfg2["fewshot"] == cfg1["fewshot"]


def _resume_worker(rank: int, ports: list[int], folder: str, out: str) -> None:
    assert _train(folder, out, "", "--augment", "online", "--epochs", "3") == 0


def test_two_processes_resume_a_run_interrupted_after_epoch_one(five_class_folder, tmp_path, monkeypatch):
    from vlprompt.engine import train_state as TS

    full, resumed = tmp_path / "full", tmp_path / "resumed"
    assert _train(five_class_folder, full, "", "--augment", "online", "--epochs", "3") == 0
    save = TS.save_train_state

    def save_then_stop(run_dir, **kw):  # the state of epoch 1 is complete, then the process "dies"
        save(run_dir, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(TS, "save_train_state", save_then_stop)
    assert _train(five_class_folder, resumed, "", "--augment", "online", "--epochs", "3") == 130
    monkeypatch.setattr(TS, "save_train_state", save)
    assert TS.read_train_state_json(resumed)["epoch"] == 1

    # rank 0 reads the saved state and hands learner, momentum and RNG states to rank 1
    run_ranks(_resume_worker, str(five_class_folder), str(resumed))
    cfg = json.loads((resumed / "config.json").read_text())
    assert [r["after_epoch"] for r in cfg["resumes"]] == [1]
    ctx_full = load_file(str(full / "learner.safetensors"))["ctx"]
    ctx_resumed = load_file(str(resumed / "learner.safetensors"))["ctx"]
    assert (ctx_full - ctx_resumed).abs().max() < 1e-5
    assert [json.loads(x)["epoch"] for x in (resumed / "history.jsonl").read_text().splitlines()] == [1, 2, 3]


def _method_worker(rank: int, ports: list[int], folder: str, out: str, extra: tuple) -> None:
    assert _train(folder, out, "", *extra) == 0


@pytest.mark.parametrize("method", ["kgcoop", "cocoop"])
def test_two_process_methods_equal_one_process(five_class_folder, tmp_path, method):
    # KgCoOp: its regularizer on the gathered class features counts once; CoCoOp: image-conditioned prompts are
    # encoded per rank for its own images (not class-sharded), the meta-net's gradients summed over ranks
    extra = ("--method", method, "--augment", "cached:2", "--batch-size", "4", "--epochs", "1")
    assert _train(five_class_folder, tmp_path / "one", "", *extra) == 0
    run_ranks(_method_worker, str(five_class_folder), str(tmp_path / "two"), extra)
    one, two = (load_file(str(tmp_path / d / "learner.safetensors")) for d in ("one", "two"))
    assert one.keys() == two.keys()
    for k in one:
        torch.testing.assert_close(two[k], one[k], atol=1e-5, rtol=0, msg=lambda m, k=k: f"{k}: {m}")
    m1, m2 = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    assert m2["accuracy"] == m1["accuracy"]
