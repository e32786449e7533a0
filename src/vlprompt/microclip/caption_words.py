"""Caption-word prediction, an auxiliary micro-CLIP pretraining loss (``PretrainConfig.word_loss``).

Each image predicts which tokens of the world's caption vocabulary its own caption holds: a linear head on the image
embedding, sigmoid cross-entropy per vocabulary row (multi-label). This is the classification view of image–text
pretraining (SuperClass: Huang et al., "Classification Done Right for Vision-Language Pre-Training", NeurIPS 2024;
CatLIP: Mehta et al., 2024), used here next to the contrastive loss, not instead of it. Why: in a contrastive batch
of world captions, colour, style and background already tell most pairs apart, so the InfoNCE loss puts little
pressure on the slow-to-learn shape features of a ViT (``V2_DIAGNOSIS.md``); a per-image word target gives every
image a gradient towards its shape word (named in 90% of captions) whatever else is in the batch. The targets come
from the captions alone (the same text the contrastive loss sees), never from the world's hidden labels.

Six forms (``PretrainConfig.word_form``): ``"sigmoid"`` — multi-label, one sigmoid cross-entropy per row, summed —;
``"softmax-idf"``, SuperClass's own: one softmax over the rows against the caption's tokens weighted by their
inverse document frequency (frequent words such as "a" or "photo" get almost no weight, the shape word a large
share), IDF counted on the first :data:`IDF_CAPTIONS` captions of the training world; and ``"sigmoid-nouns"``,
CatLIP's target: the sigmoid form over the rows of the caption's head nouns only (the world's ``CAPTION_NOUNS``:
shapes, positions, style nouns), so that the many modifiers a caption names at random (a colour half the time, a
size 40%) add no irreducible noise to the image tower's gradient; and ``"softmax-objects"``, a caption-parsed
object label: one softmax over the object nouns (the world's ``CAPTION_OBJECTS``) against the object nouns the caption
names (one, or two for a scene, each half) — the weakly supervised "predict the caption's object word" target
(Joulin et al., "Learning Visual Features from Large Weakly Supervised Data", ECCV 2016), parsed from the caption
text and never read from the world's labels; and ``"sigmoid+objects"``, the sum of the ``"sigmoid"`` and
``"softmax-objects"`` losses, and ``"nouns+objects"``, of the ``"sigmoid-nouns"`` and ``"softmax-objects"`` ones.

The head exists only during pretraining: it is checkpointed with the run (keys ``word_head.*`` in the training
snapshot) and never part of the exported CLIP.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

#: captions of the training world (seed ``world_seed``, images 0…N−1) the IDF weights are counted on
IDF_CAPTIONS = 8192
FORMS = ("sigmoid", "softmax-idf", "sigmoid-nouns", "softmax-objects", "sigmoid+objects", "nouns+objects")

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


def caption_word_loss(head: CaptionWordHead, image_features: torch.Tensor, targets: torch.Tensor,
                      mask: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """Sigmoid cross-entropy summed over the ``K`` rows (only those where ``mask``, a ``bool[K]``, is true),
    averaged over the batch (a scalar)."""
    logits = head(image_features)  # [B, K]
    if mask is not None:
        logits, targets = logits[:, mask], targets[:, mask]  # [B, K'] the masked rows only
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / len(logits)


@functools.lru_cache(maxsize=1)
def clip_tokenizer():
    """The real CLIP BPE tokenizer (:func:`vlprompt.backbones.clip_bpe.clip_bpe_tokenizer`), built once per process:
    each build reads its vocabulary file."""
    from vlprompt.backbones.clip_bpe import clip_bpe_tokenizer

    return clip_bpe_tokenizer()


def word_token_ids(words: Iterable[str]) -> list[list[int]]:
    """The CLIP BPE ids of each of ``words`` (no SOS/EOS), in order."""
    tok = clip_tokenizer()
    return [tok.encode(w) for w in words]


def noun_mask(world_module, row_ids: torch.Tensor) -> torch.Tensor:
    """``bool[K]``: the rows (token ids ``row_ids``, ``[K]``) that belong to a word of ``world_module.CAPTION_NOUNS``
    (every BPE token of it)."""
    ids = sorted({t for word in word_token_ids(world_module.CAPTION_NOUNS) for t in word})
    return torch.isin(row_ids, torch.tensor(ids, dtype=row_ids.dtype))


def object_mask(world_module, row_ids: torch.Tensor) -> torch.Tensor:
    """``bool[K]``: the rows of the first BPE token of each of ``world_module.CAPTION_OBJECTS`` (one row per object
    noun; raises if two share a first token)."""
    first = [ids[0] for ids in word_token_ids(world_module.CAPTION_OBJECTS)]
    if len(set(first)) != len(first):
        raise ValueError(f"CAPTION_OBJECTS {world_module.CAPTION_OBJECTS}: two object nouns share a first BPE token")
    return torch.isin(row_ids, torch.tensor(first, dtype=row_ids.dtype))


def softmax_objects_loss(head: CaptionWordHead, image_features: torch.Tensor, targets: torch.Tensor,
                         mask: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """Cross-entropy of a softmax over the object rows (``mask``, ``bool[K]``) against the caption's object nouns
    (their multi-hot ``targets`` normalised: ``[1]`` or ``[½, ½]``), averaged over the captions that name one."""
    w = targets[:, mask]  # [B, O]
    named = w.sum(-1) > 0  # [B]
    w = w[named] / w[named].sum(-1, keepdim=True)
    logp = F.log_softmax(head(image_features[named])[:, mask], dim=-1)  # [B', O]
    return -(w * logp).sum(-1).mean()


#: The "<base>+objects" forms: the base form's loss plus ``object_weight`` × the object noun's softmax
#: (:func:`softmax_objects_loss`).
PLUS_OBJECTS = {"sigmoid+objects": "sigmoid", "nouns+objects": "sigmoid-nouns"}


def row_weights(form: str, world_module, seed: int, row_ids: torch.Tensor, rows_of):
    """What form ``form`` needs besides the targets: the IDF weights (``"softmax-idf"``, ``float[K]``), the noun or
    object mask (``"sigmoid-nouns"``, ``"softmax-objects"``: ``bool[K]``), nothing (``"sigmoid"``: ``None``), or for
    a ``"…+objects"`` form (:data:`PLUS_OBJECTS`) the pair ``(its base form's, the object mask)``; ``rows_of(ids) ->
    rows`` maps token ids to row indices, ``row_ids`` (``[K]``) is the inverse."""
    if form in PLUS_OBJECTS:
        return (row_weights(PLUS_OBJECTS[form], world_module, seed, row_ids, rows_of),
                object_mask(world_module, row_ids))  # fmt: skip
    if form == "softmax-idf":
        return idf_weights(world_module, seed, rows_of, len(row_ids))
    if form == "softmax-objects":
        return object_mask(world_module, row_ids)
    return noun_mask(world_module, row_ids) if form == "sigmoid-nouns" else None


def word_loss(form: str, head: CaptionWordHead, image_features: torch.Tensor, targets: torch.Tensor,
              weights, object_weight: float = 1.0) -> torch.Tensor:  # fmt: skip
    """The caption-word loss of form ``form`` (``weights`` from :func:`row_weights`; ``object_weight``: the object
    term's weight in the ``"…+objects"`` forms), a scalar."""
    if form in PLUS_OBJECTS:
        base, objects = weights
        return word_loss(PLUS_OBJECTS[form], head, image_features, targets, base) + object_weight * (
            softmax_objects_loss(head, image_features, targets, objects))
    if form == "softmax-idf":
        return softmax_idf_loss(head, image_features, targets, weights)
    if form == "softmax-objects":
        return softmax_objects_loss(head, image_features, targets, weights)
    return caption_word_loss(head, image_features, targets, weights)


def idf_weights(world_module, seed: int, rows_of, num_rows: int) -> torch.Tensor:
    """``float[K]``: ``log(N / (1 + df_k))`` clamped at 0, over the first :data:`IDF_CAPTIONS` captions of world
    ``seed`` (``df_k``: captions holding row ``k``); ``rows_of(ids) -> rows`` maps token ids to row indices."""
    from open_clip import tokenize

    df = torch.zeros(num_rows)
    for start in range(0, IDF_CAPTIONS, 1024):
        ids = tokenize(world_module.generate(seed, start, 1024).captions)  # [1024, 77]
        df += caption_word_targets(ids, rows_of(ids), num_rows).sum(0)
    return torch.log(IDF_CAPTIONS / (1.0 + df)).clamp_(min=0.0)


def softmax_idf_loss(head: CaptionWordHead, image_features: torch.Tensor, targets: torch.Tensor,
                     idf: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """SuperClass's loss: cross-entropy of ``softmax(head(x))`` against the caption's IDF-weighted, normalised
    multi-hot ``targets`` (``[B, K]``), averaged over the batch."""
    w = targets * idf  # [B, K]
    w = w / w.sum(-1, keepdim=True).clamp_min(1e-12)
    return -(w * F.log_softmax(head(image_features), dim=-1)).sum(-1).mean()


def split_snapshot(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A training snapshot's tensors → ``(CLIP state, head state)`` (the head's without :data:`PREFIX`)."""
    clip = {k: v for k, v in state.items() if not k.startswith(PREFIX)}
    head = {k[len(PREFIX) :]: v for k, v in state.items() if k.startswith(PREFIX)}
    return clip, head
