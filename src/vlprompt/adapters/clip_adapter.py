"""CLIP-Adapter (Gao et al., IJCV 2024): a residual bottleneck MLP on the image feature, trained on cached features.

Exact to the official trainer ``gaopengcuhk/CLIP-Adapter:clip_adapter.py`` (commit ``08d07f8``):

- ``Adapter(c_in, reduction=4)``: ``Linear(c_in, c_in // 4, bias=False) → ReLU → Linear(c_in // 4, c_in,
  bias=False) → ReLU`` (``nn.Linear``'s default initialisation); the official code fixes ``c_in = 1024`` (RN50),
  here it is the backbone's feature dimension ``E``. The parameter names (``fc.0.weight``, ``fc.2.weight``) are the
  official checkpoint's;
- ``CustomCLIP.forward``: the MLP reads the **unnormalised** image feature ``f``; ``f' = 0.2 · adapter(f) + 0.8 · f``;
  then ``f'`` and the text features are L2-normalised and ``logits = exp(logit_scale) · f' @ t.T``;
- loss: ``F.cross_entropy(logits, label)``; only the adapter is optimised (``build_optimizer(self.model.adapter)``).

The MLP has no biases and ReLU is positively homogeneous, so ``f'`` scales with ``‖f‖`` and the logits (and their
gradients) do not depend on the image feature's norm: feeding it normalised would give the same numbers.

The repository has no config; its README says to run it with CoOp's commands, i.e. CoOp's
``configs/trainers/CoOp/rn50.yaml`` (``KaiyangZhou/CoOp``): SGD, lr 0.002, batch 32, 200 epochs, cosine with one
constant warm-up epoch at 1e-5, and Dassl's defaults (momentum 0.9, weight decay 5e-4) — :mod:`.training`.

Deviation (documented in :mod:`.training`): the official trainer re-encodes a fresh random crop of every training
image each epoch; here epoch ``e`` uses cached augmented view ``(e − 1) mod V`` (``recipe["num_views"]`` = 10 by
default: Tip-Adapter's official view count, so the two methods share the cached views; 200 distinct views would
cost 200 image-encoder passes per image). The adapter acts on the image side only, so it classifies any class names
given their zero-shot text features (``new_classes``: base-to-new).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.adapters.base import AdapterData, FeatureAdapter, register_adapter
from vlprompt.adapters.training import DasslOptim, train_on_features
from vlprompt.errors import ArtifactError, ConfigError


@dataclass(frozen=True)
class ClipAdapterConfig:
    """CLIP-Adapter's settings; the defaults are the official ones (module docstring)."""

    reduction: int = 4
    ratio: float = 0.2
    epochs: int = 200
    lr: float = 0.002
    batch_size: int = 32
    weight_decay: float = 5e-4
    momentum: float = 0.9
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5

    def __post_init__(self) -> None:
        if int(self.reduction) != self.reduction or self.reduction < 1:
            raise ConfigError(f"reduction must be a positive integer (official 4), got {self.reduction!r}.")
        if not 0.0 <= self.ratio <= 1.0:
            raise ConfigError(f"ratio (the residual ratio) must be in [0, 1] (official 0.2), got {self.ratio!r}.")
        self.optim()  # checks epochs, batch size, lr

    def optim(self) -> DasslOptim:
        """The Dassl optimiser/schedule settings."""
        return DasslOptim("sgd", lr=self.lr, epochs=self.epochs, batch_size=self.batch_size,
                          weight_decay=self.weight_decay, momentum=self.momentum, warmup_epochs=self.warmup_epochs,
                          warmup_lr=self.warmup_lr)


def bottleneck(dim: int, reduction: int) -> nn.Sequential:
    """The official ``Adapter.fc``: ``[*, E] → [*, E // reduction] → [*, E]``, ReLU after each bias-free layer."""
    hidden = dim // reduction
    if hidden < 1:
        raise ConfigError(f"reduction {reduction} leaves no hidden units for feature dimension {dim}; "
                          f"use a reduction ≤ {dim}.")
    return nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.ReLU(inplace=True),
                         nn.Linear(hidden, dim, bias=False), nn.ReLU(inplace=True))


