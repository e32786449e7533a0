"""IVLP: independent vision-language prompting (deep, independent text and vision tokens), the baseline of Khattak
et al., "MaPLe: Multi-modal Prompt Learning", CVPR 2023, arXiv 2210.03117 (Table 1, "IVLP").

Official code: ``muzairkhattak/multimodal-prompt-learning`` (69bce21) ``trainers/independentVL.py``
(``VLPromptLearner``, ``CustomCLIP``, ``IVLP.build_model``) and ``clip/model.py`` (``ResidualAttentionBlock_IVLP``,
``VisionTransformer``). The text prompt is the whole init phrase + the class name (``"a photo of a {name}."``),
its first ``N_CTX_TEXT`` tokens learned (:class:`~vlprompt.prompts.deep.DeepPromptLearner`); each text block
``1 … J_t − 1`` replaces those positions with its own learned tokens, the image tower appends ``N_CTX_VISION``
learned tokens before ``ln_pre`` and each vision block ``1 … J_v − 1`` replaces them with its own
(:class:`~vlprompt.prompts.deep.IndependentDeepPrompts`). With a depth below the block count only the first blocks
get tokens (``Transformer``: ``add_prompt = prompts_needed > i``, block 0's set being the input layer's); later
blocks carry the previous tokens' outputs on.

Trained parameters: exactly the learned context and the deep tokens. ``IVLP.build_model`` (l.204–210) freezes
every parameter outside ``prompt_learner`` whose name lacks ``"VPT"`` — what stays trainable is
``prompt_learner.ctx``, the text blocks' ``VPT_shallow``, ``visual.VPT`` and the vision blocks' ``VPT_shallow`` —
and ``build_optimizer(self.model, cfg.OPTIM)`` steps them with Dassl's SGD (momentum 0.9, weight decay 5e-4,
``Dassl:dassl/config/defaults.py`` l.153–156). The loss is the plain cross-entropy of ``CustomCLIP.forward``.

Official recipe (``configs/trainers/IVLP/vit_b16_c2_ep5_batch4_2+2ctx.yaml``, used by every script in
``scripts/independent-vlp/``): ``N_CTX_TEXT 2`` / ``N_CTX_VISION 2`` (l.34–35), ``CTX_INIT "a photo of a"`` (l.36),
``PROMPT_DEPTH_VISION 12`` / ``PROMPT_DEPTH_TEXT 12`` (l.38–39), batch 4 (l.4), SGD lr 0.0035 (l.17–18), 5 epochs
(l.19), cosine (l.20), one constant warm-up epoch at 1e-5 (l.21–23) — the last three are vlprompt's defaults.
``configs/trainers/IVLP/vit_b16_c2_ep5_batch4_4ctx_language_only.yaml`` is the variant
``n_ctx=4, n_ctx_vision=0, depth_vision=0`` (text prompts only).

Differences from the official code: ``PREC "fp16"`` (l.37) is vlprompt's ``--precision fp16``, not the default
(fp32, as for every method: ``TrainConfig.precision``); the official ``.half()`` of the deep tokens, applied even in
fp32, is kept (``half_tokens``); a depth above a tower's block count is refused (the official code silently
prompts every block then).
"""

from __future__ import annotations

from dataclasses import dataclass

from vlprompt.backbones.base import Backbone
from vlprompt.prompts.base import register_prompt_learner
from vlprompt.prompts.deep import IndependentDeepPrompts, IndependentPromptConfig


@dataclass(frozen=True)
class IVLPConfig(IndependentPromptConfig):
    """IVLP options, defaults from ``configs/trainers/IVLP/vit_b16_c2_ep5_batch4_2+2ctx.yaml`` (l.33–39).

    Attributes:
        n_ctx: text tokens per layer (``N_CTX_TEXT 2``), the first two tokens of ``ctx_init``.
        ctx_init: ``CTX_INIT "a photo of a"`` (so "a photo" is learned and "of a" kept).
        n_ctx_vision: vision tokens per layer (``N_CTX_VISION 2``).
        depth_text: ``PROMPT_DEPTH_TEXT 12`` (input layer included); at most the text tower's block count.
        depth_vision: ``PROMPT_DEPTH_VISION 12``; 0 for text prompts only; at most the image tower's block count.
        half_tokens: the official ``.half()`` of the deep tokens (see :class:`~vlprompt.prompts.deep.DeepPromptConfig`).
    """

    n_ctx: int = 2
    ctx_init: str | None = "a photo of a"
    n_ctx_vision: int = 2
    depth_text: int = 12
    depth_vision: int = 12
    half_tokens: bool = True


@register_prompt_learner
class IVLP(IndependentDeepPrompts):
    """IVLP prompt learner: learned context ``ctx`` ``(n_ctx, D_t)``, deep text tokens ``deep_text``
    ``(J_t − 1, n_ctx, D_t)`` and vision tokens ``deep_vision`` ``(J_v, n_ctx_vision, D_v)`` (``None`` at depth
    ≤ 1 / 0), all ``N(0, 0.02²)`` except the word-initialised ``ctx``.

    Args:
        backbone: the frozen backbone (a ViT image tower when ``depth_vision > 0``).
        classnames: class names; ``_`` becomes a space.
        config: :class:`IVLPConfig`.
    """

    method = "ivlp"
    config_class = IVLPConfig
    display_name = "IVLP"
    #: ``configs/trainers/IVLP/vit_b16_c2_ep5_batch4_2+2ctx.yaml``: BATCH_SIZE 4 (l.4), LR 0.0035 (l.18),
    #: MAX_EPOCH 5 (l.19); cosine with one constant warm-up epoch at 1e-5 (l.20–23) are the defaults.
    recipe = {"epochs": 5, "batch_size": 4, "lr": 0.0035}

    def __init__(self, backbone: Backbone, classnames: list[str], config: IVLPConfig | None = None):
        super().__init__(backbone, classnames, config or IVLPConfig())  # depths checked by the base, up front


__all__ = ["IVLP", "IVLPConfig"]
