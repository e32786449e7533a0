"""KgCoOp: knowledge-guided context optimisation (Yao, Zhang, Xu, "Visual-Language Prompt Tuning with
Knowledge-guided Context Optimization", CVPR 2023, arXiv 2303.13283; official code ``htyao89/KgCoOp``,
``trainers/kgcoop.py``).

CoOp plus a term that keeps each class's learned text feature close to its hand-crafted one:
``loss = CE + λ · (1 − mean_i cos(w_i, w_i^clip))``, where ``w_i`` is the learned prompt's text feature of class *i*
and ``w_i^clip`` the frozen text encoder's feature of the hand-crafted prompt (KgCoOp's template for the dataset, e.g.
"a photo of a {}."), computed once. λ = 8 (``TRAINER.COOP.W 8.0`` in every official script; ``train.py``'s own
default 1.0 is never used).

Official recipe (``KgCoOp:KgCoOp/configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml``, run by every script in
``KgCoOp/scripts/``): batch 128, 100 epochs for every shot count and dataset, SGD 0.002 with Dassl's momentum 0.9
and weight decay 5e-4, M = 4 from "a photo of a", λ = 8 (:attr:`KgCoOp.recipe`, :class:`KgCoOpConfig`; resolved by
:func:`vlprompt.engine.recipe.resolve_train_config`). The hand-crafted prompts are KgCoOp's own ``CUSTOM_TEMPLATES``
(:data:`KGCOOP_TEMPLATES`; DTD "a photo of a {}, a type of texture."), not CoOp's zero-shot
ones. Only ``ctx`` is trained (the official trainer turns off gradients for every parameter whose name lacks
"ctx", ``trainers/kgcoop.py`` l.268–273).

Differences from the official code: the hand-crafted features are computed with the run's own backbone, in its
precision (the official code loads a second, fp16 copy of CLIP for them); a dataset that is not an official
benchmark uses its own template (or the ``template`` option).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vlprompt.backbones.base import Backbone
from vlprompt.backbones.text import zero_shot_weights
from vlprompt.errors import ConfigError
from vlprompt.prompts.base import register_prompt_learner
from vlprompt.prompts.coop import CoOp, CoOpConfig
from vlprompt.template import CUSTOM_TEMPLATES, check_template

_logger = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "a photo of a {}."

# KgCoOp's own ``CUSTOM_TEMPLATES`` (``KgCoOp:KgCoOp/trainers/kgcoop.py`` l.37–54): its hand-crafted prompts for
# the guidance term. They equal CoOp's (:data:`vlprompt.template.CUSTOM_TEMPLATES`) except DTD ("a photo of a {},
# a type of texture." instead of "{} texture.").
KGCOOP_TEMPLATES: dict[str, str] = {**CUSTOM_TEMPLATES, "dtd": "a photo of a {}, a type of texture."}


@dataclass(frozen=True)
class KgCoOpConfig(CoOpConfig):
    """KgCoOp options: CoOp's (with the official KgCoOp defaults M = 4 from "a photo of a") plus the guidance term.

    Attributes:
        kg_weight: λ, the weight of ``1 − mean cos(learned, hand-crafted)`` (8, as officially); 0 gives CoOp.
        template: the hand-crafted prompt with ``{}`` for the class name; ``None``: KgCoOp's template for the
            dataset when trained with ``train_run``/``vlprompt train`` (``KGCOOP_TEMPLATES`` for the official
            benchmarks, the dataset's own otherwise), else "a photo of a {}.".
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
    #: ``KgCoOp:KgCoOp/configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml``: BATCH_SIZE 128, MAX_EPOCH 100.
    recipe = {"epochs": 100, "batch_size": 128}
    #: The official benchmarks' hand-crafted prompts of the guidance term (``trainers/kgcoop.py`` CUSTOM_TEMPLATES).
    dataset_templates = KGCOOP_TEMPLATES

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
