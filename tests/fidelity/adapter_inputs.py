"""Fixed feature tensors for the feature-space adapters' parity figures (``figures/official_adapters.json``).

Both sides import this module: the driver that ran the official CLIP-Adapter and TaskRes code
(``figures/README.md``) and ``test_official_adapters.py``. Everything comes from one seeded CPU generator, so the
tensors are the same on every machine; :func:`inputs_sha256` is recorded next to the figures and checked before
comparing (a torch version that draws differently is reported as such, not as a mismatch).
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F

SEED = 20261201
NUM_CLASSES = 4
SHOTS = 4
DIM = 1024  # the official CustomCLIP fixes Adapter(1024, 4)
NUM_VIEWS = 3
NUM_TEST = 6
NUM_NEW = 3


def adapter_inputs() -> dict[str, torch.Tensor]:
    """Raw (unnormalised) image features of 4 classes × 4 shots, 3 augmented views of them, 6 test features, raw
    text features of the 4 classes and of 3 new classes (norms 5–12, as CLIP's unnormalised text features)."""
    g = torch.Generator().manual_seed(SEED)
    protos = torch.randn(NUM_CLASSES, DIM, generator=g)  # (C, E) class directions of the image features
    labels = torch.arange(NUM_CLASSES).repeat_interleave(SHOTS)  # (N,) = [0,0,0,0,1,...]
    train = 0.15 * protos[labels] + torch.randn(labels.numel(), DIM, generator=g)  # (N, E) raw, norm ~32
    views = train[None] + 0.3 * torch.randn(NUM_VIEWS, labels.numel(), DIM, generator=g)  # (V, N, E)
    test_labels = torch.tensor([0, 1, 2, 3, 1, 2])
    test = 0.15 * protos[test_labels] + torch.randn(NUM_TEST, DIM, generator=g)  # (T, E)
    # text: partly aligned with the class directions, so that zero-shot is better than chance
    text_raw = F.normalize(0.3 * F.normalize(protos, dim=-1) + 0.03 * torch.randn(NUM_CLASSES, DIM, generator=g),
                           dim=-1) * (5 + 7 * torch.rand(NUM_CLASSES, 1, generator=g))  # (C, E)
    new_text_raw = torch.randn(NUM_NEW, DIM, generator=g) * 0.3  # (C', E)
    return {"train": train, "labels": labels, "views": views, "test": test, "test_labels": test_labels,
            "text_raw": text_raw, "new_text_raw": new_text_raw}


def inputs_sha256() -> str:
    """sha256 over every tensor of :func:`adapter_inputs` (name, dtype, shape, bytes), in name order."""
    h = hashlib.sha256()
    for name, t in sorted(adapter_inputs().items()):
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()
