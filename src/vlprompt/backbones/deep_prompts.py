"""Deep prompts: learnable tokens inserted between the transformer blocks of the text and image towers.

This is the one way in for the "deep prompting" methods (IVLP, VPT-deep, MaPLe, PromptSRC): no method keeps a copy
of a model's code; each hands tokens to the backbone, which runs its own blocks and replaces tokens between them.
The token positions are those of the official code (``muzairkhattak/multimodal-prompt-learning`` at 69bce21,
``clip/model.py``: ``ResidualAttentionBlock_IVLP.forward``, ``ResidualAttentionBlock_MaPLe.forward``,
``VisionTransformer.forward``, ``VisionTransformer_MaPLe.forward``; ``muzairkhattak/PromptSRC`` builds on the IVLP
blocks):

- **Text** (depth ``J_t``): the input layer's ``n_t`` context tokens are part of the embeddings the caller passes
  (positions ``1…n_t``, right after SOS, where the tokenised placeholder words sit, so they get positional
  embeddings). Before block ``j`` (``j = 1…J_t − 1``) the hidden states at positions ``1…n_t`` are *replaced* by
  ``text[j − 1]`` (no positional embedding). Nothing is inserted, so the EOS index is that of the tokenised prompt
  (``tokenized_prompts.argmax(-1)`` in the official ``TextEncoder``): it does not shift.
- **Vision** (depth ``J_v``): ``vision[0]`` is *appended* after the class and patch tokens, after the positional
  embedding and before ``ln_pre`` (LayerNorm is per token, so ``ln_pre`` of the concatenation is the concatenation
  of ``ln_pre`` of each part); before block ``j`` (``j = 1…J_v − 1``) the last ``n_v`` hidden states are replaced by
  ``vision[j]`` (raw, no ``ln_pre``). The class token stays at index 0 and is what ``tok`` pooling reads; the
  prompt tokens are removed before the tower's own pooling (identical for ``tok`` pooling, and the patch mean for
  ``avg`` pooling).

Implemented over open_clip's own blocks (``OpenClipBackbone``: OpenAI ``CLIP`` and ``CustomTextCLIP`` layouts,
batch-first or not, any ``VisionTransformer``, hence micro-CLIP v2) and transformers' ``CLIPEncoderLayer`` written
out (``HFClipBackbone``, text and vision). ResNet and timm image towers are refused for vision prompts (text prompts
still work). open_clip's ``grad_checkpointing`` flag is not honoured by the hook (the towers are frozen).

Precision note: the official code casts the replacing tokens with ``.half()`` even in fp32 mode (every vision
token, and the deeper text tokens), after broadcasting them over the batch, so its fp32 runs see them rounded to
fp16, and each image's / class's gradient rounded before they are summed. The hook takes tokens as given; a method
reproducing that rounding passes ``cast=torch.float16`` (the ``prompt_cast`` argument of the backbone methods).

Memory (estimates, not measured here; ``benchmarks/`` is where they belong): deep text prompts add ``n_t`` tokens
per layer and nothing per class, so with the shared prefix each class still costs only its suffix positions, and
the engine's ``text_chunk`` + checkpointing bound the text side at 1000 classes exactly as without deep prompts. A
prompted image tower cannot be cached: each step keeps the autograd activations of ``B × (1 + grid² + n_v)`` tokens
per block, independent of the number of classes — about 20 ``D``-wide fp32 vectors per token per block (LayerNorm,
q/k/v, attention weights, MLP), i.e. ≈ 0.6 GB for ViT-B/16 at ``B = 4``, ``n_v = 2`` (796 tokens × 12 blocks ×
61 kB). The image forward is one batched call per block, no per-image loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from vlprompt.errors import BackboneError

#: ``(hidden states, tokens [n, D], sequence dim, cast) -> hidden states`` with the prompt positions replaced.
Replace = Callable[[torch.Tensor, torch.Tensor, int, "torch.dtype | None"], torch.Tensor]


@dataclass(frozen=True)
class DeepPrompts:
    """Learnable tokens for both towers (either may be ``None``).

    Attributes:
        text: ``[J_t − 1, n_t, D_t]`` tokens replacing positions ``1…n_t`` before text blocks ``1…J_t − 1`` (the
            input layer's context is in the embeddings the caller builds).
        vision: ``[J_v, n_v, D_v]``: ``vision[0]`` appended to the image tokens before ``ln_pre``, ``vision[j]``
            replacing them before vision block ``j``.
    """

    text: torch.Tensor | None = None
    vision: torch.Tensor | None = None

    @property
    def text_depth(self) -> int:
        """Text prompt depth ``J_t`` (layers that see learned text tokens, the input layer included); 0 if none."""
        return 0 if self.text is None else 1 + int(self.text.shape[0])

    @property
    def vision_depth(self) -> int:
        """Vision prompt depth ``J_v``; 0 if none."""
        return 0 if self.vision is None else int(self.vision.shape[0])


def expand_tokens(tokens: torch.Tensor, like: torch.Tensor, seq_dim: int, cast: torch.dtype | None) -> torch.Tensor:
    """``tokens`` ``[n, D]`` broadcast to ``like``'s shape (``[N, n, D]`` or ``[n, N, D]``), in ``like``'s dtype,
    through ``cast`` first when given (after the broadcast, as the official ``.expand(...).half()``: each row's
    gradient is rounded before the rows are summed)."""
    ctx = tokens.unsqueeze(1 - seq_dim).expand_as(like)
    if cast is not None:
        ctx = ctx.to(cast)
    return ctx.to(like.dtype)


def replace_text(x: torch.Tensor, tokens: torch.Tensor, seq_dim: int, cast: torch.dtype | None = None) -> torch.Tensor:
    """Hidden states ``x`` (``[N, L, D]`` or ``[L, N, D]`` per ``seq_dim``) with positions ``1…n`` set to ``tokens``
    ``[n, D]`` (the official ``cat([x[:1], ctx, x[1 + n:]])``); ``cast``: see :func:`expand_tokens`."""
    n = tokens.shape[0]
    ctx = expand_tokens(tokens, x.narrow(seq_dim, 1, n), seq_dim, cast)
    return torch.cat([x.narrow(seq_dim, 0, 1), ctx, x.narrow(seq_dim, 1 + n, x.shape[seq_dim] - 1 - n)], dim=seq_dim)


def replace_vision(
    x: torch.Tensor, tokens: torch.Tensor, seq_dim: int, cast: torch.dtype | None = None
) -> torch.Tensor:
    """Hidden states ``x`` with the last ``n`` positions set to ``tokens`` ``[n, D]`` (the official
    ``cat([x[:-n], ctx])``); ``cast``: see :func:`expand_tokens`."""
    n = tokens.shape[0]
    keep = x.narrow(seq_dim, 0, x.shape[seq_dim] - n)
    return torch.cat([keep, expand_tokens(tokens, x.narrow(seq_dim, 0, n), seq_dim, cast)], dim=seq_dim)


def run_blocks(
    blocks: Sequence[nn.Module],
    x: torch.Tensor,
    deep: torch.Tensor | None,
    replace: Replace,
    block: Callable[[nn.Module, torch.Tensor], torch.Tensor],
    seq_dim: int = 1,
    cast: torch.dtype | None = None,
) -> torch.Tensor:
    """Run ``blocks`` on ``x``, replacing the prompt positions with ``deep[j − 1]`` before block ``j ≥ 1``.

    Args:
        blocks: the transformer's blocks, in order.
        x: input hidden states, sequence along ``seq_dim``.
        deep: ``[J − 1, n, D]`` tokens for blocks ``1…J − 1``, or ``None`` (then this is the plain forward).
        replace: :func:`replace_text` or :func:`replace_vision`.
        block: ``(block, x) -> x``, one block's forward (the library's own module call).
        seq_dim: the sequence dimension of ``x`` (1 batch-first, 0 sequence-first).
        cast: dtype the broadcast tokens pass through (``torch.float16``: the official ``.half()``), or ``None``.
    """
    for j, blk in enumerate(blocks):
        if deep is not None and 1 <= j <= deep.shape[0]:
            x = replace(x, deep[j - 1], seq_dim, cast)
        x = block(blk, x)
    return x


def check_tokens(
    name: str, tower: str, tokens: torch.Tensor, layers: int, width: int, max_depth: int, what: str,
    min_depth: int = 0,
) -> None:
    """Refuse ``tokens`` ``[J, n, D]`` that do not fit a tower of ``layers`` blocks of width ``width``.

    ``max_depth`` is the number of entries the tower can take (``layers − 1`` deeper text layers, ``layers``
    vision layers), ``min_depth`` the fewest (1 for vision: ``vision[0]`` is the input layer's); ``what``
    describes the entries in the message.
    """
    if tokens.dim() != 3:
        raise BackboneError(
            f"backbone '{name}': {tower} prompts have shape {tuple(tokens.shape)}; expected [depth, n_tokens, "
            f"{width}] ({what})."
        )
    depth, n, d = tokens.shape
    if d != width:
        raise BackboneError(
            f"backbone '{name}': {tower} prompt tokens have width {d}, but its {tower} transformer has width "
            f"{width}; build the tokens (or the coupling projection) with width {width}."
        )
    if depth > max_depth:
        raise BackboneError(
            f"backbone '{name}': {depth} {tower} prompt layers given ({what}), but its {tower} transformer has "
            f"{layers} blocks, so at most {max_depth} fit; lower the prompt depth."
        )
    if depth < min_depth:
        raise BackboneError(
            f"backbone '{name}': 0 {tower} prompt layers given ({what}); give at least {min_depth}, or no prompts."
        )
    if n < 1:
        raise BackboneError(f"backbone '{name}': {tower} prompts have 0 tokens per layer; give at least 1.")


def check_prompts(backbone, prompts: DeepPrompts) -> None:
    """Refuse ``prompts`` that do not fit ``backbone`` (any adapter with the tower-size properties of the protocol):
    text deeper than ``text_layers − 1`` or not ``text_width`` wide; vision on a tower that cannot take it
    (``vision_prompt_unsupported``, e.g. a ResNet), deeper than ``vision_layers``, empty, or not ``vision_width``
    wide. Methods call it when they build their tokens, so a bad depth fails before training, not at the first step.
    """
    if prompts.text is not None:
        check_tokens(backbone.name, "text", prompts.text, backbone.text_layers, backbone.text_width,
                     backbone.text_layers - 1, "one per text block after the first; the input layer's context is "
                     "in the embeddings")
    if prompts.vision is not None:
        check_vision_supported(backbone)
        check_tokens(backbone.name, "vision", prompts.vision, backbone.vision_layers, backbone.vision_width,
                     backbone.vision_layers, "one per image block from the first", min_depth=1)


def check_vision_supported(backbone) -> None:
    """Refuse a backbone whose image tower cannot take vision prompts (``vision_prompt_unsupported``, e.g. a ResNet),
    naming the model and the reason; methods call it before sizing their vision tokens by ``vision_width``."""
    reason = backbone.vision_prompt_unsupported
    if reason:
        raise BackboneError(f"backbone '{backbone.name}' cannot take vision prompts: {reason}. Vision and "
                            "multimodal deep prompts need a ViT image tower (e.g. ViT-B-16).")


def check_text_positions(name: str, n: int, eos: torch.Tensor) -> None:
    """Refuse deep text tokens at positions ``1…n`` when a prompt's EOS (``eos`` ``[N]``) lies among them."""
    if bool((eos <= n).any()):
        i = int((eos <= n).nonzero()[0, 0])
        raise BackboneError(
            f"backbone '{name}': prompt {i} has its EOS at position {int(eos[i])}, inside the deep text prompt "
            f"positions 1..{n}; each prompt must hold {n} placeholder tokens right after SOS (e.g. 'X X ... X "
            "classname.' or the init words)."
        )


def vision_unsupported_reason(visual: nn.Module) -> str | None:
    """Why open_clip's image tower ``visual`` cannot take vision prompts (``None`` when it can)."""
    from open_clip.transformer import VisionTransformer

    if not isinstance(visual, VisionTransformer):
        kind = type(visual).__name__
        why = ("a convolutional (ResNet) tower has no token sequence to extend" if "ResNet" in kind else
               "only open_clip's own VisionTransformer is hooked (timm and other towers are not)")
        return (
            f"its image tower is {kind}, not a ViT: vision prompts are tokens appended to a transformer's sequence "
            f"between its blocks, and {why}"
        )
    if not (hasattr(visual, "_embeds") and hasattr(visual, "_pool")):
        return "the installed open_clip's VisionTransformer has no _embeds/_pool (upgrade open_clip to >= 2.24)"
    return None


def open_clip_image(
    visual: nn.Module, images: torch.Tensor, vision: torch.Tensor, cast: torch.dtype | None = None
) -> torch.Tensor:
    """open_clip ``VisionTransformer`` forward with vision prompts ``vision`` ``[J_v, n_v, D_v]``: ``[B, E]``.

    Uses the tower's own ``_embeds`` (conv, class token, positional embedding, patch dropout, ``ln_pre``), blocks,
    ``_pool`` and ``proj``; ``ln_pre`` (per token) is applied to the broadcast ``vision[0]`` separately, which
    equals applying it to the concatenation as the official code does. ``cast``: see :func:`expand_tokens`.
    """
    x = visual._embeds(images)  # (B, 1 + g², D)
    n = vision.shape[1]
    # the shape to broadcast to is (B, n_v, D): from x[:, :1], since n_v may exceed the 1 + g² image tokens
    first = visual.ln_pre(expand_tokens(vision[0], x[:, :1].expand(-1, n, -1), 1, cast))  # (B, n_v, D)
    x = torch.cat([x, first], dim=1)  # (B, 1 + g² + n_v, D)
    x = run_transformer(visual.transformer, x, None, vision[1:], replace_vision, cast)
    x = x[:, : x.shape[1] - n]  # (B, 1 + g², D): prompt tokens out before the tower's pooling
    pooled, _ = visual._pool(x)  # (B, D)
    return pooled @ visual.proj if visual.proj is not None else pooled  # (B, E)


def run_transformer(
    transformer: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None, deep: torch.Tensor | None,
    replace: Replace, cast: torch.dtype | None = None,
) -> torch.Tensor:
    """open_clip ``Transformer.forward`` on batch-first ``x`` ``[N, L, D]`` with deep-prompt replacement between
    blocks (sequence-first inside when the transformer is not batch-first, as its own forward does)."""
    batch_first = getattr(transformer, "batch_first", True)
    if not batch_first:
        x = x.transpose(0, 1)  # (L, N, D)
    x = run_blocks(transformer.resblocks, x, deep, replace, lambda blk, h: blk(h, attn_mask=attn_mask),
                   seq_dim=1 if batch_first else 0, cast=cast)
    return x if batch_first else x.transpose(0, 1)  # (N, L, D)


__all__ = [
    "DeepPrompts", "check_prompts", "check_text_positions", "check_tokens", "check_vision_supported", "expand_tokens",
    "open_clip_image", "replace_text", "replace_vision", "run_blocks", "run_transformer", "vision_unsupported_reason",
]
