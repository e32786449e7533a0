"""A learner that prompts the image tower (issue 15) under torchrun (2 gloo processes): each rank trains on its rows
of every image batch through the prompted tower (the execution's batch shard), the gradients of the text, vision
and input-layer tokens summed over ranks, and ``eval`` shards the prompted encoding of the test images; the result
equals the 1-process run."""

from __future__ import annotations

import json
import os

import pytest
import torch
from dist_ranks import run_ranks
from safetensors.torch import load_file

import deep_learners
from vlprompt.cli.main import main

pytestmark = pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")


def _train(folder, out) -> int:
    torch.manual_seed(0)  # the tiny backbone is randomly initialised: the same weights in every process
    # 3 classes of 4 shots: 12 images, batches of 6 over 2 ranks (3 rows each)
    return main(["train", "--dataset", f"folder:{folder}", "--shots", "4", "--epochs", "2", "--method",
                 deep_learners.METHOD, "--backbone", "vlp-tiny-vit", "--pretrained", "random", "--device", "cpu",
                 "--batch-size", "6", "--lr", "0.05", "--warmup-epochs", "0", "--augment", "online", "--out", str(out),
                 "--cache-dir", ""])


def _eval(run, folder, out) -> int:
    torch.manual_seed(0)
    return main(["eval", "--run", str(run), "--dataset", f"folder:{folder}", "--device", "cpu", "--out", str(out),
                 "--cache-dir", ""])


def _worker(rank: int, ports: list[int], folder: str, out: str) -> None:
    assert _train(folder, f"{out}/run") == 0
    os.environ["MASTER_PORT"] = str(ports[1])  # a fresh process group for the second command
    assert _eval(f"{out}/run", folder, f"{out}/eval") == 0


def test_two_process_prompted_train_and_eval_equal_one_process(textured_folder, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    with deep_learners.registered():  # registered before the ranks are forked: they inherit it
        assert _train(textured_folder, one / "run") == 0
        assert _eval(one / "run", textured_folder, one / "eval") == 0
        run_ranks(_worker, str(textured_folder), str(two), ports=2, timeout=300)
    a, b = (load_file(str(d / "run" / "learner.safetensors")) for d in (one, two))
    assert a.keys() == b.keys() == {"ctx", "deep_text", "deep_vision", "epochs_seen"}
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=0, msg=lambda m, k=k: f"{k}: {m}")
    assert not torch.equal(a["deep_vision"], torch.zeros_like(a["deep_vision"]))
    m1, m2 = (json.loads((d / "run" / "metrics.json").read_text()) for d in (one, two))
    assert m2["accuracy"] == m1["accuracy"] and m2["per_class_accuracy"] == m1["per_class_accuracy"]
    h1, h2 = ([json.loads(x) for x in (d / "run" / "history.jsonl").read_text().splitlines()] for d in (one, two))
    assert [h["epoch"] for h in h2] == [1, 2]
    for x, y in zip(h1, h2, strict=True):
        assert y["loss"] == pytest.approx(x["loss"], abs=1e-5) and y["train_accuracy"] == x["train_accuracy"]
    e1, e2 = (json.loads((d / "eval" / "metrics.json").read_text()) for d in (one, two))
    assert e2["accuracy"] == e1["accuracy"] == m1["accuracy"]
