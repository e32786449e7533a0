"""Fixed feature tensors on which vlprompt's Tip-Adapter(-F) is compared with the official code.

The official functions (``gaopengcuhk/Tip-Adapter:utils.py`` ``build_cache_model``, ``pre_load_features``,
``search_hp``, ``cls_acc`` and ``main.py`` ``run_tip_adapter``, ``run_tip_adapter_F``) were run on exactly these
tensors to write ``figures/official_tip_adapter.json`` (``figures/README.md`` says how); the tests rebuild them here
and refuse to compare if :func:`tensors_sha256` no longer matches the figure file.

A small CLIP-like world: 4 classes × 4 shots, ``E = 32``, 10 augmented views of each training image, a few-shot
validation split (4 per class) and a test split (10 per class). Image features are unnormalised (norm ≈ 6, with a
shared direction, as CLIP's image features have), the text classifier is a noisy copy of the class directions (so
that zero-shot is imperfect and the cache helps), and every value is fp16-representable, so that the official fp16
run (OpenAI's CLIP runs in fp16 on the GPU) and the fp32 runs start from the same numbers.
"""

from __future__ import annotations

import hashlib

import torch

SEED = 0
MEAN_SCALE = 0.5  # class separation: zero-shot ≈ 50 %, the cache alone ≈ 80 % (room for α, β to matter)
NUM_CLASSES, SHOTS, DIM, NUM_VIEWS = 4, 4, 32, 10
VAL_PER_CLASS, TEST_PER_CLASS = 4, 10
LOGIT_SCALE = 100.0  # the official code's ``100.`` (CLIP's exp(logit_scale) for OpenAI's weights)


def tip_inputs(seed: int = SEED) -> dict[str, torch.Tensor]:
    """``train [N, E]``, ``train_labels [N]``, ``views [V, N, E]``, ``val [M, E]``, ``val_labels``, ``test [T, E]``,
    ``test_labels``, ``text [C, E]`` (L2-normalised); all fp32 holding fp16 values. The global RNG is untouched."""
    g = torch.Generator().manual_seed(seed)
    c, e = NUM_CLASSES, DIM
    means = MEAN_SCALE * torch.randn(c, e, generator=g)  # class directions
    shared = 2.0 * torch.randn(e, generator=g)  # a direction common to all images (CLIP's features share one)

    def images(per_class: int, spread: float) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(c).repeat_interleave(per_class)
        labels = labels[torch.randperm(len(labels), generator=g)]  # not sorted by class: one-hot order matters
        feats = shared + means[labels] + spread * torch.randn(len(labels), e, generator=g)
        return feats.half().float(), labels

    train, train_labels = images(SHOTS, 1.0)
    # [V, N, E]: each view = the image + augmentation noise
    views = (train.unsqueeze(0) + 0.4 * torch.randn(NUM_VIEWS, *train.shape, generator=g)).half().float()
    val, val_labels = images(VAL_PER_CLASS, 1.0)
    test, test_labels = images(TEST_PER_CLASS, 1.0)
    text = means + 0.9 * torch.randn(c, e, generator=g)
    text = torch.nn.functional.normalize(text.half().float(), dim=-1).half().float()
    return {"train": train, "train_labels": train_labels, "views": views, "val": val, "val_labels": val_labels,
            "test": test, "test_labels": test_labels, "text": text}


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, shapes, dtypes and raw bytes, in sorted name order (exact; no float reductions)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()
