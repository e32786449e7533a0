"""Numerical failure: a NaN/Inf loss stops training, naming the epoch and step, and leaves the run unfinished."""

from __future__ import annotations

import re

import pytest
import torch

from vlprompt.cli.main import main
from vlprompt.engine.config import TrainConfig
from vlprompt.engine.fit import FeatureBankBatches, TrainingDivergedError, divergence_message, fit
from vlprompt.errors import ArtifactError, VLPromptError

BASE = ["--backbone", "vlp-tiny-rn", "--pretrained", "random", "--device", "cpu", "--cache-dir", "", "--augment", "none", "--shots", "4",
        "--n-ctx", "4"]


def _err(capsys) -> str:
    lines = [ln for ln in capsys.readouterr().err.replace("\r", "\n").splitlines() if ln.strip()]
    assert "Traceback" not in "\n".join(lines) and "error:" in lines[-1]
    return lines[-1]


def _assert_unfinished(out):
    from vlprompt.api import PromptClassifier

    assert (out / "config.json").exists()
    assert not (out / "metrics.json").exists() and not (out / "learner.json").exists()
    with pytest.raises(ArtifactError, match="not a finished vlprompt training run"):
        PromptClassifier.load(out)


def test_huge_learning_rate_diverges_with_a_clear_message(image_folder, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--dataset", f"folder:{image_folder}", "--out", str(out), "--epochs", "4", "--lr", "1e30",
            "--warmup-epochs", "0", *BASE]
    assert main(argv) == 2
    line = _err(capsys)
    assert re.search(r"the training loss became (nan|inf|-inf) at epoch \d+, step \d+", line), line
    assert "lower --lr (now 1e+30)" in line
    _assert_unfinished(out)


def test_injected_nan_names_epoch_and_step(image_folder, tmp_path, capsys, monkeypatch):
    import torch.nn.functional as F

    real, calls = F.cross_entropy, []

    def poisoned(logits, y, *a, **k):
        calls.append(1)
        loss = real(logits, y, *a, **k)
        return loss * float("nan") if len(calls) == 5 else loss

    monkeypatch.setattr(F, "cross_entropy", poisoned)
    out = tmp_path / "run"
    # 12 few-shot images, batch 4: 3 steps per epoch, so the 5th loss is epoch 2, step 2.
    argv = ["train", "--dataset", f"folder:{image_folder}", "--out", str(out), "--epochs", "3", "--batch-size", "4",
            "--precision", "fp16", *BASE]
    assert main(argv) == 2
    line = _err(capsys)
    assert "the training loss became nan at epoch 2, step 2" in line
    assert "--precision fp16" in line and "--precision amp" in line and "--precision fp32" in line
    _assert_unfinished(out)
    history = (out / "history.jsonl").read_text().splitlines()
    assert len(history) == 1  # epoch 1 completed; nothing of the garbage epoch was recorded


def test_fit_refuses_a_nan_context():
    from vlprompt.backbones import create_backbone
    from vlprompt.engine.model import PromptModel
    from vlprompt.prompts import create_prompt_learner

    bb = create_backbone("vlp-tiny-rn", "random", device="cpu")
    learner = create_prompt_learner("coop", bb, ["cat", "dog"], {"n_ctx": 2})
    with torch.no_grad():
        learner.ctx[0, 0] = float("nan")
    bank = torch.nn.functional.normalize(torch.randn(1, 6, bb.identity()["embed_dim"]), dim=-1)
    batches = FeatureBankBatches(bank, torch.tensor([0, 1] * 3), 4, torch.Generator().manual_seed(0))
    seen = []
    with pytest.raises(TrainingDivergedError, match="at epoch 1, step 1") as e:
        fit(PromptModel(bb, learner), batches, TrainConfig(epochs=2), 2, images_are_features=True,
            on_epoch=lambda rec, _o: seen.append(rec))
    assert seen == [] and isinstance(e.value, VLPromptError)


@pytest.mark.parametrize(("precision", "hint"), [("fp16", "--precision amp"), ("amp", "--precision fp32"),
                                                 ("fp32", "lower --lr")])
def test_message_suggests_the_precision_flag(precision, hint):
    msg = divergence_message(float("inf"), 3, 7, TrainConfig(precision=precision))
    assert "at epoch 3, step 7" in msg and hint in msg and "--overwrite" in msg
