"""CLAP and ZS-LP (Silva-Rodríguez et al., CVPR 2024): a zero-shot-initialised linear probe on cached features,
with CLAP's class-adaptive penalty holding each class prototype near its zero-shot text feature.

Method name ``clap``; option ``constraint="none"`` is the paper's ZS-LP (same trainer, no penalty).

Official code: ``jusiro/CLAP`` (commit ``dbdf4095``), ``trainers/adapters.py`` (``AdapterMethod``,
``CustomCLIP.forward_lp``, ``TrainerXCostume.run_epoch``, ``ADAPTER.train`` / ``forward_backward``), its recipe
``configs/trainers/SGD_lr1e-1_B256_ep300.yaml`` with ``train.py``'s defaults (``INIT ZS``, ``CONSTRAINT l2``), and
Dassl's optimiser and schedule (``KaiyangZhou/Dassl.pytorch``: ``dassl/optim/optimizer.py``, ``lr_scheduler.py``,
``dassl/data/data_manager.py``). What it does, done the same way here:

- **Training features** (``ADAPTER.train``): ``extract_features("train", reps=epochs_aumentation=20,
  transforms=True)``: 20 passes of the few-shot images through the training augmentation (Dassl
  ``random_resized_crop`` + ``random_flip``), unnormalised, concatenated pass after pass: ``[20·N, E]``. Here
  ``data.views`` ``[V, N, E]`` reshaped view-major to ``[V·N, E]`` (recipe ``num_views`` 20); the test-transform
  features are not used (nor are they officially).
- **Prototypes** (``AdapterMethod.__init__``, ``ZS`` init): ``base_text_features`` — the text encoder's output
  *before* normalisation, averaged over the templates — cloned into the learned ``prototypes`` ``[C, E]``. Here
  ``data.text_unnormalised``; without it the normalised ``data.text`` (a deviation that changes the effective step
  size, ∝ 1/‖t‖², logged and recorded as ``text_init``).
- **Logits** (``forward_lp``): ``(f/‖f‖) @ (p/‖p‖)ᵀ · exp(logit_scale)`` with CLIP's own logit scale
  (``clip_model.logit_scale``; 100 for OpenAI's weights): ``data.logit_scale``.
- **Multipliers** (``init_lagrangian_multipliers``, constraint ``l2``): for class ``c``, the mean over the training
  features of class ``c`` of the zero-shot softmax probability of ``c`` (``diag(softmax(z)ᵀ Y) / Y.sum(0)``). They
  stay fixed: ``outer_step`` (the augmented-Lagrangian update, ``phr``) runs only for an ``adaptative`` constraint,
  not for the published ``l2``.
- **Loss** (``forward_backward``, ``zero_shot_constraint``): ``CE + mean_c α_c ‖p_c − t_c‖²`` (unnormalised space).
- **Loop** (``run_epoch``): every epoch shuffles all ``V·N`` features and runs ``len(train_loader_x)`` batches of
  256 — the batch count of the N *images* (Dassl drops the last incomplete batch when ``N ≥ 256``, else one batch),
  so an epoch sees only the first ``⌊N/256⌋·256`` shuffled features (all of them when ``V·N ≤ 256``).
- **Optimiser** (Dassl ``build_optimizer``/``build_lr_scheduler``): SGD, lr 0.1, momentum 0.9, no dampening, no
  Nesterov, weight decay 0; 300 epochs; per-epoch lr 1e-5 in epoch 0 (``WARMUP_EPOCH 1``, constant), then cosine
  over 300 epochs starting again from 0.1: epoch ``e ≥ 1`` uses ``0.05 · (1 + cos(π (e − 1) / 300))``.

Deviations: batch order from ``torch.randperm`` on a generator seeded with ``data.seed`` (official:
``np.random.rand(n).argsort()`` under Dassl's seed); everything fp32 (officially the text features come from the
fp16 CLIP, ``PREC fp16``, then are cast). Nothing is selected on validation.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch

from vlprompt.adapters.base import AdapterData, FeatureAdapter, register_adapter
from vlprompt.adapters.common import refuse_new_classes, require_fitted, training_views
from vlprompt.errors import ConfigError, DataError, TrainingDivergedError

log = logging.getLogger(__name__)

CONSTRAINTS = ("l2", "none")
#: Rows per matmul when computing the zero-shot probabilities of all V·N training features (bounds memory).
ZS_CHUNK = 8192


@dataclass
class ClapConfig:
    """CLAP's options (defaults: the official recipe).

    Attributes:
        constraint: ``"l2"`` (CLAP: class-adaptive penalty) or ``"none"`` (ZS-LP).
        epochs: passes of the official loop (300).
        lr: SGD learning rate after the one warm-up epoch (0.1).
        batch_size: features per step (256).
    """

    constraint: str = "l2"
    epochs: int = 300
    lr: float = 0.1
    batch_size: int = 256

    def __post_init__(self) -> None:
        if self.constraint not in CONSTRAINTS:
            raise ConfigError(f"clap: constraint '{self.constraint}' is not one of {list(CONSTRAINTS)} "
                              "('l2': CLAP, 'none': ZS-LP).")
        if self.epochs < 0 or self.batch_size < 1 or not self.lr > 0:
            raise ConfigError(f"clap: need epochs ≥ 0, batch_size ≥ 1 and lr > 0, got epochs={self.epochs}, "
                              f"batch_size={self.batch_size}, lr={self.lr}.")


def epoch_lr(epoch: int, epochs: int, lr: float, warmup_lr: float = 1e-5) -> float:
    """Dassl's ``ConstantWarmupScheduler(CosineAnnealingLR(T_max=epochs), warmup_epoch=1, cons_lr=warmup_lr)``:
    the lr of ``epoch`` (0-based; stepped once per epoch)."""
    if epoch < 1:
        return warmup_lr
    return 0.5 * lr * (1.0 + math.cos(math.pi * (epoch - 1) / epochs))


def batches_per_epoch(num_images: int, batch_size: int) -> int:
    """``len(train_loader_x)``: Dassl's loader over the N images drops the last batch when ``N ≥ batch_size``."""
    return num_images // batch_size if num_images >= batch_size else 1


