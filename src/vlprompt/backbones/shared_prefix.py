"""Exact shared-prefix text encoding for causal CLIP text transformers (DESIGN.md §5.2).

With unified context and the class name at the end, every CoOp prompt starts with the same ``P = 1 + M`` embeddings
(``[SOS] [V]_1 … [V]_M``). Under the causal mask the hidden states of those positions never see what follows, so
they are identical for every class at every layer. This module computes them once (one sequence, with autograd),
keeps each layer's keys/values, and runs only the ``S`` remaining positions of each class, attending to
``[prefix keys; own keys]`` with the causal mask of the suffix w.r.t. prefix + suffix. The result equals the plain
full-length computation to float tolerance, and the gradient reaches the context through the prefix keys/values.

Each block is written explicitly with its own weights by a per-library *block function* (here open_clip's
``ResidualAttentionBlock``: packed ``in_proj``, ``out_proj``, ``ln_1``, ``ls_1``, ``mlp``, ``ln_2``, ``ls_2``; the
transformers adapter supplies its own), around one shared :func:`attend`: ``F.scaled_dot_product_attention`` over
``[prefix; suffix]`` keys/values with the mask of the suffix w.r.t. prefix + suffix. The fused kernel is about twice
as fast on the CPU as spelling the two-part softmax out, at the price of keeping the concatenated keys/values
(``C × (P + S) × D`` per layer) for backward; class chunking with checkpointing bounds that as well. Blocks a block
function does not know are refused (:func:`unsupported_reason` for open_clip), and the caller uses the plain path.

:class:`SharedPrefixMixin` gives an adapter ``shared_prefix_unsupported``, ``encode_text_prefix`` and
``encode_text_suffix`` from four small hooks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.backbones.deep_prompts import replace_text
from vlprompt.errors import BackboneError

_logger = logging.getLogger(__name__)

#: Per layer, the prefix keys and values, each ``[H, P, hd]``.
PrefixKV = list[tuple[torch.Tensor, torch.Tensor]]
#: ``(block, x [N, S, D], past (k, v) [H, P, hd] or None) -> (x_out [N, S, D], k [N, H, S, hd], v [N, H, S, hd])``.
BlockFn = Callable[
    [nn.Module, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None], tuple[torch.Tensor, torch.Tensor, torch.Tensor]
]


def unsupported_reason(transformer: nn.Module, attn_mask: torch.Tensor | None) -> str | None:
    """Why the shared-prefix path cannot drive ``transformer`` with ``attn_mask`` (``None`` when it can)."""
    from open_clip.transformer import ResidualAttentionBlock, Transformer

    if type(transformer) is not Transformer:
        return f"text transformer is {type(transformer).__name__}, not open_clip's Transformer"
    for i, blk in enumerate(transformer.resblocks):
        if type(blk) is not ResidualAttentionBlock:
            return f"block {i} is {type(blk).__name__} (custom attention), not ResidualAttentionBlock"
        attn = blk.attn
        if not isinstance(attn, nn.MultiheadAttention) or not attn._qkv_same_embed_dim or attn.in_proj_weight is None:
            return f"block {i}'s attention is not a packed nn.MultiheadAttention"
        if attn.bias_k is not None or attn.bias_v is not None or attn.add_zero_attn:
            return f"block {i}'s attention has bias_k/bias_v/add_zero_attn"
    if attn_mask is None:
        return "no attention mask (not causal)"
    n = attn_mask.shape[-1]
    if attn_mask.dim() != 2 or attn_mask.shape[0] != n:
        return "attention mask is not a 2-D square mask"
    upper = torch.ones(n, n, dtype=torch.bool, device=attn_mask.device).triu(1)
    m = attn_mask.float()
    if not (torch.isneginf(m[upper]).all() and (m[~upper] == 0).all()):
        return "attention mask is not the standard causal mask"
    return None


def split_heads(t: torch.Tensor, n_heads: int) -> torch.Tensor:
    """``[N, S, D]`` → ``[N, H, S, hd]``."""
    n, s, d = t.shape
    return t.view(n, s, n_heads, d // n_heads).transpose(1, 2)


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None
) -> torch.Tensor:
    """Causal attention of ``q``/``k``/``v`` ``[N, H, S, hd]`` that also sees ``past`` keys/values ``[H, P, hd]``
    (shared by all N sequences, all visible); returns ``[N, H, S, hd]`` (scale ``hd ** -0.5``, as CLIP's)."""
    if past is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (N, H, S, hd)
    n, _, s, _ = q.shape
    k_p, v_p = past  # (H, P, hd)
    p = k_p.shape[1]
    keys = torch.cat([k_p.expand(n, -1, -1, -1), k], dim=2)  # (N, H, P + S, hd)
    values = torch.cat([v_p.expand(n, -1, -1, -1), v], dim=2)
    # Suffix position i (absolute P + i) sees the whole prefix and suffix positions ≤ i.
    allowed = torch.ones(s, p + s, dtype=torch.bool, device=q.device).tril(p)  # (S, P + S)
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed)  # (N, H, S, hd)


