"""The shipped micro-CLIP v2 checkpoint: small, rebuilt exactly, trained on today's world v2, and accepted on the
v2 suite (zero-shot thresholds where the prompt fits common caption words)."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors import safe_open

from vlprompt.backbones.microclip import SHIPPED_WEIGHTS_V2, build_microclip, load_compact_state
from vlprompt.microclip import acceptance2, world2

pytestmark = pytest.mark.skipif(not SHIPPED_WEIGHTS_V2.is_file(), reason="micro-CLIP v2 weights not shipped yet")


def test_v2_weights_small_exact_and_keyed_to_the_renderer(caplog):
    assert SHIPPED_WEIGHTS_V2.stat().st_size <= 25 * 2**20
    with caplog.at_level(logging.WARNING):
        load_compact_state(SHIPPED_WEIGHTS_V2)
    assert not caplog.records  # the regenerated token table hashes to what training ended with
    with safe_open(str(SHIPPED_WEIGHTS_V2), framework="pt") as f:
        meta = f.metadata()
    # the renderer and the checkpoint change together: a new world needs a new checkpoint
    assert meta["world_fingerprint"] == world2.world_fingerprint()


def test_v2_checkpoint_meets_the_zero_shot_thresholds():
    torch.manual_seed(0)
    model = build_microclip("v2")
    table = acceptance2.suite_zero_shot(model, names=tuple(acceptance2.THRESHOLDS), n_per_class=12)
    failed = {k: (v["accuracy"], v["threshold"]) for k, v in table.items() if not v["passed"]}
    assert not failed, acceptance2.format_table(table)


def test_v2_checkpoint_was_made_by_the_recipe_the_cli_runs():
    import dataclasses
    import json

    from vlprompt.microclip.pretrain import V2_RECIPE, PretrainConfig

    with safe_open(str(SHIPPED_WEIGHTS_V2), framework="pt") as f:
        recorded = json.loads(f.metadata()["pretrain_config"])
    recipe = dataclasses.asdict(PretrainConfig(**V2_RECIPE))
    speed_only = {"threads", "workers", "checkpoint_every", "log_every", "text_buckets"}
    # fields added after the run (none so far but object_weight) take their defaults, as a resumed checkpoint does
    recorded = {"object_weight": 1.0, **recorded, "betas": tuple(recorded["betas"]), "groups": tuple(recorded["groups"])}
    assert {k: v for k, v in recorded.items() if k not in speed_only} == {
        k: v for k, v in recipe.items() if k not in speed_only
    }