@torch.no_grad()
def class_adaptive_multipliers(features: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor,
                               logit_scale: float, num_classes: int) -> torch.Tensor:
    """``[C]`` CLAP's initial multipliers: per class, the mean zero-shot probability of the true class.

    ``features`` ``[M, E]`` unnormalised training features, ``labels`` ``[M]``, ``prototypes`` ``[C, E]`` the
    zero-shot prototypes (normalised here, as ``forward_lp``)."""
    protos = prototypes / prototypes.norm(dim=-1, keepdim=True)
    sums = torch.zeros(num_classes, dtype=torch.float64)
    for i in range(0, features.shape[0], ZS_CHUNK):
        x = features[i : i + ZS_CHUNK]
        probs = torch.softmax(x / x.norm(dim=-1, keepdim=True) @ protos.t() * logit_scale, dim=-1)  # (m, C)
        y = labels[i : i + ZS_CHUNK]
        sums.index_add_(0, y, probs.gather(1, y[:, None])[:, 0].double())
    counts = torch.bincount(labels, minlength=num_classes)
    missing = (counts == 0).nonzero().flatten().tolist()
    if missing:
        raise DataError(f"clap: class(es) {missing[:10]} have no training image; CLAP's multipliers are per-class "
                        "mean zero-shot probabilities on the training set (officially 0/0); give every class ≥ 1 shot.")
    return (sums / counts.double()).float()