def open_clip_block(
    blk: nn.Module, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One open_clip ``ResidualAttentionBlock`` on ``x`` ``[N, S, D]``, attending to ``past`` and causally to its own
    positions (:func:`attend`). Returns ``(x_out, k, v)``, ``k``/``v`` ``[N, H, S, hd]`` (this call's own)."""
    attn: nn.MultiheadAttention = blk.attn
    n, s, d = x.shape
    n_heads = attn.num_heads
    q, k, v = F.linear(blk.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)  # 3 × (N, S, D)
    q, k, v = split_heads(q, n_heads), split_heads(k, n_heads), split_heads(v, n_heads)  # (N, H, S, hd)
    out = attn.out_proj(attend(q, k, v, past).transpose(1, 2).reshape(n, s, d))  # (N, S, D)
    x = x + blk.ls_1(out)
    x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
    return x, k, v


def prefix_kv(
    blocks: Sequence[nn.Module], x: torch.Tensor, block_fn: BlockFn = open_clip_block,
    deep_text: torch.Tensor | None = None, cast: torch.dtype | None = None,
) -> PrefixKV:
    """Run the shared prefix ``x`` ``[P, D]`` (positional embedding added) and return every layer's keys/values.

    The last layer's output is not needed (no prefix position is pooled), only its keys/values. ``deep_text``
    ``[J − 1, n, D]`` (``1 + n ≤ P``) replaces prefix positions ``1…n`` before blocks ``1…J − 1``
    (:func:`~vlprompt.backbones.deep_prompts.replace_text`, ``cast`` as there). Exact: the tokens are the same for
    every prompt and lie inside the prefix, and under the causal mask prefix positions see only the prefix, so each
    layer's prefix states (hence keys/values) are identical for every class, as without deep prompts.
    """
    h = x.unsqueeze(0)  # (1, P, D)
    kv: PrefixKV = []
    for j, blk in enumerate(blocks):
        if deep_text is not None and 1 <= j <= deep_text.shape[0]:
            h = replace_text(h, deep_text[j - 1], 1, cast)  # (1, P, D)
        h, k, v = block_fn(blk, h, None)
        kv.append((k[0], v[0]))  # (H, P, hd) each
    return kv


def suffix_forward(
    blocks: Sequence[nn.Module], kv: PrefixKV, x: torch.Tensor, block_fn: BlockFn = open_clip_block
) -> torch.Tensor:
    """Run the per-class suffixes ``x`` ``[C, S, D]`` (positional embeddings ``P…P+S-1`` added) on top of the prefix
    keys/values ``kv``; returns the last layer's hidden states ``[C, S, D]``."""
    for blk, past in zip(blocks, kv, strict=True):
        x, _, _ = block_fn(blk, x, past)
    return x


class SharedPrefixMixin:
    """``shared_prefix_unsupported`` / ``encode_text_prefix`` / ``encode_text_suffix`` for a backbone adapter.

    The adapter implements the hooks ``_prefix_unsupported_reason``, ``_prefix_blocks``, ``_prefix_block`` and
    ``_add_positions``, besides the protocol's ``eos_positions``, ``dtype``, ``name`` and its ``_pool_project``.
    """

    def _prefix_unsupported_reason(self) -> str | None:
        """Why the explicit blocks cannot reproduce this text tower (``None`` when they can)."""
        raise NotImplementedError

    def _prefix_blocks(self) -> Sequence[nn.Module]:
        """The text transformer's blocks, in order."""
        raise NotImplementedError

    def _prefix_block(
        self, blk: nn.Module, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One block as a :data:`BlockFn`."""
        raise NotImplementedError

    def _add_positions(self, x: torch.Tensor, offset: int) -> torch.Tensor:
        """``x`` ``[N, S, D]`` (backbone dtype) plus the positional embeddings of positions ``offset…offset+S-1``."""
        raise NotImplementedError

    @property
    def shared_prefix_unsupported(self) -> str | None:
        """Why the exact shared-prefix path cannot drive this text tower, or ``None`` when it can."""
        if not hasattr(self, "_prefix_reason"):
            self._prefix_reason = self._prefix_unsupported_reason()
            if self._prefix_reason:
                _logger.info("backbone '%s': shared-prefix text encoding off (%s)", self.name, self._prefix_reason)
        return self._prefix_reason

    def encode_text_prefix(
        self, prefix: torch.Tensor, deep_text: torch.Tensor | None = None, prompt_cast: torch.dtype | None = None
    ) -> PrefixKV:
        """Run a prefix shared by every prompt through the text tower once.

        Args:
            prefix: ``[P, D]`` token embeddings of positions ``0…P-1`` (no positional embedding).
            deep_text: ``[J − 1, n, D]`` deep text prompts (:class:`~vlprompt.backbones.deep_prompts.DeepPrompts`),
                positions ``1…n`` inside the prefix (``1 + n ≤ P``), or ``None``.
            prompt_cast: dtype the deep tokens pass through (``torch.float16``: the official ``.half()``). Values
                as the full path; gradients are rounded once for all classes (the class sum happens inside the
                shared keys/values), not per class as the official code does.

        Returns:
            Per layer, the prefix keys and values (``[H, P, hd]`` each), for :meth:`encode_text_suffix`.
        """
        if self.shared_prefix_unsupported:
            raise BackboneError(f"backbone '{self.name}': shared-prefix encoding unsupported: {self._prefix_reason}.")
        if deep_text is not None:
            self._check_deep_text(deep_text)
            if 1 + deep_text.shape[1] > prefix.shape[0]:
                raise BackboneError(
                    f"backbone '{self.name}': deep text prompts cover positions 1..{deep_text.shape[1]}, beyond the "
                    f"shared prefix of {prefix.shape[0]} positions; share at least SOS + the context tokens."
                )
        x = self._add_positions(prefix.to(self.dtype).unsqueeze(0), 0)[0]  # (P, D)
        return prefix_kv(self._prefix_blocks(), x, self._prefix_block, deep_text, prompt_cast)

    def _check_deep_text(self, deep_text: torch.Tensor) -> None:
        """Refuse deep text prompts that do not fit the text tower (the adapter implements it)."""
        raise NotImplementedError

    def encode_text_suffix(
        self, kv: PrefixKV, suffix: torch.Tensor, ids: torch.Tensor, truncate: bool = True
    ) -> torch.Tensor:
        """Encode prompts ``[prefix; suffix_i]`` given the prefix's keys/values from :meth:`encode_text_prefix`.

        Equal (to float tolerance) to ``encode_text_embeddings(cat(prefix, suffix_i), ids)``, at the cost of the
        suffix positions only.

        Args:
            kv: the shared prefix's per-layer keys/values (prefix length ``P``).
            suffix: ``[C, S, D]`` token embeddings of positions ``P…P+S-1`` (no positional embedding).
            ids: ``[C, P + S']`` token ids of the whole prompts, ``S' ≥`` the EOS positions (drive pooling).
            truncate: cut the suffixes after the longest EOS.

        Returns:
            ``[C, E]`` unnormalised text features.
        """
        p = kv[0][0].shape[1]
        eos = self.eos_positions(ids) - p  # (C,) EOS index within the suffix
        if bool((eos < 0).any()):
            raise BackboneError(f"a prompt's EOS lies inside the shared prefix of {p} positions; use the plain path.")
        length = suffix.shape[1]
        if truncate:
            length = min(length, int(eos.max().item()) + 1)
        x = self._add_positions(suffix[:, :length].to(self.dtype), p)  # (C, S, D)
        return self._pool_project(suffix_forward(self._prefix_blocks(), kv, x, self._prefix_block), eos)
