"""Tiny benchmark trees in the official layouts for the baseline tests (noisy 8x8 images: classes are separable but
not trivially, so accuracies differ between seeds and methods).

Imported by the tests in this folder (pytest puts the folder on ``sys.path``; the module name is unique).
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch
from PIL import Image

from vlprompt.data.benchmarks import BENCHMARKS

PALETTE = [(200, 40, 40), (40, 180, 60), (40, 60, 200), (200, 200, 40), (160, 40, 200)]
CLASSES = {"dtd": ["banded", "blotchy", "zigzagged"], "oxford_pets": ["abyssinian", "beagle", "pug"]}
# ImageNet classes (wnid, name); imagenet itself has the first three, the variants their own subsets.
WNIDS = [("n01440764", "tench"), ("n01443537", "goldfish"), ("n01484850", "great white shark"),
         ("n01491361", "tiger shark"), ("n01494475", "hammerhead shark")]
VARIANT_WNIDS = {"imagenet_a": ["n01443537", "n01491361", "n01494475"],  # 3 of the 5 ("200-way" in small)
                 "imagenet_r": ["n01440764", "n01494475"],
                 "imagenet_sketch": ["n01440764", "n01443537", "n01484850"]}  # the same classes as imagenet


def single_thread():
    """Generator for a module-scoped fixture: torch and the BLAS pools on one thread, restored afterwards.

    The tiny test models do microsecond-sized matmuls, where a second thread only adds synchronisation; on a
    loaded 2-core machine two threads made a zero-shot run ~7x slower (17 s vs 2.5 s for 80 templates).
    """
    import scipy.optimize  # noqa: F401  (loads SciPy's own BLAS, so that the limit below covers it too)
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):  # BLAS/OpenMP pools: the linear probe's L-BFGS runs on tiny matrices
        yield
    torch.set_num_threads(before)


def noisy_image(path: str, label: int, rng: np.random.Generator, size: int = 8, noise: float = 80.0) -> None:
    """Write an RGB image: the class colour plus strong Gaussian noise (format from the extension)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    base = np.array(PALETTE[label % len(PALETTE)], dtype=np.float64)
    arr = np.clip(base + rng.normal(0.0, noise, (size, size, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(arr).save(path)


def write_split_benchmark(root, name: str, sizes=(6, 3, 6), seed: int = 0) -> list[str]:
    """A split_json benchmark (``dtd`` or ``oxford_pets``) with 3 classes; returns its class names."""
    b = BENCHMARKS[name]
    rng = np.random.default_rng(seed)
    image_dir = os.path.join(root, b.dataset_dir, b.image_dir)
    split, n = {}, 0
    for s, k in zip(("train", "val", "test"), sizes, strict=True):
        rows = []
        for label, cname in enumerate(CLASSES[name]):
            for _ in range(k):
                n += 1
                rel = f"{cname}/{cname}_{n:04d}.jpg" if name == "dtd" else f"{cname}_{n}.jpg"
                noisy_image(os.path.join(image_dir, rel), label, rng)
                rows.append([rel, label, cname])
        split[s] = rows
    with open(os.path.join(root, b.dataset_dir, b.split_file), "w") as f:
        json.dump(split, f)
    return CLASSES[name]


def _classnames_txt(path: str, pairs) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.writelines(f"{w} {n}\n" for w, n in pairs)


def write_imagenet_family(root, seed: int = 0, v2: bool = True) -> None:
    """imagenet (3 classes: 5 train and 3 val images each) and the test-only variants in their official layouts
    (ImageNetV2, with its 1000 class folders, only when ``v2``)."""
    rng = np.random.default_rng(seed)
    label_of = {w: i for i, (w, _) in enumerate(WNIDS)}
    ddir = os.path.join(root, "imagenet")
    _classnames_txt(os.path.join(ddir, "classnames.txt"), WNIDS)
    for split, k in (("train", 5), ("val", 3)):
        for wnid, _ in WNIDS[:3]:
            for i in range(k):
                noisy_image(os.path.join(ddir, "images", split, wnid, f"{wnid}_{i}.JPEG"), label_of[wnid], rng)
    dirs = {"imagenet_a": ("imagenet-adversarial", "imagenet-a"), "imagenet_r": ("imagenet-rendition", "imagenet-r"),
            "imagenet_sketch": ("imagenet-sketch", "images")}
    for name, (ddir, sub) in dirs.items():
        _classnames_txt(os.path.join(root, ddir, "classnames.txt"), WNIDS)
        for wnid in VARIANT_WNIDS[name]:
            for j in range(2):
                noisy_image(os.path.join(root, ddir, sub, wnid, f"{j}.jpg"), label_of[wnid], rng)
    if not v2:
        return
    # ImageNetV2: folders 0..999 = lines of a 1000-line classnames.txt; only the first classes hold images.
    pairs = WNIDS + [(f"n9{i:07d}", f"class {i}") for i in range(len(WNIDS), 1000)]
    v2 = os.path.join(root, "imagenetv2")
    _classnames_txt(os.path.join(v2, "classnames.txt"), pairs)
    idir = os.path.join(v2, "imagenetv2-matched-frequency-format-val")
    for i in range(1000):
        os.makedirs(os.path.join(idir, str(i)))
    for i in range(3):
        for j in range(2):
            noisy_image(os.path.join(idir, str(i), f"{j}.jpeg"), i, rng)
