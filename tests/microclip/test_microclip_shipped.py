"""The shipped micro-CLIP checkpoint loads exactly and meets the zero-shot acceptance thresholds."""

from __future__ import annotations

import hashlib
import logging

import pytest
import torch

from vlprompt.microclip import acceptance
from vlprompt.microclip.model import SHIPPED_WEIGHTS, build_microclip, load_compact_state

pytestmark = pytest.mark.skipif(not SHIPPED_WEIGHTS.is_file(), reason="shipped weights not committed yet")


def test_shipped_weights_small_and_rebuilt_exactly(caplog):
    assert SHIPPED_WEIGHTS.stat().st_size <= 20 * 2**20
    with caplog.at_level(logging.WARNING):
        state, meta = load_compact_state(SHIPPED_WEIGHTS)
    assert not caplog.records  # the regenerated token table hashes to what training ended with
    table = state["token_embedding.weight"]
    assert hashlib.sha256(table.numpy().tobytes()).hexdigest() == meta["token_table_sha256"]
    assert int(meta["token_init_seed"]) >= 0 and meta["torch"]


def test_shipped_checkpoint_meets_zero_shot_thresholds():
    torch.manual_seed(0)
    model = build_microclip()
    assert not model.training and 10 < model.logit_scale.exp().item() <= 100
    checks = tuple(c for c in acceptance.CHECKS if c.threshold is not None)
    table = acceptance.zero_shot_table(model, n_per_class=40, seed=2, checks=checks)
    failed = {k: (v["accuracy"], v["threshold"]) for k, v in table.items() if not v["passed"]}
    assert not failed, acceptance.format_table(table)
