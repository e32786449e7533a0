"""Caption-word prediction, an auxiliary micro-CLIP pretraining loss (``PretrainConfig.word_loss``).

Each image predicts which tokens of the world's caption vocabulary its own caption holds: a linear head on the image
embedding, sigmoid cross-entropy per vocabulary row (multi-label). This is the classification view of image–text
pretraining (SuperClass: Huang et al., "Classification Done Right for Vision-Language Pre-Training", NeurIPS 2024;
CatLIP: Mehta et al., 2024), used here next to the contrastive loss, not instead of it. Why: in a contrastive batch
of world captions, colour, style and background already tell most pairs apart, so the InfoNCE loss puts little
pressure on the slow-to-learn shape features of a ViT (``V2_DIAGNOSIS.md``); a per-image word target gives every
image a gradient towards its shape word (named in 90% of captions) whatever else is in the batch. The targets come
from the captions alone (the same text the contrastive loss sees), never from the world's hidden labels.

The head exists only during pretraining: it is checkpointed with the run (keys ``word_head.*`` in the training
snapshot) and never part of the exported CLIP.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: key prefix of the head's tensors in a training snapshot (``ckpt/model-<step>.safetensors``)
PREFIX = "word_head."


class CaptionWordHead(nn.Module):
    """``Linear(embed_dim → K)``: one logit per trained vocabulary row (the compact token table's rows)."""

    def __init__(self, embed_dim: int, rows: int) -> None:
        super().__init__()
        self.proj = nn.Linear(embed_dim, rows)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        """``[B, E]`` unnormalised image embeddings → ``[B, K]`` word logits."""
        return self.proj(image_features)


def caption_word_targets(ids: torch.Tensor, rows: torch.Tensor, num_rows: int) -> torch.Tensor:
    """Multi-hot ``float[B, K]``: row ``k`` is 1 where the caption holds that vocabulary token.

    Args:
        ids: ``LongTensor[B, 77]`` token ids (SOS … EOS, then padding); EOS is the highest id in a row.
        rows: ``LongTensor[B, 77]`` the same tokens as compact-table row indices.
        num_rows: ``K``.
    """
    valid = torch.arange(ids.shape[1]) <= ids.argmax(-1, keepdim=True)  # [B, 77]: SOS … EOS, not the padding
    t = torch.zeros(ids.shape[0], num_rows)
    return t.scatter_add_(1, rows, valid.float()).clamp_(max=1.0)


def caption_word_loss(head: CaptionWordHead, image_features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sigmoid cross-entropy summed over the ``K`` rows, averaged over the batch (a scalar)."""
    logits = head(image_features)  # [B, K]
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / len(logits)


def split_snapshot(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A training snapshot's tensors → ``(CLIP state, head state)`` (the head's without :data:`PREFIX`)."""
    clip = {k: v for k, v in state.items() if not k.startswith(PREFIX)}
    head = {k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}
    return clip, head
