"""The micro-CLIP v1 checkpoint (``pretrained="v1"``, the default before v2; in the repository, not the wheel) loads
exactly and meets the world-v1 zero-shot acceptance thresholds."""

from __future__ import annotations

import hashlib
import logging

import pytest
import torch

from vlprompt.backbones.microclip import WEIGHTS_V1, build_microclip, load_compact_state
from vlprompt.microclip import acceptance

pytestmark = pytest.mark.skipif(not WEIGHTS_V1.is_file(), reason="micro-CLIP v1 weights not in this checkout")


def test_shipped_weights_small_and_rebuilt_exactly(caplog):
    assert WEIGHTS_V1.stat().st_size <= 20 * 2**20
    with caplog.at_level(logging.WARNING):
        state, meta = load_compact_state(WEIGHTS_V1)
    assert not caplog.records  # the regenerated token table hashes to what training ended with
    table = state["token_embedding.weight"]
    assert hashlib.sha256(table.numpy().tobytes()).hexdigest() == meta["token_table_sha256"]
    assert int(meta["token_init_seed"]) >= 0 and meta["torch"]


def test_shipped_checkpoint_meets_zero_shot_thresholds():
    torch.manual_seed(0)
    model = build_microclip("v1")
    assert not model.training and 10 < model.logit_scale.exp().item() <= 100
    checks = tuple(c for c in acceptance.CHECKS if c.threshold is not None)
    table = acceptance.zero_shot_table(model, n_per_class=40, seed=2, checks=checks)
    failed = {k: (v["accuracy"], v["threshold"]) for k, v in table.items() if not v["passed"]}
    assert not failed, acceptance.format_table(table)