@register_adapter
class ClipAdapter(FeatureAdapter):
    """CLIP-Adapter on cached features (module docstring: what is official, what deviates)."""

    method = "clip-adapter"
    config_class = ClipAdapterConfig
    display_name = "CLIP-Adapter"
    uses_views = True
    new_classes = True
    recipe = {
        "optimizer": "sgd", "lr": 0.002, "momentum": 0.9, "weight_decay": 5e-4, "epochs": 200, "batch_size": 32,
        "lr_scheduler": "cosine", "warmup_epochs": 1, "warmup_type": "constant", "warmup_lr": 1e-5,
        "reduction": 4, "ratio": 0.2, "num_views": 10,
        "source": "gaopengcuhk/CLIP-Adapter:clip_adapter.py; KaiyangZhou/CoOp:configs/trainers/CoOp/rn50.yaml",
    }

    def __init__(self, config: ClipAdapterConfig | None = None):
        super().__init__(config or ClipAdapterConfig())
        self.fc: nn.Sequential | None = None
        self.logit_scale = 100.0
        self.register_buffer("text", torch.empty(0), persistent=False)  # [C, E] L2-normalised, not in the artifact

    def _build(self, dim: int, seed: int | None, text: torch.Tensor, logit_scale: float) -> None:
        # nn.Linear's default init, drawn from ``seed`` without touching the global RNG (None: values to be loaded).
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(int(seed))
            self.fc = bottleneck(dim, int(self.config.reduction)).to(text.device)
        self.text = text.float()
        self.logit_scale = float(logit_scale)

    def prepare(self, num_classes: int, feature_dim: int, text: torch.Tensor, logit_scale: float,
                shapes: dict[str, list[int]]) -> None:
        """Rebuild the MLP of the saved shapes (``fc.0.weight`` ``[E // r, E]``) for ``load_state_dict``."""
        expected = [feature_dim // int(self.config.reduction), feature_dim]
        if list(shapes.get("fc.0.weight", [])) != expected:
            raise ArtifactError(f"CLIP-Adapter artifact: fc.0.weight has shape {shapes.get('fc.0.weight')}, expected "
                                f"{expected} (feature dim {feature_dim}, reduction {self.config.reduction}); was it "
                                "saved with another backbone or reduction?")
        self._build(feature_dim, None, text, logit_scale)

    def fit(self, data: AdapterData) -> dict[str, Any]:
        """Build the MLP (seeded official init) and train it with the official SGD recipe on the cached views."""
        self._build(int(data.train.shape[1]), data.seed, data.text, data.logit_scale)
        assert self.fc is not None
        views = None if data.views is None else data.views.float()
        train = AdapterData(data.train.float(), data.train_labels, self.text, self.logit_scale, views=views,
                            seed=data.seed)

        def loss_fn(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(self(features), labels)

        self.train()
        run = train_on_features(list(self.fc.parameters()), loss_fn, train, self.config.optim())
        self.eval()
        self.record = {"method": self.method, **run, "reduction": self.config.reduction,
                       "ratio": self.config.ratio, "lr": self.config.lr}
        return self.record

    def forward(self, image_features: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, C]`` logits; ``text`` ``[C', E]`` (L2-normalised) classifies among other class names."""
        if self.fc is None:
            raise ArtifactError("CLIP-Adapter is not fitted: call fit(data), or prepare(...) and load_state_dict.")
        f = image_features.float()  # (B, E) unnormalised, as the official MLP reads it
        f = self.config.ratio * self.fc(f) + (1.0 - self.config.ratio) * f
        f = F.normalize(f, dim=-1)
        t = self.text if text is None else F.normalize(text.float(), dim=-1)  # (C, E)
        return self.logit_scale * f @ t.t()


__all__ = ["ClipAdapter", "ClipAdapterConfig", "bottleneck"]
