"""Run folders made while micro-CLIP v1 was the default (``--backbone microclip`` without ``--pretrained``: recorded
as ``pretrained: null``) still load, verify and re-run on v1 now that the default is v2 (issue 14) — a prompt, an
adapter and a re-run from ``config.json`` — and are never silently rebuilt on v2."""

from __future__ import annotations

import json

import pytest
import torch

from vlprompt.api import PromptClassifier
from vlprompt.backbones import create_backbone
from vlprompt.backbones import microclip as mc
from vlprompt.cli.main import main

pytestmark = pytest.mark.skipif(not (mc.WEIGHTS_V1.is_file() and mc.SHIPPED_WEIGHTS_V2.is_file()),
                                reason="needs both bundled micro-CLIP checkpoints")
COMMON = ["--shots", "4", "--device", "cpu", "--cache-dir", "", "--backbone", "microclip"]


def _as_old_default(run) -> None:
    """Rewrite ``run`` as the old default recorded it: ``pretrained`` null in learner/adapter json and config.json."""
    for name in ("learner.json", "adapter.json", "config.json"):
        path = run / name
        if path.is_file():
            meta = json.loads(path.read_text())
            assert meta["backbone"]["pretrained"] == "v1"  # new records name the weights
            meta["backbone"]["pretrained"] = None
            path.write_text(json.dumps(meta))


def test_old_default_prompt_and_adapter_runs_load_on_v1(image_folder, tmp_path):
    v1 = create_backbone("microclip", "v1")
    queries = sorted((image_folder / "test" / "red_fox").iterdir())
    runs = {}
    for method, extra in (("coop", ["--epochs", "2", "--n-ctx", "4"]), ("tip-adapter", [])):
        out = tmp_path / method
        assert main(["train", "--method", method, "--dataset", f"folder:{image_folder}", "--out", str(out), *COMMON,
                     "--pretrained", "v1", *extra]) == 0
        before = PromptClassifier.load(out).predict(queries).probs
        _as_old_default(out)
        clf = PromptClassifier.load(out)  # no backbone: rebuilt from the record → v1 (v2 would fail the fingerprint)
        assert clf.backbone.pretrained == "v1" and clf.backbone.fingerprint == v1.fingerprint
        assert torch.equal(clf.predict(queries).probs, before)
        runs[method] = out
    # a re-run of the old record resolves v1 too: the recorded fingerprint is checked before training
    rerun = tmp_path / "rerun"
    assert main(["train", "--config", str(runs["coop"] / "config.json"), "--out", str(rerun)]) == 0
    cfg = json.loads((rerun / "config.json").read_text())
    assert cfg["backbone"]["pretrained"] == "v1" and cfg["backbone"]["fingerprint"] == v1.fingerprint
    assert json.loads((rerun / "metrics.json").read_text())["accuracy"] == pytest.approx(
        json.loads((runs["coop"] / "metrics.json").read_text())["accuracy"])
