"""LP++ (Huang, Shakeri et al., CVPR 2024): a linear probe whose class weights blend visual prototypes with the
zero-shot text weights through learned class-wise multipliers, with step sizes from Lipschitz bounds (no
validation search).

Method name ``lpplusplus`` (display name "LP++"; a name without ``+`` so that it is safe in file names, config keys
and shells).

Official code: ``FereshteShakeri/FewShot-CLIP-Strong-Baseline`` (commit ``f81054f9``): ``methods/linear_probe_p2.py``
(``LinearProbe_P2.forward``, ``calculate_lr_w``, ``calculate_init_alpha``, ``calculate_lr_alpha``),
``methods/utils.py`` (``compute_centroids``, ``compute_centroids_alpha``), ``main.py`` / ``main_imagenet.py`` (the
training transform) and ``configs/base.yaml`` (``train_epoch 300``). What it does, done the same way here:

- **Features**: one pass of the few-shot images through ``RandomResizedCrop(224, scale=(0.5, 1), bicubic)`` +
  ``RandomHorizontalFlip``, L2-normalised: ``F`` ``[N, E]``. Here ``data.views[0]`` normalised (recipe
  ``num_views`` 1). The zero-shot weights ``T`` ``[C, E]`` are ``clip_classifier``'s (per-template normalised,
  averaged, re-normalised) = ``data.text``.
- **Logits**: ``F Wᵀ + b + α ⊙ (F Tᵀ)`` with ``α`` ``[C]`` (no logit scale: the scale lives in ``W`` and ``α``).
- **Init**: ``W`` = per-class *sums* of ``F`` (``compute_centroids``: ``one_hotᵀ F``, here ``index_add``); ``b``
  as ``nn.Linear``'s default, ``U(−1/√E, 1/√E)``; every ``α_c`` = 250 × the mean over classes of the mean
  true-class cosine (``calculate_init_alpha``).
- **Step sizes** (the block majorize-minimize steps): ``lr_w = 4N / λ_max(FᵀF)`` (``calculate_lr_w``, ``eigh``) for
  ``(W, b)`` by SGD with momentum 0.9; ``lr_α = N / (4 max_c Σ_i (F Tᵀ)_ic²)`` (``calculate_lr_alpha``) for ``α``.
- **Loop**: 300 full-batch iterations of cross-entropy; ``(W, b)`` step every iteration; ``α -= lr_α · α.grad``
  when ``(epoch + 1) % 10 == 0``, where ``α.grad`` is *never zeroed* (``optimizer.zero_grad()`` covers the
  classifier only), so each ``α`` step uses the gradients accumulated since the first iteration.

Deviations: the official script evaluates the test set at the epoch of best few-shot *validation* accuracy
(``if acc_val >= best_acc``); LP++ is validation-free here (the paper's claim): the last iterate is the model and
``data.val`` is never read. The official runs in the CLIP model's dtype (fp16 on a GPU, with an fp16 one-hot);
here fp32. ``b`` is drawn from a generator seeded with ``data.seed`` (officially from
the global RNG state). No closed form is involved: the official solver is this gradient scheme.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from vlprompt.adapters.base import AdapterData, FeatureAdapter, register_adapter
from vlprompt.adapters.common import refuse_new_classes, require_fitted, training_views
from vlprompt.errors import ConfigError, DataError, TrainingDivergedError

log = logging.getLogger(__name__)

#: ``calculate_init_alpha``: ``alpha_init = 250 / shots · (shots · mean true-class cosine)``.
ALPHA_INIT_SCALE = 250.0


@dataclass
class LPPlusPlusConfig:
    """LP++'s options (defaults: the official ``configs/base.yaml`` and ``linear_probe_p2.py``).

    Attributes:
        epochs: full-batch iterations (``train_epoch`` 300).
        alpha_every: ``α`` is updated after every ``alpha_every``-th iteration (10).
    """

    epochs: int = 300
    alpha_every: int = 10

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.alpha_every < 1:
            raise ConfigError(f"lpplusplus: need epochs ≥ 0 and alpha_every ≥ 1, got epochs={self.epochs}, "
                              f"alpha_every={self.alpha_every}.")


@torch.no_grad()
def lpp_init(features: torch.Tensor, labels: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
    """The official initial point and step sizes from normalised ``features`` ``[N, E]``, ``labels`` ``[N]`` and
    ``text`` ``[C, E]``: ``weight`` ``[C, E]``, ``alpha`` (scalar), ``lr_w``, ``lr_alpha`` (scalars), and
    ``text_logits`` ``F Tᵀ`` ``[N, C]`` (constant during training; one ``N × E × C`` product not to repeat)."""
    n, num_classes = features.shape[0], text.shape[0]
    counts = torch.bincount(labels, minlength=num_classes)
    missing = (counts == 0).nonzero().flatten().tolist()
    if missing:
        raise DataError(f"lpplusplus: class(es) {missing[:10]} have no training image; LP++ starts each class "
                        "weight from its images' features; give every class ≥ 1 shot.")
    weight = torch.zeros(num_classes, features.shape[1]).index_add_(0, labels, features)  # (C, E) class sums
    text_logits = features @ text.t()  # (N, C)
    true_cos = torch.zeros(num_classes).index_add_(0, labels, text_logits.gather(1, labels[:, None])[:, 0])
    alpha = ALPHA_INIT_SCALE * (true_cos / counts.to(features.dtype)).double().mean()  # compute_centroids_alpha
    # λ_max(FᵀF) in fp32, as the official scipy eigh of the fp32 (GPU: fp16) array (fp64 LAPACK is ~30× slower);
    # FᵀF (E, E) and F Fᵀ (N, N) have the same largest eigenvalue: take the smaller one
    gram = features.t() @ features if n >= features.shape[1] else features @ features.t()
    lr_w = 4 * n / torch.linalg.eigvalsh(gram)[-1]
    lr_alpha = n / (text_logits.pow(2).sum(0).max() * 4)
    return {"weight": weight, "alpha": alpha.float(), "lr_w": lr_w, "lr_alpha": lr_alpha, "text_logits": text_logits}


@register_adapter
class LPPlusPlus(FeatureAdapter):
    """LP++: logits ``F Wᵀ + b + α ⊙ (F Tᵀ)`` on L2-normalised image features."""

    method = "lpplusplus"
    config_class = LPPlusPlusConfig
    display_name = "LP++"
    uses_views = True
    uses_val = False
    new_classes = False
    recipe = {"epochs": 300, "alpha_every": 10, "momentum": 0.9, "lr_w": "4N / lambda_max(F^T F)",
              "lr_alpha": "N / (4 max_c sum_i (F T^T)_ic^2)", "alpha_init": "250 x mean true-class cosine",
              "num_views": 1, "crop_scale_min": 0.5, "flip": True,
              "augmentation": "RandomResizedCrop(224, scale=(0.5, 1), bicubic) + flip",
              "selection": "last iterate (official script: best few-shot val epoch)",
              "source": "FereshteShakeri/FewShot-CLIP-Strong-Baseline@f81054f9"}

    def __init__(self, config: LPPlusPlusConfig):
        super().__init__(config)
        for name in ("weight", "bias", "alpha"):
            self.register_parameter(name, None)  # (C, E), (C,), (C,): created by fit / prepare
        self.register_buffer("text", None)  # (C, E) the zero-shot weights T the α term multiplies

    def _make(self, weight: torch.Tensor, bias: torch.Tensor, alpha: torch.Tensor, text: torch.Tensor) -> None:
        self.weight = torch.nn.Parameter(weight)
        self.bias = torch.nn.Parameter(bias)
        self.alpha = torch.nn.Parameter(alpha)
        self.register_buffer("text", text.float().clone(), persistent=True)

    def prepare(self, num_classes: int, feature_dim: int, text: torch.Tensor, logit_scale: float,
                shapes: dict[str, list[int]]) -> None:
        """Empty ``weight`` ``[C, E]``, ``bias`` ``[C]``, ``alpha`` ``[C]`` and ``text`` for ``load_state_dict``."""
        self._make(torch.empty(shapes.get("weight", [num_classes, feature_dim])),
                   torch.empty(shapes.get("bias", [num_classes])), torch.empty(shapes.get("alpha", [num_classes])),
                   torch.empty(shapes.get("text", list(text.shape))))

    def fit(self, data: AdapterData) -> dict[str, Any]:
        """The official LP++ iterations on one augmented view (never ``data.val``); returns the record."""
        views = training_views(data, self.method, num_views=1)  # (1, N, E)
        feats = views[0] / views[0].norm(dim=-1, keepdim=True)  # (N, E)
        labels = data.train_labels.long()
        text = data.text.float()
        init = lpp_init(feats, labels, text)
        bound = 1.0 / math.sqrt(feats.shape[1])  # nn.Linear's default bias init
        bias = torch.empty(data.num_classes).uniform_(-bound, bound, generator=torch.Generator().manual_seed(
            int(data.seed)))
        self._make(init["weight"].clone(), bias, init["alpha"] * torch.ones(data.num_classes), text)
        loss = self._train(feats, labels, float(init["lr_w"]), init["lr_alpha"], init["text_logits"])
        self.record = {"method": self.method, "epochs": self.config.epochs, "alpha_every": self.config.alpha_every,
                       "views_used": 1 if data.views is not None else 0, "lr_w": float(init["lr_w"]),
                       "lr_alpha": float(init["lr_alpha"]), "alpha_init": float(init["alpha"]),
                       "alpha": {"mean": float(self.alpha.mean()), "min": float(self.alpha.min()),
                                 "max": float(self.alpha.max())},
                       "final_loss": loss}
        return self.record

    def _train(self, feats: torch.Tensor, labels: torch.Tensor, lr_w: float, lr_alpha: torch.Tensor,
               text_logits: torch.Tensor) -> float | None:
        """The official loop, with its gradients formed by hand; returns the last iteration's loss.

        The same maths as autograd on ``CE(F Wᵀ + b + α ⊙ (F Tᵀ))`` followed by ``SGD(momentum 0.9)`` on ``(W, b)``:
        with ``G = (softmax(z) − onehot) / N`` ``(N, C)``, ``∂W = Gᵀ F``, ``∂b = Σ_i G_i``, ``∂α = Σ_i G_i ⊙ (F Tᵀ)_i``,
        but with each ``(N, C)`` tensor written once and reused in place (autograd keeps several alive and adds
        passes). The two ``N × E × C`` products per iteration (``F Wᵀ`` and ``Gᵀ F``) remain: they are the cost.
        ``text_logits`` ``(N, C)``: ``F Tᵀ`` from :func:`lpp_init` (``T`` = ``self.text``)."""
        n = feats.shape[0]
        weight, bias, alpha = self.weight.data, self.bias.data, self.alpha.data  # updated in place
        alpha_grad = torch.zeros_like(alpha)  # (C,): accumulated, never zeroed (official: see the module docstring)
        buf_w = buf_b = None  # SGD's momentum buffers: the first step's gradient, then 0.9 · buf + grad
        scratch = torch.empty_like(text_logits)  # (N, C): α ⊙ (F Tᵀ), then G ⊙ (F Tᵀ)
        rows, inv_n = torch.arange(n), 1.0 / n
        loss_value = None
        for epoch in range(self.config.epochs):
            logits = torch.addmm(bias, feats, weight.t())  # (N, C): F.linear
            logits.add_(torch.mul(text_logits, alpha, out=scratch))
            logp = torch.log_softmax(logits, dim=-1)
            del logits
            loss = -logp[rows, labels].mean()  # F.cross_entropy (mean)
            if not torch.isfinite(loss):
                raise TrainingDivergedError(f"lpplusplus: loss became {loss.item()} at iteration {epoch}; check "
                                            "the cached features for NaN/inf.")
            grad = logp.exp_().mul_(inv_n)  # (N, C): softmax / N, as log_softmax's backward forms it
            grad[rows, labels] -= inv_n
            grad_w = grad.t() @ feats  # (C, E)
            grad_b = grad.sum(0)  # (C,)
            alpha_grad += torch.mul(grad, text_logits, out=scratch).sum(0)
            del grad, logp
            if buf_w is None:
                buf_w, buf_b = grad_w, grad_b
            else:
                buf_w.mul_(0.9).add_(grad_w)
                buf_b.mul_(0.9).add_(grad_b)
            weight.add_(buf_w, alpha=-lr_w)
            bias.add_(buf_b, alpha=-lr_w)
            if (epoch + 1) % self.config.alpha_every == 0:
                alpha -= lr_alpha * alpha_grad
            loss_value = float(loss)
        for p in (self.weight, self.bias, self.alpha):
            p.grad = None
            p.requires_grad_(False)
        return loss_value

    def forward(self, image_features: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, C]`` = ``f̂ Wᵀ + b + α ⊙ (f̂ Tᵀ)`` with ``f̂ = f/‖f‖``."""
        refuse_new_classes(self.method, text)
        weight = require_fitted(self.method, self.weight)
        x = image_features.float()
        x = x / x.norm(dim=-1, keepdim=True)
        return F.linear(x, weight, self.bias) + self.alpha * (x @ self.text.t())


__all__ = ["LPPlusPlus", "LPPlusPlusConfig", "lpp_init"]
