"""Identical random weights and inputs for comparing vlprompt with the official CoOp / CoCoOp / KgCoOp code.

The official code (``KaiyangZhou/CoOp:trainers/coop.py``, ``trainers/cocoop.py``, ``htyao89/KgCoOp:trainers/kgcoop.py``)
builds its CLIP with OpenAI's ``clip.model.build_model(state_dict)``, which infers the architecture from an OpenAI
state dict. :func:`openai_state_dict` makes a small one deterministically: open_clip's ``CLIP`` (QuickGELU, the
activation of OpenAI's code) under a fixed seed, with its affine terms perturbed so that a mishandled LayerNorm or
bias cannot hide behind ones and zeros, and every value rounded to fp16 (OpenAI's checkpoints are stored in fp16,
and ``build_model`` loads the weights into an fp16 model before ``.float()``: fp16-representable values pass through
both sides unchanged). The same function served both sides when ``tests/fidelity/figures/*.json`` were produced
with the official code (``figures/README.md``), and each figure file records :func:`tensors_sha256` of the weights and
of :func:`fixed_inputs` it was produced from: if the generation ever drifts (a new torch or open_clip initialises
differently), the tests fail with that message instead of comparing different models.

Architecture: ViT image tower (32×32 input, patch 8, width 64, 2 layers, 1 head), text transformer of width 128,
2 layers, 2 heads (``build_model`` infers heads as width // 64), vocabulary 49408, context 77, joint width 64.
"""

from __future__ import annotations

import hashlib
import math

import torch

#: open_clip ``CLIP(**ARCH, quick_gelu=True)``.
ARCH = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 2},
}
SEED = 20261201

#: Class names of different BPE lengths (1 to 3 tokens and more), with ``_`` (becomes a space) and capitals.
CLASSNAMES = ["dog", "golden_retriever", "hot air balloon", "Abyssinian", "sea_lion", "x"]
BATCH = 4  # images per batch
LABELS = [1, 0, 5, 2]


def openai_state_dict(seed: int = SEED) -> dict[str, torch.Tensor]:
    """The small CLIP's weights in OpenAI's state-dict layout (fp32 tensors holding fp16-representable values).

    The global RNG is left untouched.
    """
    from open_clip.model import CLIP

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIP(**ARCH, quick_gelu=True)
        sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
        g = torch.Generator().manual_seed(seed + 1)
        for name in sorted(sd):
            t = sd[name]
            leaf = name.rsplit(".", 1)[-1]
            is_ln = ".ln_" in f".{name}" or name.startswith("ln_")
            if is_ln and leaf == "weight":  # LayerNorm gains: 1 ± 0.1
                t.add_(0.1 * torch.randn(t.shape, generator=g))
            elif leaf == "bias" or leaf.endswith("_bias"):  # LayerNorm shifts and attention/MLP biases
                t.add_(0.05 * torch.randn(t.shape, generator=g))
        sd["logit_scale"] = torch.tensor(math.log(100.0))  # as OpenAI's checkpoints (exp = 100.03 after fp16 rounding)
    return {k: v.half().float() for k, v in sd.items()}


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, shapes, dtypes and raw bytes, in sorted name order (exact; no float reductions)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}:".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def fixed_inputs(seed: int = SEED + 7) -> dict[str, torch.Tensor]:
    """Images, labels and the learned parts (context vectors, CoCoOp meta-net weights) set on both sides.

    Shapes (D = 128 text width, E = 64 joint width, C = 6 classes, B = 4):
    ``images`` (B, 3, 32, 32); ``labels`` (B,); ``ctx_m4`` (4, D), ``ctx_m5`` (5, D) unified contexts;
    ``ctx_csc`` (C, 4, D); ``ctx_delta`` (4, D) added to the "a photo of a" init (KgCoOp);
    ``meta.linear1.weight`` (E // 16, E), ``meta.linear1.bias``, ``meta.linear2.weight`` (D, E // 16),
    ``meta.linear2.bias`` (CoCoOp's meta-net).
    """
    d, e, c = ARCH["text_cfg"]["width"], ARCH["embed_dim"], len(CLASSNAMES)
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int, std: float) -> torch.Tensor:
        return std * torch.randn(shape, generator=g)

    h = e // 16
    return {
        "images": randn(BATCH, 3, 32, 32, std=1.0),
        "labels": torch.tensor(LABELS, dtype=torch.long),
        "ctx_m4": randn(4, d, std=0.03),
        "ctx_m5": randn(5, d, std=0.03),
        "ctx_csc": randn(c, 4, d, std=0.03),
        "ctx_delta": randn(4, d, std=0.01),
        "meta.linear1.weight": randn(h, e, std=1.0),
        "meta.linear1.bias": randn(h, std=0.1),
        "meta.linear2.weight": randn(d, h, std=0.05),
        "meta.linear2.bias": randn(d, std=0.01),
    }


def open_clip_model(state_dict: dict[str, torch.Tensor]):
    """open_clip's own ``CLIP`` (QuickGELU) holding ``state_dict``, in eval mode."""
    from open_clip.model import CLIP

    model = CLIP(**ARCH, quick_gelu=True)
    model.load_state_dict(state_dict)
    return model.eval()
