"""Exact shared-prefix text encoding for open_clip's causal text transformer (DESIGN.md §5.2).

With unified context and the class name at the end, every CoOp prompt starts with the same ``P = 1 + M`` embeddings
(``[SOS] [V]_1 … [V]_M``). Under the causal mask the hidden states of those positions never see what follows, so
they are identical for every class at every layer. This module computes them once (one sequence, with autograd),
keeps each layer's keys/values, and runs only the ``S`` remaining positions of each class, attending to
``[prefix keys; own keys]`` with the causal mask of the suffix w.r.t. prefix + suffix. The result equals the plain
full-length computation to float tolerance, and the gradient reaches the context through the prefix keys/values.

Attention is written explicitly with each block's own weights (packed ``in_proj``, ``out_proj``, ``ln_1``, ``ls_1``,
``mlp``, ``ln_2``, ``ls_2``) and ``F.scaled_dot_product_attention`` over ``[prefix; suffix]`` keys/values with the
mask of the suffix w.r.t. prefix + suffix. The fused kernel is about twice as fast on the CPU as spelling the
two-part softmax out, at the price of keeping the concatenated keys/values (``C × (P + S) × D`` per layer) for
backward; class chunking with checkpointing bounds that as well. Blocks other than open_clip's plain
``ResidualAttentionBlock`` are refused by :func:`unsupported_reason`, and the caller uses the plain path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: Per layer, the prefix keys and values, each ``[H, P, hd]``.
PrefixKV = list[tuple[torch.Tensor, torch.Tensor]]


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


def _heads(t: torch.Tensor, n_heads: int) -> torch.Tensor:
    """``[N, S, D]`` → ``[N, H, S, hd]``."""
    n, s, d = t.shape
    return t.view(n, s, n_heads, d // n_heads).transpose(1, 2)


def _block(
    blk: nn.Module, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One ``ResidualAttentionBlock`` on ``x`` ``[N, S, D]``, attending to ``past`` keys/values ``[H, P, hd]`` (shared
    by all N sequences, all visible) and causally to its own positions. Returns ``(x_out, k, v)``, ``k``/``v``
    ``[N, H, S, hd]`` (this call's own keys/values, before concatenation with ``past``)."""
    attn: nn.MultiheadAttention = blk.attn
    n, s, d = x.shape
    n_heads = attn.num_heads
    q, k, v = F.linear(blk.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)  # 3 × (N, S, D)
    q, k, v = _heads(q, n_heads), _heads(k, n_heads), _heads(v, n_heads)  # (N, H, S, hd)
    if past is None:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (N, H, S, hd)
    else:
        k_p, v_p = past  # (H, P, hd)
        p = k_p.shape[1]
        keys = torch.cat([k_p.expand(n, -1, -1, -1), k], dim=2)  # (N, H, P + S, hd)
        values = torch.cat([v_p.expand(n, -1, -1, -1), v], dim=2)
        # Suffix position i (absolute P + i) sees the whole prefix and suffix positions ≤ i.
        allowed = torch.ones(s, p + s, dtype=torch.bool, device=x.device).tril(p)  # (S, P + S)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed)  # (N, H, S, hd)
    out = attn.out_proj(out.transpose(1, 2).reshape(n, s, d))  # (N, S, D)
    x = x + blk.ls_1(out)
    x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
    return x, k, v


def prefix_kv(transformer: nn.Module, x: torch.Tensor) -> PrefixKV:
    """Run the shared prefix ``x`` ``[P, D]`` (positional embedding added) and return every layer's keys/values.

    The last layer's output is not needed (no prefix position is pooled), only its keys/values.
    """
    h = x.unsqueeze(0)  # (1, P, D)
    kv: PrefixKV = []
    for blk in transformer.resblocks:
        h, k, v = _block(blk, h, None)
        kv.append((k[0], v[0]))  # (H, P, hd) each
    return kv


def suffix_forward(transformer: nn.Module, kv: PrefixKV, x: torch.Tensor) -> torch.Tensor:
    """Run the per-class suffixes ``x`` ``[C, S, D]`` (positional embeddings ``P…P+S-1`` added) on top of the prefix
    keys/values ``kv``; returns the last layer's hidden states ``[C, S, D]``."""
    for blk, past in zip(transformer.resblocks, kv, strict=True):
        x, _, _ = _block(blk, x, past)
    return x
