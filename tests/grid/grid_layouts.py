"""Tiny official benchmark trees for the grid tests: the baselines' layouts (``tests/baselines/baseline_layouts.py``:
split_json benchmarks, ImageNet and its variants in their official folders) plus a 4-class DTD, so that base-to-new
has two base and two new classes.

Imported by the tests in this folder (pytest puts the folder on ``sys.path``; the module name is unique).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "baselines"))

from baseline_layouts import (  # noqa: E402
    noisy_image,
    single_thread,
    write_imagenet_family,
    write_split_benchmark,
)

from vlprompt.data.benchmarks import BENCHMARKS  # noqa: E402

DTD4 = ["banded", "blotchy", "bubbly", "cracked", "dotted", "zigzagged"]


def write_dtd4(root, sizes=(4, 2, 6), seed: int = 7) -> list[str]:
    """DTD in its official layout (``dtd/images/<class>/…``, ``split_zhou_DescribableTextures.json``), 4 classes."""
    b = BENCHMARKS["dtd"]
    rng = np.random.default_rng(seed)
    split, n = {}, 0
    for s, k in zip(("train", "val", "test"), sizes, strict=True):
        rows = []
        for label, cname in enumerate(DTD4):
            for _ in range(k):
                n += 1
                rel = f"{cname}/{cname}_{n:04d}.jpg"
                noisy_image(os.path.join(root, b.dataset_dir, b.image_dir, rel), label, rng)
                rows.append([rel, label, cname])
        split[s] = rows
    with open(os.path.join(root, b.dataset_dir, b.split_file), "w") as f:
        json.dump(split, f)
    return DTD4


__all__ = ["DTD4", "single_thread", "write_dtd4", "write_imagenet_family", "write_split_benchmark"]
