"""The cases of the IVLP / VPT-deep method figures (``figures/official_ivlp_vpt.json``): the official trainers'
settings and the learned tokens set on both sides.

Weights, images, labels and class names are those of the deep-prompt hook figures (``deep_prompt_inputs.py``: a
random OpenAI-layout ViT CLIP with 3 text and 3 vision blocks of width 128); only the tokens and the method
settings are new. ``figures/make_ivlp_vpt_figures.py`` gave these to the official ``IVLP`` / ``VPT`` trainers'
``build_model`` and ``forward_backward``; ``test_ivlp_vpt_figures.py`` gives them to vlprompt's learners.
"""

from __future__ import annotations

import torch

#: case → (method, options of vlprompt's learner). The official config fields follow from them (N_CTX_TEXT =
#: n_ctx, N_CTX_VISION = n_ctx_vision, PROMPT_DEPTH_TEXT = depth_text, PROMPT_DEPTH_VISION = depth_vision).
#: ``*_shallow``: depths below the 3 blocks (which blocks get tokens); ``*_no_half``: the official file with the
#: prompt tokens' ``.half()`` casts removed, against ``half_tokens=False``; ``vpt_many_tokens_as_is``: more vision
#: tokens than the image has tokens.
CASES: dict[str, tuple[str, dict]] = {
    "ivlp_as_is": ("ivlp", {"n_ctx": 2, "n_ctx_vision": 2, "depth_text": 3, "depth_vision": 3}),
    "ivlp_shallow_as_is": ("ivlp", {"n_ctx": 2, "n_ctx_vision": 2, "depth_text": 2, "depth_vision": 1}),
    "ivlp_no_half": ("ivlp", {"n_ctx": 2, "n_ctx_vision": 2, "depth_text": 3, "depth_vision": 3, "half_tokens": False}),
    "vpt_as_is": ("vpt", {"n_ctx_vision": 3, "depth_vision": 3}),
    "vpt_shallow_as_is": ("vpt", {"n_ctx_vision": 3, "depth_vision": 2}),
    "vpt_no_half": ("vpt", {"n_ctx_vision": 3, "depth_vision": 3, "half_tokens": False}),
    # more vision tokens (20) than image tokens (1 + 16 patches)
    "vpt_many_tokens_as_is": ("vpt", {"n_ctx_vision": 20, "depth_vision": 2}),
}
WIDTH = 128  # text and vision width of deep_prompt_inputs.ARCH
SEED = 20261216


def tokens(case: str) -> dict[str, torch.Tensor]:
    """The learned tensors of ``case`` in vlprompt's layout: ``ctx`` ``[n, D]`` (IVLP; the word init + a seeded
    offset, so not the official init), ``deep_text`` ``[J_t − 1, n, D]`` (IVLP, depth ≥ 2) and ``deep_vision``
    ``[J_v, n_v, D]``; tokens at scale 0.5 so that their effect is far above the tolerance."""
    method, opts = CASES[case]
    g = torch.Generator().manual_seed(SEED + sorted(CASES).index(case))
    out = {}
    if method == "ivlp":
        out["ctx_delta"] = 0.02 * torch.randn((opts["n_ctx"], WIDTH), generator=g)
        if opts["depth_text"] > 1:
            out["deep_text"] = 0.5 * torch.randn((opts["depth_text"] - 1, opts["n_ctx"], WIDTH), generator=g)
    out["deep_vision"] = 0.5 * torch.randn((opts["depth_vision"], opts["n_ctx_vision"], WIDTH), generator=g)
    return out


def official_names(case: str) -> dict[str, str]:
    """vlprompt's parameter (``name`` or ``name.j`` for one layer of a stacked tensor) → the official parameter it
    is (``IVLP.build_model``'s trainable names: the prompt learner's ``ctx`` and every name containing ``VPT``)."""
    method, opts = CASES[case]
    names = {}
    if method == "ivlp":
        names["ctx"] = "prompt_learner.ctx"
        for j in range(1, opts["depth_text"]):
            names[f"deep_text.{j - 1}"] = f"text_encoder.transformer.resblocks.{j}.VPT_shallow"
    names["deep_vision.0"] = "image_encoder.VPT"
    for j in range(1, opts["depth_vision"]):
        names[f"deep_vision.{j}"] = f"image_encoder.transformer.resblocks.{j}.VPT_shallow"
    return names
