"""Text features of hand-crafted prompts through the backbone protocol: the zero-shot classifier's class weights.

Shared by the zero-shot baseline (:mod:`vlprompt.eval.zeroshot` re-exports it) and by prompt methods that need the
frozen encoder's features of hand-crafted prompts (KgCoOp's guidance term), so that a method depends on the
backbone layer only, never on evaluation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vlprompt.backbones.base import Backbone
from vlprompt.errors import ConfigError

#: Prompts per text-encoder call (bounds memory for large label sets; the features do not depend on it).
TEXT_CHUNK = 256


@torch.no_grad()
def zero_shot_weights(backbone: Backbone, classnames: list[str], templates: list[str]) -> torch.Tensor:
    """L2-normalised class weights ``[C, E]``.

    Each template is filled with every class name (``_`` → space); per-template text features are L2-normalised,
    averaged over templates and re-normalised (the official ``ZeroshotCLIP2`` / OpenAI ensembling). With one
    template this is plain zero-shot CLIP. Prompts are encoded :data:`TEXT_CHUNK` at a time.
    """
    if not templates:
        raise ConfigError("no zero-shot templates given.")
    bad = [t for t in templates if "{}" not in t]
    if bad:
        raise ConfigError(f"template {bad[0]!r} has no '{{}}' placeholder for the class name, e.g. 'a photo of a {{}}.'")
    names = [c.replace("_", " ") for c in classnames]
    acc = None
    for t in templates:
        texts = [t.format(n) for n in names]
        feats = torch.cat([backbone.encode_text(texts[i : i + TEXT_CHUNK]) for i in range(0, len(texts), TEXT_CHUNK)])
        feats = F.normalize(feats.float(), dim=-1)  # (C, E)
        acc = feats if acc is None else acc + feats
    return F.normalize(acc / len(templates), dim=-1)


__all__ = ["TEXT_CHUNK", "zero_shot_weights"]
