"""Image transforms of the official recipe (``Dassl:dassl/data/transforms/transforms.py``, reference §2.3).

- train: ``RandomResizedCrop(size, scale=crop_scale, ratio=(3/4, 4/3))`` → ``RandomHorizontalFlip`` (optional)
  → ``ToTensor`` → ``Normalize(mean, std)``;
- test: ``Resize(size)`` of the *shorter* side (aspect kept) → ``CenterCrop(size)`` → ``ToTensor`` → ``Normalize``
  (resize mode ``"shortest"``: CLIP's and Dassl's). Weights whose open_clip pretrained config says otherwise get
  open_clip's own test resize (``open_clip/transform.py`` ``image_transform``): ``"squash"`` resizes both sides to
  ``size``; ``"longest"`` resizes the longer side to ``size`` and centre-pads with black.

The interpolation (bicubic for CLIP), size, mean, std and resize mode come from the backbone's :class:`PreprocessCfg`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

from torchvision import transforms as T

from vlprompt.errors import ConfigError
from vlprompt.preprocess import PreprocessCfg

_INTERPOLATION = {
    "bicubic": T.InterpolationMode.BICUBIC,
    "bilinear": T.InterpolationMode.BILINEAR,
    "nearest": T.InterpolationMode.NEAREST,
    "lanczos": T.InterpolationMode.LANCZOS,
}
RESIZE_MODES = ("shortest", "squash", "longest")
# Bump when the meaning of a transform definition changes, so feature caches keyed by the fingerprint miss.
TRANSFORM_VERSION = 1


def _interpolation(name: str) -> T.InterpolationMode:
    try:
        return _INTERPOLATION[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown interpolation {name!r}; choose one of {', '.join(_INTERPOLATION)}") from None


def _check_scale(crop_scale: tuple[float, float]) -> tuple[float, float]:
    lo, hi = (float(x) for x in crop_scale)
    if not 0 < lo <= hi <= 1:
        raise ConfigError(f"crop_scale must satisfy 0 < low <= high <= 1, got {crop_scale!r}")
    return lo, hi


def _test_resize(mode: str, size: int, interp: T.InterpolationMode) -> list:
    """The test pipeline's resize for open_clip's ``resize_mode`` (as ``open_clip.transform.image_transform``)."""
    if mode == "shortest":
        return [T.Resize(size, interpolation=interp), T.CenterCrop(size)]
    if mode == "squash":
        return [T.Resize((size, size), interpolation=interp)]
    if mode == "longest":
        from open_clip.transform import CenterCropOrPad, ResizeKeepRatio

        return [ResizeKeepRatio(size, interpolation=interp, longest=1), CenterCropOrPad(size, fill=0)]
    raise ConfigError(f"unknown resize mode {mode!r}; choose one of {', '.join(RESIZE_MODES)}")


def build_transform(
    preprocess: PreprocessCfg, train: bool, *, flip: bool = True, crop_scale: tuple[float, float] = (0.08, 1.0)
) -> Callable:
    """Build the train or test transform: PIL RGB image → normalised ``FloatTensor[3, size, size]``.

    Args:
        preprocess: the backbone's preprocessing config.
        train: random augmentation (train) or the deterministic test pipeline.
        flip: add ``RandomHorizontalFlip(0.5)`` to the train pipeline.
        crop_scale: ``RandomResizedCrop`` area range for the train pipeline.

    Raises:
        ConfigError: an unknown interpolation or resize mode, or an invalid ``crop_scale``.
    """
    size = preprocess.image_size
    interp = _interpolation(preprocess.interpolation)
    tail = [T.ToTensor(), T.Normalize(mean=list(preprocess.mean), std=list(preprocess.std))]
    if not train:
        return T.Compose([*_test_resize(preprocess.resize_mode, size, interp), *tail])
    ops: list = [T.RandomResizedCrop(size, scale=_check_scale(crop_scale), interpolation=interp)]
    if flip:
        ops.append(T.RandomHorizontalFlip())
    return T.Compose(ops + tail)


def transform_fingerprint(
    preprocess: PreprocessCfg, train: bool, flip: bool = True, crop_scale: tuple[float, float] = (0.08, 1.0)
) -> str:
    """Stable 16-hex-digit hash of the transform definition (a feature-cache key).

    Options that do not affect the test pipeline (``flip``, ``crop_scale``) are left out of test fingerprints, so
    every run shares one test-feature cache.
    """
    spec: dict = {
        "version": TRANSFORM_VERSION,
        "train": bool(train),
        "size": int(preprocess.image_size),
        "mean": [round(float(x), 8) for x in preprocess.mean],
        "std": [round(float(x), 8) for x in preprocess.std],
        "interpolation": preprocess.interpolation.lower(),
    }
    if preprocess.resize_mode != "shortest" and not train:  # only the test pipeline resizes by mode
        spec["resize_mode"] = preprocess.resize_mode  # absent for "shortest": earlier cache keys stay valid
    if train:
        spec.update(flip=bool(flip), crop_scale=[float(x) for x in _check_scale(crop_scale)], ratio=[3 / 4, 4 / 3])
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
