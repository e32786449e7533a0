"""Shared fixtures: tiny randomly initialised open_clip models registered under real config names, so tests go
through the same `create_backbone` path users take; and tiny generated image folders."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

# Tiny architectures in open_clip's JSON config format. Text width 64 with 1 head and RN width 16 (head width
# 64) keep them compatible with OpenAI's state-dict architecture inference (build_model_from_openai_state_dict).
TINY_CONFIGS = {
    "vlp-tiny-rn": {
        "embed_dim": 32,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "patch_size": None},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2},
    },
    "vlp-tiny-vit": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    },
    # CustomTextCLIP (tower under model.text) with eos pooling.
    "vlp-tiny-customtext": {
        "embed_dim": 32,
        "custom_text": True,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2,
                     "pool_type": "eos", "eos_id": 49407},
    },
    # Refused: SigLIP-style (bidirectional, last-token pooling) and CoCa-style (CLS token) text towers.
    "vlp-tiny-bidir": {
        "embed_dim": 32,
        "custom_text": True,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1,
                     "no_causal_mask": True, "pool_type": "last"},
    },
    "vlp-tiny-lastpool": {
        "embed_dim": 32,
        "custom_text": True,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1,
                     "pool_type": "last"},
    },
}


@pytest.fixture(scope="session", autouse=True)
def tiny_model_configs(tmp_path_factory):
    """Register the tiny configs with open_clip (once per session) and isolate caches from the user's."""
    import open_clip

    d = tmp_path_factory.mktemp("open_clip_configs")
    for name, cfg in TINY_CONFIGS.items():
        (d / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(str(d))
    os.environ["VLPROMPT_CACHE"] = str(tmp_path_factory.mktemp("vlprompt_cache"))
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return d


def make_image(path, color, size=24, marker=None):
    """Write a small RGB PNG: a solid colour with an optional bright square marker (a learnable signal)."""
    arr = np.zeros((size, size, 3), dtype=np.uint8)
    arr[:] = color
    if marker is not None:
        y, x = marker
        arr[y : y + 8, x : x + 8] = 255
    Image.fromarray(arr).save(path)


@pytest.fixture
def image_folder(tmp_path):
    """A 3-class image folder with train/ and test/ levels (8 train, 4 test images per class)."""
    rng = np.random.default_rng(0)
    colors = {"red_fox": (200, 40, 40), "green_frog": (40, 180, 60), "blue_jay": (40, 60, 200)}
    for split, n in (("train", 8), ("test", 4)):
        for cls, col in colors.items():
            d = tmp_path / "data" / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                jitter = tuple(int(c + rng.integers(-20, 20)) for c in col)
                make_image(d / f"{i}.png", jitter)
    return tmp_path / "data"


@pytest.fixture
def textured_folder(tmp_path):
    """Like :func:`image_folder` (3 classes, 8 train and 4 test images each, 40×30 px) but every image is seeded
    noise, so that different random crops and flips of it give different pixels (a solid colour hides them)."""
    rng = np.random.default_rng(1)
    for split, n in (("train", 8), ("test", 4)):
        for cls in ("red_fox", "green_frog", "blue_jay"):
            d = tmp_path / "textured" / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return tmp_path / "textured"