@register_adapter
class Clap(FeatureAdapter):
    """CLAP / ZS-LP: learned class prototypes ``[C, E]`` started at the zero-shot text features."""

    method = "clap"
    config_class = ClapConfig
    display_name = "CLAP"
    uses_views = True
    uses_val = False
    new_classes = False
    recipe = {"epochs": 300, "lr": 0.1, "batch_size": 256, "optimizer": "sgd", "momentum": 0.9,
              "weight_decay": 0.0, "warmup_epochs": 1, "warmup_lr": 1e-5, "schedule": "cosine",
              "num_views": 20, "crop_scale_min": 0.08, "flip": True,
              "augmentation": "Dassl random_resized_crop (scale 0.08-1, bicubic 224) + random_flip",
              "constraint": "l2", "logit_scale": "CLIP's exp(logit_scale)", "source": "jusiro/CLAP@dbdf4095"}

    def __init__(self, config: ClapConfig):
        super().__init__(config)
        self.register_parameter("prototypes", None)  # (C, E), created by fit / prepare
        self.register_buffer("multipliers", None)  # (C,) the class-adaptive penalty weights α_c
        self.logit_scale = 1.0

    def _make(self, prototypes: torch.Tensor, multipliers: torch.Tensor, logit_scale: float) -> None:
        self.prototypes = torch.nn.Parameter(prototypes, requires_grad=False)  # trained by hand (_step)
        self.register_buffer("multipliers", multipliers, persistent=True)
        self.logit_scale = float(logit_scale)

    def prepare(self, num_classes: int, feature_dim: int, text: torch.Tensor, logit_scale: float,
                shapes: dict[str, list[int]]) -> None:
        """Empty ``prototypes`` ``[C, E]`` and ``multipliers`` ``[C]`` for ``load_state_dict``."""
        self._make(torch.empty(shapes.get("prototypes", [num_classes, feature_dim])),
                   torch.empty(shapes.get("multipliers", [num_classes])), logit_scale)

    def fit(self, data: AdapterData) -> dict[str, Any]:
        """The official training on ``data.views`` (never ``data.val``); returns the record."""
        cfg = self.config
        views = training_views(data, self.method)  # (V, N, E)
        n_views, n_images, dim = views.shape
        features = views.reshape(n_views * n_images, dim)  # view-major, as the official passes
        labels = data.train_labels.long().repeat(n_views)
        raw = data.text_unnormalised is not None
        base = (data.text_unnormalised if raw else data.text).float().clone()  # (C, E)
        if not raw:
            log.warning("clap: no unnormalised text features given; starting from the normalised ones (the official "
                        "code starts from the unnormalised, whose norms set the step size)")
        if cfg.constraint == "l2":
            alpha = class_adaptive_multipliers(features, labels, base, data.logit_scale, data.num_classes)
        else:
            alpha = torch.zeros(data.num_classes)
        self._make(base.clone(), alpha, data.logit_scale)
        nb = batches_per_epoch(n_images, cfg.batch_size)
        loss = self._train(features, labels, base, torch.Generator().manual_seed(int(data.seed)), nb)
        self.record = {"method": self.method, "constraint": cfg.constraint, "epochs": cfg.epochs,
                       "batches_per_epoch": nb, "steps": nb * cfg.epochs, "batch_size": cfg.batch_size,
                       "lr": cfg.lr, "views_used": n_views if data.views is not None else 0,
                       "text_init": "unnormalised" if raw else "normalised (deviation)",
                       "logit_scale": self.logit_scale,
                       "multipliers": {"mean": float(alpha.mean()), "min": float(alpha.min()),
                                       "max": float(alpha.max())},
                       "final_loss": loss}
        return self.record

    def _train(self, features: torch.Tensor, labels: torch.Tensor, base: torch.Tensor, gen: torch.Generator,
               num_batches: int) -> float | None:
        """``run_epoch`` × epochs: SGD with momentum 0.9 on ``prototypes``; returns the last batch's loss."""
        cfg = self.config
        protos = self.prototypes.data  # (C, E), updated in place
        momentum = torch.zeros_like(protos)  # SGD's momentum buffer; 0.9 · 0 + g = g: torch's first step exactly
        # the constant part of the penalty's gradient ∂/∂p_c mean_c α_c ‖p_c − t_c‖² = (2/C) α_c (p_c − t_c)
        pull = (2.0 / protos.shape[0]) * self.multipliers  # (C,)
        pull_base = pull[:, None] * base  # (C, E)
        loss_value = None
        for epoch in range(cfg.epochs):
            lr = epoch_lr(epoch, cfg.epochs, cfg.lr)
            order = torch.randperm(features.shape[0], generator=gen)  # the epoch's shuffle of all V·N features
            for b in range(num_batches):
                idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
                last = epoch == cfg.epochs - 1 and b == num_batches - 1
                loss = self._step(features[idx], labels[idx], protos, momentum, pull, pull_base,
                                  base if last else None)
                if not math.isfinite(loss):
                    raise TrainingDivergedError(f"clap: loss became {loss} at epoch {epoch}, batch {b}; check the "
                                                "cached features for NaN/inf.")
                protos.add_(momentum, alpha=-lr)
                loss_value = loss
            if (epoch + 1) % 50 == 0:
                log.debug("clap: epoch %d/%d loss %.4f", epoch + 1, cfg.epochs, loss_value)
        return loss_value

    def _step(self, x: torch.Tensor, y: torch.Tensor, protos: torch.Tensor, momentum: torch.Tensor,
              pull: torch.Tensor, pull_base: torch.Tensor, base: torch.Tensor | None) -> float:
        """One batch: the loss (with the penalty term only when ``base`` is given) and ``momentum ← 0.9 · momentum
        + ∂loss/∂protos``, formed by hand: the same maths as autograd on ``CE(s · x̂ (p/‖p‖)ᵀ) + mean_c α_c
        ‖p_c − t_c‖²`` (``forward_lp`` + ``zero_shot_constraint``) with fewer passes over the ``[C, E]`` tensors.

        With ``z = x̂ pᵀ`` ``(B, C)``, ``n_c = ‖p_c‖`` and ``G = (softmax(s z / n) − onehot) / B``:
        ``∂/∂p_c = (s / n_c) Σ_b G_bc x̂_b − (s / n_c³) (Σ_b G_bc z_bc) p_c + (2/C) α_c (p_c − t_c)``."""
        x = x / x.norm(dim=-1, keepdim=True)  # (B, E)
        norms = protos.norm(dim=-1)  # (C,)
        z = x @ protos.t()  # (B, C)
        scale = self.logit_scale / norms  # (C,)
        logits = z * scale
        logp = torch.log_softmax(logits, dim=-1)
        loss = -logp.gather(1, y[:, None]).mean()
        grad = logp.exp_()  # softmax, (B, C)
        grad[torch.arange(y.shape[0]), y] -= 1.0
        grad.mul_(scale / y.shape[0])  # G · s / n_c
        radial = (grad * z).sum(0) / norms.pow(2)  # (C,): (s / n_c³) Σ_b G_bc z_bc
        penalise = self.config.constraint == "l2"
        if base is not None and penalise:  # the loss value only (the record): 3 more passes over (C, E)
            loss = loss + torch.mean(self.multipliers * (protos - base).pow(2).sum(-1))
        momentum.addmm_(grad.t(), x, beta=0.9)  # 0.9 · m + (s / n_c) Σ_b G_bc x̂_b
        momentum.addcmul_(protos, (pull - radial if penalise else -radial)[:, None])
        if penalise:
            momentum.sub_(pull_base)
        return float(loss)

    def forward(self, image_features: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, C]`` = ``(f/‖f‖) @ (p/‖p‖)ᵀ · logit_scale`` (``forward_lp``)."""
        refuse_new_classes(self.method, text)
        protos = require_fitted(self.method, self.prototypes)
        x = image_features.float()
        x = x / x.norm(dim=-1, keepdim=True)
        return x @ (protos / protos.norm(dim=-1, keepdim=True)).t() * self.logit_scale


__all__ = ["Clap", "ClapConfig", "batches_per_epoch", "class_adaptive_multipliers", "epoch_lr"]
