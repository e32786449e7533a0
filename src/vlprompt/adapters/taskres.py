"""TaskRes (Yu et al., CVPR 2023): a learned, scaled residual on the zero-shot text classifier.

Exact to the official trainer ``geekyutao/TaskRes:trainers/taskres.py`` (commit ``5195359``), "TaskRes-Text":

- ``TaskResLearner``: buffer ``base_text_features`` ``[C, E]`` (the **unnormalised** text features of the
  dataset's template — ImageNet: the mean over ``IMAGENET_TEMPLATES_SELECT`` + its template), parameter
  ``text_feature_residuals`` ``[C, E]`` initialised to zeros; ``forward() = base + α · residuals``;
- ``CustomCLIP.forward``: image and (residual-added) text features L2-normalised, ``logits = exp(logit_scale) ·
  img @ t.T``; loss ``F.cross_entropy``; only the residuals are optimised (``build_optimizer(prompt_learner)``).

Recipe (``configs/trainers/TaskRes/adam_lr2e-3_B256_ep{100,200}.yaml``, ``adam_lr2e-4_B256_*`` for ImageNet;
``train_regular.sh``): Adam, lr 2e-3 (ImageNet 2e-4), batch 256, 100 epochs for 1–4 shots and 200 for 8–16,
cosine with one constant warm-up epoch at 1e-5, Dassl's weight decay 5e-4 and betas (0.9, 0.999); α
(``RESIDUAL_SCALE``) 0.5, 1.0 on Oxford Flowers — :func:`official_config`. TaskRes trains on the Dassl augmentation
of the training images; here, as CLIP-Adapter, epoch ``e`` uses cached view ``(e − 1) mod V`` (:mod:`.training`).

What is not reproduced:

- the *enhanced base* (``ENHANCED_BASE``, ``train_enhance.sh``): the authors' re-trained text projection, downloaded
  and loaded into the text encoder; it needs the text tower and weights that are not on cached features, so
  ``enhanced_base`` other than ``"none"`` is refused;
- the base is the raw text feature when :attr:`AdapterData.text_unnormalised` is given (exact); without
  it the L2-normalised classifier is the base (identical logits at init, but the residual's relative step is larger
  by the text-feature norm): recorded as ``record["base"]``;
- the official ``PREC fp16`` default computes the base in fp16 before the model is cast to fp32; here it stays fp32.

The residual is per fitted class, so TaskRes does not classify new class names (``new_classes`` False).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.adapters.base import AdapterData, FeatureAdapter, register_adapter
from vlprompt.adapters.training import DasslOptim, train_on_features
from vlprompt.errors import ArtifactError, ConfigError

_logger = logging.getLogger(__name__)

_NAMES = ("base_text_features", "text_feature_residuals")


def official_config(dataset: str | None, shots: int | None) -> dict[str, Any]:
    """The official per-dataset settings (``train_regular.sh``): ``alpha``, ``lr`` and ``epochs``."""
    return {"alpha": 1.0 if dataset == "oxford_flowers" else 0.5,
            "lr": 2e-4 if dataset == "imagenet" else 2e-3,
            "epochs": 100 if shots is not None and shots <= 4 else 200}


@dataclass(frozen=True)
class TaskResConfig:
    """TaskRes's settings; the defaults are the official ones for a dataset other than ImageNet and Flowers.

    ``epochs`` ``None``: 100 for ≤ 4 shots per class, 200 otherwise (counted on the training labels)."""

    alpha: float = 0.5
    lr: float = 2e-3
    epochs: int | None = None
    batch_size: int = 256
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5
    enhanced_base: str = "none"

    def __post_init__(self) -> None:
        if self.enhanced_base != "none":
            raise ConfigError(f"TaskRes enhanced_base={self.enhanced_base!r} is not available: the enhanced base is "
                              "the authors' re-trained text projection applied inside the text encoder, which a "
                              "feature-space adapter never runs; use enhanced_base='none' (the regular base).")
        if not self.alpha >= 0:
            raise ConfigError(f"alpha (TaskRes RESIDUAL_SCALE) must be ≥ 0 (official 0.5), got {self.alpha!r}.")
        self.optim(1 if self.epochs is None else self.epochs)  # checks epochs, batch size, lr

    def optim(self, epochs: int) -> DasslOptim:
        """The Dassl optimiser/schedule settings for ``epochs`` epochs."""
        return DasslOptim("adam", lr=self.lr, epochs=epochs, batch_size=self.batch_size,
                          weight_decay=self.weight_decay, warmup_epochs=self.warmup_epochs, warmup_lr=self.warmup_lr)


@register_adapter
class TaskRes(FeatureAdapter):
    """TaskRes on cached features (module docstring: what is official, what deviates)."""

    method = "taskres"
    config_class = TaskResConfig
    display_name = "TaskRes"
    uses_views = True
    recipe = {
        "optimizer": "adam", "lr": 2e-3, "lr_imagenet": 2e-4, "weight_decay": 5e-4, "betas": [0.9, 0.999],
        "epochs": {"1-4 shots": 100, "8-16 shots": 200}, "batch_size": 256, "lr_scheduler": "cosine",
        "warmup_epochs": 1, "warmup_type": "constant", "warmup_lr": 1e-5, "alpha": 0.5, "alpha_oxford_flowers": 1.0,
        "num_views": 10, "enhanced_base": "none",
        "source": "geekyutao/TaskRes:trainers/taskres.py, configs/trainers/TaskRes/, train_regular.sh",
    }

    @classmethod
    def dataset_config(cls, dataset: str | None, shots: int | None) -> dict[str, Any]:
        """The official per-dataset/per-shot ``alpha``, ``lr`` and ``epochs`` (:func:`official_config`)."""
        return official_config(dataset, shots)

    def __init__(self, config: TaskResConfig | None = None):
        super().__init__(config or TaskResConfig())
        self.logit_scale = 100.0
        self.register_buffer("base_text_features", torch.empty(0))  # [C, E], in the artifact (as the official)
        self.text_feature_residuals = nn.Parameter(torch.empty(0))  # [C, E]

    def _build(self, base: torch.Tensor, logit_scale: float) -> None:
        self.base_text_features = base.float().clone()
        self.text_feature_residuals = nn.Parameter(torch.zeros_like(self.base_text_features))
        self.logit_scale = float(logit_scale)

    def prepare(self, num_classes: int, feature_dim: int, text: torch.Tensor, logit_scale: float,
                shapes: dict[str, list[int]]) -> None:
        """Rebuild ``base_text_features`` and ``text_feature_residuals`` ``[C, E]`` for ``load_state_dict``."""
        for name in _NAMES:
            if list(shapes.get(name, [])) != [num_classes, feature_dim]:
                raise ArtifactError(f"TaskRes artifact: {name} has shape {shapes.get(name)}, expected "
                                    f"{[num_classes, feature_dim]} ({num_classes} classes, feature dim "
                                    f"{feature_dim}); TaskRes only classifies the classes it was fitted on.")
        self._build(torch.zeros(num_classes, feature_dim, device=text.device), logit_scale)

    def fit(self, data: AdapterData) -> dict[str, Any]:
        """Zero residuals on the base classifier, trained with the official Adam recipe on the cached views."""
        text = data.text.float()  # (C, E) L2-normalised
        if data.text_unnormalised is not None:
            base, base_kind = data.text_unnormalised.float().to(text.device).clone(), "raw"  # the official base
        else:
            base, base_kind = text, "normalised"
            _logger.warning("TaskRes: no text_unnormalised given, the residual is added to the L2-normalised classifier "
                            "(the official base is the unnormalised text features).")
        self._build(base, data.logit_scale)
        shots = int(torch.bincount(data.train_labels).max()) if data.train_labels.numel() else 0
        epochs = self.config.epochs or official_config(None, shots)["epochs"]
        views = None if data.views is None else data.views.float()
        train = AdapterData(data.train.float(), data.train_labels, text, data.logit_scale, views=views,
                            seed=data.seed)

        def loss_fn(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(self(features), labels)

        run = train_on_features([self.text_feature_residuals], loss_fn, train, self.config.optim(epochs))
        self.record = {"method": self.method, **run, "alpha": self.config.alpha, "lr": self.config.lr,
                       "shots": shots, "base": base_kind,
                       "residual_norm": float(self.text_feature_residuals.detach().norm())}
        return self.record

    def classifier(self) -> torch.Tensor:
        """``[C, E]`` L2-normalised adapted classifier ``normalize(base + α · residuals)``."""
        return F.normalize(self.base_text_features + self.config.alpha * self.text_feature_residuals, dim=-1)

    def forward(self, image_features: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, C]`` logits of the fitted classes (``text`` must be ``None``: the residual is per class)."""
        if text is not None:
            raise ConfigError("TaskRes cannot classify other class names: its residual is learned per fitted class "
                              "(new_classes False); evaluate it on the classes it was fitted on.")
        if self.base_text_features.numel() == 0:
            raise ArtifactError("TaskRes is not fitted: call fit(data), or prepare(...) and load_state_dict.")
        img = F.normalize(image_features.float(), dim=-1)  # (B, E)
        return self.logit_scale * img @ self.classifier().t()


__all__ = ["TaskRes", "TaskResConfig", "official_config"]
