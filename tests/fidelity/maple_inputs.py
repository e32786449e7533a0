"""Identical random weights, inputs and figure summaries for comparing vlprompt's MaPLe with the official one.

The official ``MultiModalPromptLearner`` (``muzairkhattak/multimodal-prompt-learning:trainers/maple.py``) hard-codes
the widths of ViT-B/16 (``nn.Linear(ctx_dim, 768)``, ``torch.empty(n_ctx, 512)``), so the small CLIP here has a
text tower of width 512 (8 heads) and an image tower of width 768 (12 heads: ``build_model`` infers heads as
width // 64), 4 blocks each, 32×32 images in patches of 8; weights from ``deep_prompt_inputs.state_dict`` (open_clip
``CLIP``, QuickGELU, affine terms perturbed, values fp16-representable) with :data:`ARCH`.

The learned parameters are not copied between the sides: both build the prompt learner right after
``torch.manual_seed(INIT_SEED)``, and ``figures/official_maple.json`` records the sha256 of the official initial
parameters, which vlprompt's MaPLe must reproduce bit for bit.

The projection weights' gradients ``(768, 512)`` are recorded as summaries (:func:`summary`): the Frobenius norm
and the product ``G @ R`` ``(768, 2)`` with a fixed random probe ``R`` ``(512, 2)``. A linear layer's weight
gradient over ``n = 2`` input tokens is ``Σ_k g_k x_kᵀ`` (rank 2, the ``x_k`` the learned text tokens, equal on both
sides), so ``G @ R = Σ_k g_k (x_kᵀ R)`` determines both output-gradient rows ``g_k`` (``X R`` is an invertible
2 × 2): it pins the whole gradient. (A probe on the other side, ``Gᵀ s``, would not: ``g_kᵀ s`` cancels to two
small numbers.) Every other gradient (context, text tokens, biases) is recorded in full. Floats are rounded to 8 significant digits (:func:`rounded`).
"""

from __future__ import annotations

import deep_prompt_inputs as D
import torch

ARCH = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 4, "width": 768, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 4},
}
SEED = 20261216  # weights
INIT_SEED = 7  # torch.manual_seed before either prompt learner is built
CLASSNAMES = ["dog", "golden_retriever", "hot air balloon", "sea_lion", "x"]
LABELS = [1, 0, 4, 2]  # batch 4, as the official recipe
N_CTX = 2
CTX_INIT = "a photo of a"
LR = 0.0035  # the official OPTIM.LR; Dassl's SGD momentum 0.9, weight decay 5e-4
#: (case name, prompt depth, official variant): depth 3 < 4 blocks (block 3 unprompted), 4 = every block, 1 shallow.
CASES = [("depth3_as_is", 3, "as_is"), ("depth3_no_half", 3, "no_half"), ("depth4_no_half", 4, "no_half"),
         ("depth1_no_half", 1, "no_half")]


def state_dict() -> dict[str, torch.Tensor]:
    """The small CLIP's OpenAI-layout weights (see the module docstring)."""
    return D.state_dict(SEED, ARCH)


def open_clip_model(sd: dict[str, torch.Tensor]):
    """open_clip's own ``CLIP`` holding ``sd`` (eval mode)."""
    return D.open_clip_model(sd, ARCH)


def fixed_inputs() -> dict[str, torch.Tensor]:
    """Images ``(4, 3, 32, 32)``, labels ``(4,)`` and the probe of :func:`summary`, ``probe`` ``(512, 2)``."""
    g = torch.Generator().manual_seed(SEED + 7)
    return {
        "images": torch.randn((len(LABELS), 3, 32, 32), generator=g),
        "labels": torch.tensor(LABELS, dtype=torch.long),
        "probe": torch.randn((ARCH["text_cfg"]["width"], 2), generator=g),
    }


def summary(grad: torch.Tensor, inputs: dict[str, torch.Tensor]) -> dict:
    """A gradient as recorded: in full, or for a ``(768, 512)`` projection weight its norm and probe products."""
    grad = grad.detach().double()
    if grad.dim() < 2 or grad.shape[-1] != ARCH["text_cfg"]["width"] or grad.shape[0] != ARCH["vision_cfg"]["width"]:
        return {"full": rounded(grad)}
    return {"norm": rounded(grad.norm()), "probed": rounded(grad @ inputs["probe"].double())}


def rounded(t: torch.Tensor):
    """``t`` as nested lists of floats rounded to 8 significant digits (fp32 holds about 7)."""
    t = t.detach()
    if t.dim() == 0:
        return float(f"{float(t):.8g}")
    return [rounded(row) for row in t]


__all__ = ["ARCH", "CASES", "CLASSNAMES", "CTX_INIT", "INIT_SEED", "LABELS", "LR", "N_CTX", "SEED", "fixed_inputs",
           "open_clip_model", "rounded", "state_dict", "summary"]
