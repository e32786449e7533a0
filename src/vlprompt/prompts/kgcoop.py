"""KgCoOp: knowledge-guided context optimisation (Yao, Zhang, Xu, "Visual-Language Prompt Tuning with
Knowledge-guided Context Optimization", CVPR 2023, arXiv 2303.13283; official code ``htyao89/KgCoOp``,
``trainers/kgcoop.py``).

CoOp plus a term that keeps each class's learned text feature close to its hand-crafted one:
``loss = CE + λ · (1 − mean_i cos(w_i, w_i^clip))``, where ``w_i`` is the learned prompt's text feature of class *i*
and ``w_i^clip`` the frozen text encoder's feature of the hand-crafted prompt (the dataset's template, e.g.
"a photo of a {}."), computed once. λ = 8 (the official scripts' ``TRAINER.COOP.W``).

Differences from the official code: the hand-crafted features are computed with the same backbone (the official
code loads a second copy of CLIP for them); the template is the dataset's own (as officially, where
``CUSTOM_TEMPLATES`` maps each dataset to the CoOp zero-shot template), or the ``template`` option.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vlprompt.backbones.base import Backbone
from vlprompt.data.templates import check_template
from vlprompt.errors import ConfigError
from vlprompt.eval.zeroshot import zero_shot_weights
from vlprompt.prompts.base import register_prompt_learner
from vlprompt.prompts.coop import CoOp, CoOpConfig

_logger = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "a photo of a {}."


@dataclass(frozen=True)
class KgCoOpConfig(CoOpConfig):
    """KgCoOp options: CoOp's (with the official KgCoOp defaults M = 4 from "a photo of a") plus the guidance term.

    Attributes:
        kg_weight: λ, the weight of ``1 − mean cos(learned, hand-crafted)`` (8, as officially); 0 gives CoOp.
        template: the hand-crafted prompt with ``{}`` for the class name; ``None``: the dataset's template when
            trained with ``vlprompt train``, else "a photo of a {}.".
    """

    n_ctx: int = 4
    ctx_init: str | None = "a photo of a"
    kg_weight: float = 8.0
    template: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.kg_weight >= 0:
            raise ConfigError(f"kg_weight (λ) must be ≥ 0, got {self.kg_weight}.")
        if self.template is not None:
            check_template(self.template, "KgCoOp template")


@register_prompt_learner
class KgCoOp(CoOp):
    """KgCoOp prompt learner: CoOp whose :meth:`regularizer` pulls the learned class features towards the
    hand-crafted ones.

    Args:
        backbone: the frozen backbone (also encodes the hand-crafted prompts, once).
        classnames: class names; ``_`` becomes a space.
        config: :class:`KgCoOpConfig`.

    Buffers: ``hand_features`` ``(C, E)``, L2-normalised, not saved (rebuilt from the class names; only computed
    when ``kg_weight > 0``).
    """

    method = "kgcoop"
    config_class = KgCoOpConfig
    display_name = "KgCoOp"

    def set_classnames(self, backbone: Backbone, classnames: list[str]) -> None:  # noqa: D102
        super().set_classnames(backbone, classnames)
        hand = None
        if self.config.kg_weight > 0:  # the zero-shot classifier of the template: (C, E), L2-normalised
            hand = zero_shot_weights(backbone, classnames, [self.config.template or DEFAULT_TEMPLATE])
        self.register_buffer("hand_features", hand, persistent=False)

    def regularizer(self, text_features: torch.Tensor) -> torch.Tensor | None:
        """``λ · (1 − mean_i cos(w_i, w_i^clip))`` for L2-normalised learned features ``(C, E)``; ``None`` at λ = 0."""
        if self.config.kg_weight == 0:
            return None
        hand = self.hand_features.to(text_features.device)  # (C, E)
        cos = (F.normalize(text_features.float(), dim=-1) * hand).sum(-1)  # (C,)
        return self.config.kg_weight * (1.0 - cos.mean())
