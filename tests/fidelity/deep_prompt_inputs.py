"""Identical random weights and inputs for comparing the deep-prompt hook with the official IVLP / MaPLe blocks.

The official code (``muzairkhattak/multimodal-prompt-learning:clip/model.py``) builds its CLIP with
``clip.model.build_model(state_dict, design_details)``, inferring the architecture from an OpenAI-layout state dict,
which open_clip's ``CLIP`` produces key for key. :func:`state_dict` makes a small one deterministically (open_clip's
``CLIP`` with QuickGELU under a fixed seed, affine terms perturbed, values rounded to fp16 as in
``official_weights.py``); ``figures/make_deep_prompt_figures.py`` fed the same tensors to the official code, and
``figures/official_deep_prompts.json`` records their sha256.

Architecture: ViT image tower (32×32 input, patch 8 → 16 patches, width 128, 3 layers, 2 heads), text transformer of
width 128, 3 layers, 2 heads (``build_model`` infers heads as width // 64), context 77, joint width 64. Depth 3 with
3 layers exercises the replacement before blocks 1 and 2.
"""

from __future__ import annotations

import math

import torch
from official_weights import tensors_sha256  # noqa: F401 - re-exported for the figures script and the tests

ARCH = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 3, "width": 128, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 3},
}
SEED = 20261215
CLASSNAMES = ["dog", "golden_retriever", "hot air balloon", "sea_lion", "x"]
LABELS = [1, 0, 4]
N_CTX = 2  # text and vision tokens per layer
DEPTH = 3  # prompt depth J (text and vision)
LR = 0.01  # the one SGD step


def state_dict(seed: int = SEED, arch: dict | None = None) -> dict[str, torch.Tensor]:
    """The small CLIP's weights in OpenAI's layout (fp32 holding fp16-representable values); global RNG untouched.

    ``arch``: open_clip ``CLIP`` arguments (default :data:`ARCH`; ``maple_inputs.ARCH`` for the MaPLe figures)."""
    from open_clip.model import CLIP

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sd = {k: v.detach().clone() for k, v in CLIP(**(arch or ARCH), quick_gelu=True).state_dict().items()}
        g = torch.Generator().manual_seed(seed + 1)
        for name in sorted(sd):
            leaf = name.rsplit(".", 1)[-1]
            if (".ln_" in f".{name}" or name.startswith("ln_")) and leaf == "weight":
                sd[name].add_(0.1 * torch.randn(sd[name].shape, generator=g))
            elif leaf == "bias" or leaf.endswith("_bias"):
                sd[name].add_(0.05 * torch.randn(sd[name].shape, generator=g))
        sd["logit_scale"] = torch.tensor(math.log(100.0))
    return {k: v.half().float() for k, v in sd.items()}


def fixed_inputs(seed: int = SEED + 7) -> dict[str, torch.Tensor]:
    """Images ``[3, 3, 32, 32]``, labels ``[3]``, and the learned tokens (D = 128 both towers, n = 2):
    ``ctx`` ``[n, D]`` (text input layer), ``deep_text`` ``[J − 1, n, D]``, ``vision`` ``[J, n, D]``."""
    g = torch.Generator().manual_seed(seed)
    d, j = ARCH["text_cfg"]["width"], DEPTH
    dv = ARCH["vision_cfg"]["width"]
    return {
        "images": torch.randn((len(LABELS), 3, 32, 32), generator=g),
        "labels": torch.tensor(LABELS, dtype=torch.long),
        "ctx": 0.02 * torch.randn((N_CTX, d), generator=g),
        "deep_text": 0.5 * torch.randn((j - 1, N_CTX, d), generator=g),
        "vision": 0.5 * torch.randn((j, N_CTX, dv), generator=g),
    }


def open_clip_model(sd: dict[str, torch.Tensor], arch: dict | None = None):
    """open_clip's own ``CLIP`` (QuickGELU) holding ``sd``, eval mode (``arch``: as in :func:`state_dict`)."""
    from open_clip.model import CLIP

    model = CLIP(**(arch or ARCH), quick_gelu=True)
    model.load_state_dict(sd)
    return model.eval()


def custom_text_model(sd: dict[str, torch.Tensor]):
    """open_clip's ``CustomTextCLIP`` (text tower under ``model.text``) holding the same weights."""
    from open_clip.model import CustomTextCLIP

    model = CustomTextCLIP(**ARCH, quick_gelu=True)
    text_keys = ("transformer.", "token_embedding.", "positional_embedding", "ln_final.", "text_projection")
    mapped = {(f"text.{k}" if k.startswith(text_keys) else k): v for k, v in sd.items()}
    model.load_state_dict(mapped)
    return model.eval()


def sequence_first(model):
    """``model`` with every transformer run sequence-first (``[L, N, D]``), as open_clip < 2.24 and OpenAI did."""
    for mod in model.modules():
        if hasattr(mod, "resblocks"):
            mod.batch_first = False
            for blk in mod.resblocks:
                blk.attn.batch_first = False
    return model


def close(ours: torch.Tensor, official, what: str, tol: float = 1e-5) -> float:
    """Assert that ``ours`` has the official figure's shape and max |ours − official| / max(1, max |official|) ≤ ``tol``
    (the deep-prompt fidelity tests' measure); returns that error. ``official``: a (nested) list or a number."""
    ref = torch.as_tensor(official, dtype=torch.float32)
    got = ours.detach().float().cpu()
    assert got.shape == ref.shape, f"{what}: shape {tuple(got.shape)} vs official {tuple(ref.shape)}"
    err = float((got - ref).abs().max() / max(1.0, float(ref.abs().max())))
    assert err <= tol, f"{what}: max error {err:.2e} (relative to max(1, |official|)) > {tol}"
    return err
