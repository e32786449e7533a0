"""CoOp: learnable context vectors for CLIP prompts (Zhou et al., "Learning to Prompt for Vision-Language
Models", IJCV 2022, arXiv 2109.01134).

For class *i* the text tower reads ``[SOS] [V]_1 … [V]_M [CLASS_i] [.] [EOS]`` (class token at the end), with the
class in the middle (``[SOS] [V]_1..⌊M/2⌋ [CLASS_i] [V]_⌊M/2⌋+1..M [.] [EOS]``) or at the front
(``[SOS] [CLASS_i] [V]_1..M [.] [EOS]``). Context is unified (shared, ``(M, D)``) or class-specific
(``(C, M, D)``).

Differences from the official code (reference §1.2, §11): word initialisation with class-specific context
initialises every class's context from the words (the official code silently ignores CSC then); each init word must
be a single BPE token (the official code silently misaligns otherwise).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from vlprompt.backbones.base import Backbone
from vlprompt.errors import ConfigError
from vlprompt.prompts.base import PromptLearner, register_prompt_learner
from vlprompt.types import CLASS_TOKEN_POSITIONS, ClassTokenPosition

_logger = logging.getLogger(__name__)

POSITIONS = CLASS_TOKEN_POSITIONS  # ("end", "middle", "front"), written once in vlprompt.types


@dataclass(frozen=True)
class CoOpConfig:
    """CoOp options.

    Attributes:
        n_ctx: number of context vectors M (overridden by the number of words of ``ctx_init``, as officially).
        ctx_init: initialisation words, e.g. ``"a photo of a"``; ``None`` for random N(0, ``init_std``²) init.
        csc: class-specific context (one set of M vectors per class).
        class_token_position: where the class name goes: ``end``, ``middle`` or ``front``.
        init_std: std of the random initialisation.
        truncate: cut prompts after the longest EOS (exact under a causal text mask; a speed-up, not a change).
    """

    n_ctx: int = 16
    ctx_init: str | None = None
    csc: bool = False
    class_token_position: ClassTokenPosition = "end"
    init_std: float = 0.02
    truncate: bool = True

    def __post_init__(self) -> None:
        if self.class_token_position not in POSITIONS:
            raise ConfigError(
                f"--class-token-position '{self.class_token_position}' is not one of {', '.join(POSITIONS)}."
            )
        if self.ctx_init is not None and not self.ctx_init.strip():
            raise ConfigError("--ctx-init is empty; pass words such as 'a photo of a', or omit it for random init.")
        if self.ctx_init is None and self.n_ctx < 1:
            raise ConfigError(f"--n-ctx must be ≥ 1, got {self.n_ctx}.")
        if self.init_std <= 0:
            raise ConfigError(f"init_std must be > 0, got {self.init_std}.")


def _arrangement(n_ctx: int, name_len: int, length: int, position: str) -> tuple[list[int], list[int]]:
    """Where each output position reads from, for one class.

    The placeholder prompt is tokenised as ``[SOS] X×M name… . [EOS] pad…`` (the class-at-end order). Returns
    ``(src, slot)`` of length ``length``: output position p takes the placeholder token at ``src[p]``, or the
    context vector ``slot[p]`` when ``slot[p] >= 0``.
    """
    ctx = [(1 + j, j) for j in range(n_ctx)]  # (placeholder position, context slot)
    name = [(1 + n_ctx + j, -1) for j in range(name_len)]
    rest = [(p, -1) for p in range(1 + n_ctx + name_len, length)]  # ".", EOS, padding
    if position == "end":
        order = ctx + name
    elif position == "front":
        order = name + ctx
    else:  # middle
        half = n_ctx // 2
        order = ctx[:half] + name + ctx[half:]
    seq = [(0, -1)] + order + rest
    return [s for s, _ in seq], [c for _, c in seq]


@register_prompt_learner
class CoOp(PromptLearner):
    """CoOp prompt learner (unified or class-specific context; class token at end, middle or front).

    Args:
        backbone: the frozen backbone (its tokenizer and token embeddings build the fixed prompt parts).
        classnames: class names; ``_`` becomes a space.
        config: :class:`CoOpConfig`.

    Shapes: ``ctx`` is ``(M, D)`` (unified) or ``(C, M, D)`` (CSC); ``forward()`` returns embeds ``(C, L, D)`` and
    ids ``(C, L)``, where ``L`` is the context length, or the longest prompt's EOS + 1 when truncating.
    """

    method = "coop"
    config_class = CoOpConfig
    display_name = "CoOp"
    #: Words kept fixed between the context and every class name (part of the class's tokens in the arrangement).
    kept_words: str = ""

    def __init__(self, backbone: Backbone, classnames: list[str], config: CoOpConfig | None = None):
        super().__init__(config or CoOpConfig())
        cfg = self.config
        dim = backbone.token_dim
        dtype = backbone.dtype  # fp16 in the official fp16 mode: ctx itself is then fp16
        if cfg.ctx_init:
            words = cfg.ctx_init.strip().split()
            for w in words:
                if len(backbone.bpe_tokens(w)) != 1:
                    raise ConfigError(
                        f"--ctx-init word '{w}' is {len(backbone.bpe_tokens(w))} BPE tokens for backbone "
                        f"'{backbone.name}'; each initialisation word must be a single token (one context vector "
                        "per word). Use other words, or random initialisation with --n-ctx."
                    )
            self.n_ctx = len(words)
            if cfg.n_ctx != self.n_ctx and cfg.n_ctx != CoOpConfig.n_ctx:
                _logger.warning("--ctx-init has %d words: n_ctx=%d is overridden (as officially)", self.n_ctx, cfg.n_ctx)
            with torch.no_grad():
                ids = backbone.tokenize([" ".join(words)]).to(backbone.device)
                init = backbone.embed_tokens(ids)[0, 1 : 1 + self.n_ctx].to(dtype)  # (M, D)
            self.init_text = " ".join(words)
        else:
            self.n_ctx = cfg.n_ctx
            # As officially (CoOp:trainers/coop.py l.84-90): one N(0, 0.02²) draw of shape (C, M, D) for CSC, i.e.
            # independent vectors per class, or (M, D) for unified context.
            shape = (len(classnames), self.n_ctx, dim) if cfg.csc else (self.n_ctx, dim)
            init = torch.empty(shape, dtype=dtype, device=backbone.device)
            nn.init.normal_(init, std=cfg.init_std)
            self.init_text = " ".join(["X"] * self.n_ctx)
        self.set_classnames(backbone, classnames)
        if cfg.csc and cfg.ctx_init:  # deliberate deviation: every class's context starts from the words
            init = init.unsqueeze(0).repeat(len(classnames), 1, 1)  # (C, M, D)
        self.ctx = nn.Parameter(init.clone())

    def config_dict(self) -> dict:  # noqa: D102
        d = super().config_dict()
        d["n_ctx"] = self.n_ctx  # the effective M
        return d

    def set_classnames(self, backbone: Backbone, classnames: list[str]) -> None:  # noqa: D102
        if not classnames:
            raise ConfigError("no class names given to the prompt learner.")
        if self.config.csc and hasattr(self, "ctx") and list(classnames) != self.classnames:
            raise ConfigError(
                "this prompt has class-specific context (CSC): one learned context per training class, so it cannot "
                f"be applied to a different class list ({len(classnames)} classes vs {len(self.classnames)} trained). "
                "Evaluate on the same classes, or train with unified context (no --csc) to transfer."
            )
        # fixed words between the context and the class name (the deep-prompt methods keep the init words beyond
        # their n_ctx learned ones, vlprompt.prompts.deep); none for CoOp
        names = [f"{self.kept_words} {c.replace('_', ' ')}".strip() for c in classnames]
        placeholder = " ".join(["X"] * self.n_ctx)
        ids = backbone.tokenize([f"{placeholder} {n}." for n in names])  # (C, 77) class-at-end order
        length = ids.shape[1]
        src, slot = zip(
            *[
                _arrangement(self.n_ctx, len(backbone.bpe_tokens(n)), length, self.config.class_token_position)
                for n in names
            ],
            strict=True,
        )
        src_t = torch.tensor(src, dtype=torch.long)  # (C, L)
        slot_t = torch.tensor(slot, dtype=torch.long)  # (C, L)
        ids = ids.gather(1, src_t)  # reordered ids: EOS stays at the same position for every order
        if self.config.truncate and backbone.causal:
            # Positions after the longest EOS never influence a pooled feature under the causal mask.
            length = int(backbone.eos_positions(ids).max()) + 1
            ids, slot_t = ids[:, :length], slot_t[:, :length]
        device = backbone.device
        ids = ids.to(device)
        with torch.no_grad():
            fixed = backbone.embed_tokens(ids).to(backbone.dtype)  # (C, L, D); ctx slots overwritten in forward
        self._classnames = list(classnames)
        self.register_buffer("token_ids", ids, persistent=False)
        self.register_buffer("fixed_embeds", fixed, persistent=False)
        self.register_buffer("ctx_slot", slot_t.to(device), persistent=False)

    def forward(self, image_features: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: D102
        n_cls = self.fixed_embeds.shape[0]
        ctx = self.ctx if self.ctx.dim() == 3 else self.ctx.unsqueeze(0).expand(n_cls, -1, -1)  # (C, M, D)
        return self.assemble(ctx), self.token_ids

    def assemble(self, ctx: torch.Tensor) -> torch.Tensor:
        """Splice context vectors into the fixed prompt parts.

        Args:
            ctx: ``(..., C, M, D)`` context per class, with any leading dimensions (e.g. one set per image).

        Returns:
            ``(..., C, L, D)`` prompt embeddings, in the class-token order of the config.
        """
        fixed = self.fixed_embeds  # (C, L, D)
        lead = ctx.shape[:-3]
        if self.config.class_token_position == "end":
            m, dim = self.n_ctx, fixed.shape[-1]
            prefix = fixed[:, :1].expand(*lead, -1, 1, dim)  # (..., C, 1, D) SOS
            suffix = fixed[:, 1 + m :].expand(*lead, -1, -1, dim)  # (..., C, rest, D) class, ".", EOS
            return torch.cat([prefix, ctx, suffix], dim=-2)  # (..., C, 1 + M + rest, D)
        slot = self.ctx_slot  # (C, L), -1 where the fixed token stays
        index = slot.clamp(min=0).unsqueeze(-1).expand(*lead, -1, -1, ctx.shape[-1])  # (..., C, L, D)
        gathered = ctx.gather(-2, index)  # (..., C, L, D)
        return torch.where((slot >= 0).unsqueeze(-1), gathered, fixed)

    def shared_prefix(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """The prompts as a part shared by every class and per-class parts, for exact shared-prefix encoding.

        Returns ``(prefix [1 + M, D], suffix [C, L - 1 - M, D], ids [C, L])`` such that
        ``cat(prefix, suffix_i)`` is ``forward()[0][i]``: with unified context and the class at the end,
        ``[SOS] [V]_1 … [V]_M`` starts every prompt. ``None`` when that does not hold (CSC, class in the middle or
        at the front): then use :meth:`forward`.
        """
        if self.ctx.dim() == 3 or self.config.class_token_position != "end":
            return None
        prefix = torch.cat([self.fixed_embeds[0, :1], self.ctx], dim=0)  # (1 + M, D): SOS + context
        return prefix, self.fixed_embeds[:, 1 + self.n_ctx :], self.token_ids
