"""Batched image-feature extraction with a frozen backbone."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from vlprompt.backbones.base import Backbone
from vlprompt.data.records import Sample

_logger = logging.getLogger(__name__)


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast for ``precision == "amp"`` on CUDA (bf16 where supported, else fp16); a no-op otherwise."""
    if precision == "amp" and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


@torch.no_grad()
def encode_dataset(
    backbone: Backbone,
    dataset: torch.utils.data.Dataset,
    *,
    batch_size: int = 100,
    num_workers: int = 0,
    precision: str = "fp32",
    progress: bool = False,
    desc: str = "features",
    encode: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Encode every ``(image, label)`` item of ``dataset`` in order: fp32 rows ``[len, E]`` (CPU).

    ``encode`` maps a batch of preprocessed images ``[B, 3, H, W]`` (on the backbone's device) to its rows ``[B, E]``;
    ``None`` is the frozen ``backbone.encode_image`` (unnormalised features). A prompted image tower passes its own
    (:mod:`vlprompt.engine.prompted`).
    """
    from torch.utils.data import DataLoader

    encode = backbone.encode_image if encode is None else encode
    if not len(dataset):
        return torch.empty(0, backbone.embed_dim)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    out = []
    for images, _ in tqdm(loader, desc=desc, disable=not progress, leave=False, unit="batch"):
        with autocast_context(backbone.device, precision):
            out.append(encode(images.to(backbone.device)).float().cpu())  # (B, E)
    return torch.cat(out)


def extract_features(
    backbone: Backbone,
    records: Sequence[Sample],
    transform: Callable,
    *,
    batch_size: int = 100,
    num_workers: int = 0,
    precision: str = "fp32",
    progress: bool = False,
    desc: str = "features",
    encode: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Encode every record's image: returns fp32 features ``[N, E]`` in record order (on CPU), unnormalised from
    the frozen tower (``encode=None``), else whatever ``encode`` gives (see :func:`encode_dataset`).

    ``transform`` should be deterministic (the test pipeline); augmented views, whose randomness must not depend on
    the global RNG, are :mod:`vlprompt.features.views`.
    """
    from vlprompt.data.dataset import ImageDataset

    return encode_dataset(backbone, ImageDataset(list(records), transform), batch_size=batch_size,
                          num_workers=num_workers, precision=precision, progress=progress, desc=desc, encode=encode)
