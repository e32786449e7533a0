"""Fixed seeded feature tensors for the CLAP and LP++ figures (``figures/official_clap.json``, ``official_lpp.json``).

Imported by the figure driver (``figures/make_clap_lpp_figures.py``, which feeds them to the official code) and by
``test_clap_lpp_figures.py`` (which feeds them to vlprompt's adapters), so both sides see the same tensors; the
figures record :func:`inputs_sha256` and the tests refuse to compare if it no longer matches.

5 classes × 4 shots, E = 32, 3 augmented views, 10 test images. Image features are unnormalised (norms ~8-10, like
CLIP's), noisy around class means so that zero-shot is imperfect; the unnormalised text features have norms 3-11
(so that CLAP's dependence on them is exercised); ``text`` is their L2 normalisation.
"""

from __future__ import annotations

import hashlib

import torch

CLASSES, SHOTS, DIM, VIEWS, TESTS = 5, 4, 32, 3, 10
SEED = 0
LOGIT_SCALE_LOG = 4.605170249938965  # fp32 ln(100), CLIP's logit_scale parameter


def probe_inputs() -> dict[str, torch.Tensor]:
    """The tensors, by name (fp32; labels int64)."""
    g = torch.Generator().manual_seed(SEED)
    means = torch.randn(CLASSES, DIM, generator=g)
    labels = torch.arange(CLASSES).repeat_interleave(SHOTS)  # (N,) class-sorted, as a few-shot subset
    train = 1.5 * (means[labels] + 1.2 * torch.randn(CLASSES * SHOTS, DIM, generator=g))  # (N, E)
    views = train.unsqueeze(0) + 1.5 * torch.randn(VIEWS, CLASSES * SHOTS, DIM, generator=g)  # (V, N, E)
    test_labels = torch.arange(TESTS) % CLASSES
    test = 1.5 * (means[test_labels] + 1.2 * torch.randn(TESTS, DIM, generator=g))  # (T, E)
    text_dir = torch.nn.functional.normalize(means + 0.9 * torch.randn(CLASSES, DIM, generator=g), dim=-1)
    text_raw = text_dir * torch.tensor([3.0, 5.0, 7.0, 9.0, 11.0])[:, None]  # (C, E), norms 3..11
    text = text_raw / text_raw.norm(dim=-1, keepdim=True)
    return {"train": train, "labels": labels, "views": views, "test": test, "test_labels": test_labels,
            "text_raw": text_raw, "text": text}


def inputs_sha256(tensors: dict[str, torch.Tensor] | None = None) -> str:
    """sha256 over the tensors' bytes (sorted by name): the tests check the generation still reproduces them."""
    tensors = tensors or probe_inputs()
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].contiguous().numpy().tobytes())
    return h.hexdigest()


def permutations_sha256(perms: list[torch.Tensor]) -> str:
    """sha256 of a list of int64 permutations (the batch orders both sides used)."""
    h = hashlib.sha256()
    for p in perms:
        h.update(p.to(torch.int64).numpy().tobytes())
    return h.hexdigest()
