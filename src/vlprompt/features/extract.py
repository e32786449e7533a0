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
    encode_range: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Encode every record's image: returns unnormalised fp32 features ``[N, E]`` in record order (on CPU).

    ``encode_range=(lo, hi)`` still loads and transforms every record (a random transform draws from the global
    RNG exactly as for the whole list) but encodes and returns only ``records[lo:hi]``: ``[hi - lo, E]``. Used to
    shard augmented views across processes (:mod:`vlprompt.engine.distributed`).
    """
    from torch.utils.data import DataLoader

    from vlprompt.data.dataset import ImageDataset

    if not records:
        return torch.empty(0, backbone.embed_dim)
    loader = DataLoader(
        ImageDataset(list(records), transform), batch_size=batch_size, shuffle=False, num_workers=num_workers
    )
    out, start = [], 0
    for images, _ in tqdm(loader, desc=desc, disable=not progress, leave=False, unit="batch"):
        if encode_range is not None:  # keep only the rows of this batch inside [lo, hi)
            lo, hi = (max(0, bound - start) for bound in encode_range)
            start += images.shape[0]
            images = images[lo:hi]
            if not images.shape[0]:
                continue
        with autocast_context(backbone.device, precision):
            out.append(backbone.encode_image(images.to(backbone.device)).float().cpu())  # (B, E)
    return torch.cat(out) if out else torch.empty(0, backbone.embed_dim)
