"""Shared base of the deep multimodal prompt methods (IVLP, VPT-deep, MaPLe, PromptSRC): the input layer's text
context the way their official code builds it, and the tokens they hand to the backbone hook
(:mod:`vlprompt.backbones.deep_prompts`).

Official code: ``muzairkhattak/multimodal-prompt-learning`` (69bce21) ``trainers/independentVL.py``
``VLPromptLearner.__init__``, ``trainers/maple.py`` ``MultiModalPromptLearner.__init__``; ``muzairkhattak/PromptSRC``
(bb95c77) ``trainers/promptsrc.py``. Their input-layer context differs from CoOp's in one rule: with ``CTX_INIT``
and ``N_CTX ≤ 4`` the prompt is the *whole* init phrase followed by the class name (``"a photo of a {name}."``)
and only its first ``N_CTX`` tokens are learned (initialised from their embeddings); the remaining init words stay
fixed. MaPLe's ``N_CTX 2`` from "a photo of a" learns "a photo" and keeps "of a". Otherwise the context is
``N_CTX`` random ``N(0, 0.02²)`` vectors after SOS (``"X X … {name}."``). The context is unified and the class name
is at the end, always.

A subclass sets ``method``/``config_class``/``recipe``/``prompts_image``, builds its deeper tokens in ``__init__``
with :meth:`DeepPromptLearner.normal_tokens` and returns them from
:meth:`~vlprompt.prompts.base.PromptLearner.deep_prompts`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from vlprompt.backbones.base import Backbone
from vlprompt.backbones.deep_prompts import DeepPrompts, check_prompts, check_vision_supported
from vlprompt.errors import BackboneError, ConfigError
from vlprompt.prompts.base import PromptLearner
from vlprompt.prompts.coop import CoOp, CoOpConfig

_logger = logging.getLogger(__name__)

#: The official rule: word initialisation only when ``N_CTX <= 4`` (``if ctx_init and (n_ctx) <= 4``).
MAX_WORD_INIT_CTX = 4


@dataclass(frozen=True)
class DeepPromptConfig(CoOpConfig):
    """Options shared by the deep prompt methods: CoOp's, with the official input-layer rule.

    Attributes:
        n_ctx: learned text tokens of the input layer (``N_CTX`` / ``N_CTX_TEXT``); with ``ctx_init`` they are
            the first ``n_ctx`` tokens of the phrase (not the phrase's word count, unlike CoOp).
        ctx_init: init phrase; used only when ``n_ctx ≤ 4`` (as officially), else random init.
        half_tokens: pass the deep tokens through fp16 after broadcasting, as the official code's ``.half()`` does
            even in fp32 mode (exact to the official code; ``False`` keeps them in the model's precision).
    """

    n_ctx: int = 2
    ctx_init: str | None = "a photo of a"
    half_tokens: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.csc:
            raise ConfigError("--csc is not available with the deep prompt methods: their context is unified (as "
                              "officially); drop --csc.")
        if self.class_token_position != "end":
            raise ConfigError(f"--class-token-position {self.class_token_position} is not available with the deep "
                              "prompt methods: the class name is at the end (as officially); drop the option.")
        if self.n_ctx < 1:
            raise ConfigError(f"n_ctx must be ≥ 1, got {self.n_ctx}.")


class DeepPromptLearner(CoOp):
    """Base of the deep prompt learners: the official input-layer text context (see the module docstring).

    Shapes: ``ctx`` ``(n_ctx, D_t)``; ``forward()`` returns embeds ``(C, L, D_t)`` and ids ``(C, L)`` as CoOp.
    Attributes: ``kept_words`` (the fixed init words after the learned tokens), ``init_text`` (the phrase).
    """

    config_class = DeepPromptConfig
    #: BPE tokens of ``kept_words`` (right after the learned tokens in every prompt).
    n_kept: int = 0

    def __init__(self, backbone: Backbone, classnames: list[str], config: DeepPromptConfig):
        PromptLearner.__init__(self, config)
        cfg = self.config
        self.n_ctx = cfg.n_ctx
        dtype = backbone.dtype
        if cfg.ctx_init and cfg.n_ctx <= MAX_WORD_INIT_CTX:
            phrase = cfg.ctx_init.replace("_", " ").strip()
            tokens = backbone.bpe_tokens(phrase)
            if len(tokens) < cfg.n_ctx:
                raise ConfigError(
                    f"--ctx-init '{phrase}' is {len(tokens)} BPE tokens for backbone '{backbone.name}', fewer than "
                    f"n_ctx={cfg.n_ctx}: the learned tokens are the phrase's first n_ctx tokens (the official code "
                    "would read the EOS and padding embeddings). Use a longer phrase or a smaller n_ctx."
                )
            with torch.no_grad():
                ids = backbone.tokenize([phrase]).to(backbone.device)
                init = backbone.embed_tokens(ids)[0, 1 : 1 + cfg.n_ctx].to(dtype)  # (n_ctx, D)
            self.kept_words = _decode_tail(backbone, phrase, cfg.n_ctx)
            self.n_kept = len(backbone.bpe_tokens(self.kept_words)) if self.kept_words else 0
            self.init_text = phrase
        else:
            init = self.normal_tokens(backbone, (cfg.n_ctx, backbone.token_dim), dtype=dtype)
            self.init_text = " ".join(["X"] * cfg.n_ctx)
        self.set_classnames(backbone, classnames)
        self.ctx = nn.Parameter(init.clone())

    def config_dict(self) -> dict:  # noqa: D102
        return PromptLearner.config_dict(self)

    def shared_prefix(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """CoOp's shared part (SOS + the learned tokens) extended by the kept init words (MaPLe's "of a"): they
        are the same tokens right after the context in every prompt, so under the causal mask their states are
        shared too and are encoded once per call instead of once per class (exact; 2 of MaPLe's ~6 per-class
        positions at 1000 ImageNet classes). Shapes as :meth:`CoOp.shared_prefix`."""
        parts = super().shared_prefix()
        if parts is None or not self.n_kept:
            return parts
        prefix, suffix, ids = parts  # (1 + M, D), (C, L - 1 - M, D), (C, L)
        return torch.cat([prefix, suffix[0, : self.n_kept]]), suffix[:, self.n_kept :], ids

    def normal_tokens(self, backbone: Backbone, shape: tuple[int, ...], dtype: torch.dtype | None = None) -> torch.Tensor:
        """A fresh ``N(0, init_std²)`` tensor of ``shape`` on the backbone's device (the official
        ``nn.init.normal_(…, std=0.02)`` of every prompt token)."""
        t = torch.empty(shape, dtype=dtype or torch.float32, device=backbone.device)
        nn.init.normal_(t, std=self.config.init_std)
        return t

    @property
    def prompt_cast(self) -> torch.dtype | None:  # noqa: D102
        return torch.float16 if self.config.half_tokens else None


@dataclass(frozen=True)
class IndependentPromptConfig(DeepPromptConfig):
    """Independent text and vision tokens at every prompted layer (IVLP's design; PromptSRC's too).

    Attributes:
        n_ctx: text tokens per layer (``N_CTX_TEXT``).
        n_ctx_vision: vision tokens per layer (``N_CTX_VISION``).
        depth_text: text prompt depth ``J_t`` (``PROMPT_DEPTH_TEXT``; the input layer counts, so ``J_t − 1``
            deeper token sets).
        depth_vision: vision prompt depth ``J_v`` (``PROMPT_DEPTH_VISION``; 0: no vision tokens).
    """

    n_ctx_vision: int = 2
    depth_text: int = 12
    depth_vision: int = 12

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.depth_text < 1:
            raise ConfigError(f"depth_text must be ≥ 1 (the input layer's context), got {self.depth_text}.")
        if self.depth_vision < 0 or (self.depth_vision > 0 and self.n_ctx_vision < 1):
            raise ConfigError(f"depth_vision={self.depth_vision}, n_ctx_vision={self.n_ctx_vision}: give depth ≥ 0 "
                              "and, with vision prompts, n_ctx_vision ≥ 1.")


def check_depths(
    backbone: Backbone, depths: dict[str, int], tower_blocks: dict[str, tuple[str, int | None]],
    optional: tuple[str, ...] = (),
) -> None:
    """Refuse prompt depths above a tower's block count (or any depth on a tower without blocks, a ResNet image
    tower), naming the option and the fix; run before any token is built.

    Args:
        backbone: the backbone (named in the message).
        depths: option name → depth, e.g. ``{"depth_text": 12}``.
        tower_blocks: option name → ``(tower, block count or None)``, e.g. ``{"depth_text": ("text", 12)}``.
        optional: the options that may be 0 (the message then offers that).
    """
    for option, depth in depths.items():
        tower, blocks = tower_blocks[option]
        if blocks is None and depth > 0:  # a tower without blocks to prompt (a ResNet image tower)
            raise BackboneError(
                f"backbone '{backbone.name}' cannot take {tower} prompts ({option}={depth}): "
                f"{backbone.vision_prompt_unsupported}. Use a ViT backbone (e.g. ViT-B-16)"
                + (f", or set --learner-opt {option}=0." if option in optional else ".")
            )
        if blocks is not None and depth > blocks:
            raise ConfigError(
                f"{option}={depth}: the {tower} prompt depth counts the {tower} transformer blocks that get learned "
                f"tokens, but backbone '{backbone.name}' has {blocks} {tower} blocks; set --learner-opt "
                f"{option}={blocks} (or less)."
            )


class IndependentDeepPrompts(DeepPromptLearner):
    """Learned, independent text and vision tokens per layer (official ``clip/model.py``
    ``ResidualAttentionBlock_IVLP.VPT_shallow`` and ``VisionTransformer.VPT``, each ``N(0, 0.02²)``), held here as
    ``deep_text`` ``(J_t − 1, n_t, D_t)`` and ``deep_vision`` ``(J_v, n_v, D_v)`` parameters (``None`` at depth
    ≤ 1 / 0), checked against the backbone's towers when built."""

    config_class = IndependentPromptConfig

    def __init__(self, backbone: Backbone, classnames: list[str], config: IndependentPromptConfig):
        check_depths(backbone, {"depth_text": config.depth_text, "depth_vision": config.depth_vision},
                     {"depth_text": ("text", backbone.text_layers), "depth_vision": ("vision", backbone.vision_layers)},
                     optional=("depth_vision",))
        super().__init__(backbone, classnames, config)
        cfg = self.config
        text = vision = None
        if cfg.depth_text > 1:
            text = nn.Parameter(self.normal_tokens(backbone, (cfg.depth_text - 1, cfg.n_ctx, backbone.text_width)))
        if cfg.depth_vision > 0:
            check_vision_supported(backbone)  # a ResNet tower has no vision_width to size the tokens by
            vision = nn.Parameter(self.normal_tokens(backbone, (cfg.depth_vision, cfg.n_ctx_vision,
                                                                backbone.vision_width)))
        self.deep_text, self.deep_vision = text, vision
        check_prompts(backbone, self.deep_prompts())

    @property
    def prompts_image(self) -> bool:  # type: ignore[override]  # per instance: depth_vision 0 prompts no image
        return self.deep_vision is not None

    def deep_prompts(self) -> DeepPrompts:  # noqa: D102
        return DeepPrompts(text=self.deep_text, vision=self.deep_vision)


def _decode_tail(backbone: Backbone, phrase: str, n_ctx: int) -> str:
    """The words of ``phrase`` after its first ``n_ctx`` BPE tokens (kept fixed in every prompt), as text that
    tokenises back to exactly those tokens; ``""`` when all are learned."""
    words = phrase.split()
    for k in range(len(words) + 1):
        if len(backbone.bpe_tokens(" ".join(words[:k]))) == n_ctx:
            return " ".join(words[k:])
    raise ConfigError(
        f"--ctx-init '{phrase}': its first {n_ctx} BPE tokens end inside a word for backbone '{backbone.name}'; "
        "choose n_ctx so that the learned tokens are whole words."
    )


__all__ = ["DeepPromptConfig", "DeepPromptLearner", "IndependentDeepPrompts", "IndependentPromptConfig", "check_depths",
           "MAX_WORD_INIT_CTX"]
