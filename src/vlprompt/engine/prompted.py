"""Evaluation through a prompted image tower (issue 15): the one path by which every evaluation of a learner that
``prompts_image`` (VPT-deep, IVLP, MaPLe, PromptSRC) encodes its images — the evaluation after training, ``eval``
of a saved run (base-to-new's new classes, DG and cross-dataset targets), :class:`~vlprompt.api.PromptClassifier`.

Such features can never come from the feature cache: they depend on the learned vision tokens. The images are
encoded ``batch_size`` at a time (a DataLoader over the records, a progress bar), each batch through
:meth:`~vlprompt.engine.model.PromptModel.encode_images` with the deep prompts taken from the learner *once* for the
whole evaluation (MaPLe derives them through its coupling layers: computed once, not per batch); the class text
features, with the deep text tokens, are computed once by the caller (:meth:`PromptModel.class_text_features`).
Over several ranks each encodes its contiguous shard of the records and the rows are gathered in record order, as
:func:`vlprompt.engine.pipeline.extract_features` does for the frozen tower.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch

from vlprompt.data.records import Sample
from vlprompt.engine.execution import Execution
from vlprompt.engine.model import PromptModel
from vlprompt.engine.pipeline import extract_features  # the ranks' shards and their gather, as for frozen features
from vlprompt.eval.metrics import classification_metrics

_logger = logging.getLogger(__name__)


@torch.no_grad()
def prompted_image_features(
    model: PromptModel,
    records: Sequence[Sample],
    transform: Callable,
    *,
    batch_size: int = 100,
    num_workers: int = 0,
    precision: str = "fp32",
    progress: bool = False,
    desc: str = "prompted image features",
    execution: Execution | None = None,
) -> torch.Tensor:
    """L2-normalised fp32 image features ``[N, E]`` (CPU, record order) of ``records`` through ``model``'s image
    tower with the learner's vision prompts (``transform``: deterministic, the test transform for evaluation).

    ``execution``: the run's (its ranks share the records); ``None``: the current one.
    """
    deep = model.deep_prompts()  # once per evaluation: every batch sees the same tokens

    def encode(images: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) → (B, E), normalised
        return model.encode_images(images, deep)

    return extract_features(model.backbone, list(records), transform, execution=execution, batch_size=batch_size,
                            num_workers=num_workers, precision=precision, progress=progress, desc=desc,
                            encode=encode)  # (N, E)


@torch.no_grad()
def prompted_logits(model: PromptModel, records: Sequence[Sample], transform: Callable,
                    text_features: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
    """``[N, C]`` logits of ``records`` through the prompted image tower (:func:`prompted_image_features`, same
    ``kwargs``); ``text_features``: the model's ``[C, E]`` class text features when already computed (``None``:
    computed here, once)."""
    feats = prompted_image_features(model, records, transform, **kwargs)  # (N, E), normalised
    return model.predict_logits(feats.to(model.backbone.device), text_features)  # (N, C)


def prompted_metrics(model: PromptModel, records: Sequence[Sample], transform: Callable,
                     text_features: torch.Tensor | None = None, **kwargs) -> tuple[dict, torch.Tensor]:
    """``(metrics, logits [N, C])`` of ``model`` on ``records`` through the prompted image tower
    (:func:`prompted_logits`, same arguments)."""
    logits = prompted_logits(model, records, transform, text_features, **kwargs)
    labels = torch.tensor([r.label for r in records], dtype=torch.long)
    return classification_metrics(logits.argmax(-1).cpu(), labels, logits.shape[1]), logits


__all__ = ["prompted_image_features", "prompted_logits", "prompted_metrics"]
