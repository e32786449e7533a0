"""Tip-Adapter (training-free): a key-value cache of the few-shot images blended with zero-shot CLIP.

Official code: ``gaopengcuhk/Tip-Adapter`` (commit ``d0e2d6f8``), ``utils.py`` ``build_cache_model``, ``search_hp``,
``cls_acc`` and ``main.py`` ``run_tip_adapter``; per-dataset settings from ``configs/<dataset>.yaml``
(:data:`OFFICIAL_CONFIGS`). What it computes, for L2-normalised image features ``f`` ``[B, E]``:

- cache keys ``[N, E]``: the mean of the **raw** features of the ``augment_epoch`` (10) augmented views of each
  few-shot training image, then L2-normalised (``build_cache_model``); values ``[N, C]``: one-hot labels;
- ``affinity = f @ keys.T``, ``cache_logits = exp(-(β - β · affinity)) @ values``;
- ``logits = logit_scale · f @ text.T + α · cache_logits``. The official code writes ``100.`` for the logit scale
  (CLIP's ``exp(logit_scale)`` for OpenAI's weights); here it is ``AdapterData.logit_scale``, 100 for those weights.

α and β are searched on the grid of ``search_hp`` (``search_step`` points from 0.1 towards ``search_scale``, β outer,
α inner, the first strictly better validation accuracy wins), **on the few-shot validation split only**: the
official ImageNet script searches on the test set (``main_imagenet.py``; Tip-Adapter issue #11), which this module
cannot do (an adapter never sees test data). Without a validation split the official initial values are used.

Precision (a deliberate choice): everything is fp32, values included. The official code runs OpenAI's fp16 CLIP
on the GPU, so its keys, features and ``.half()`` values are fp16; one-hot values are exact in either precision,
and ``tests/fidelity/test_tip_adapter_figures.py`` compares with the official functions run both in fp32
(tolerance 1e-4 on logits) and in fp16 (the official precision; tolerance stated there).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from vlprompt.adapters.base import AdapterData, FeatureAdapter, register_adapter
from vlprompt.errors import ArtifactError, ConfigError

_logger = logging.getLogger(__name__)

#: ``Tip-Adapter:configs/<name>.yaml`` (all: ``init_beta: 1``, ``search_step: [200, 20]``, ``lr: 0.001``,
#: ``augment_epoch: 10``, ``shots: 16``, RN50), keyed by vlprompt's dataset names (``fgvc.yaml`` → fgvc_aircraft).
OFFICIAL_CONFIGS: dict[str, dict[str, Any]] = {
    "caltech101": {"search_scale": (12.0, 5.0), "init_alpha": 3.0, "train_epoch": 20},
    "dtd": {"search_scale": (13.0, 13.0), "init_alpha": 2.0, "train_epoch": 20},
    "eurosat": {"search_scale": (12.0, 10.0), "init_alpha": 2.0, "train_epoch": 100},
    "fgvc_aircraft": {"search_scale": (30.0, 30.0), "init_alpha": 5.0, "train_epoch": 20},
    "food101": {"search_scale": (10.0, 10.0), "init_alpha": 1.17, "train_epoch": 20},
    "imagenet": {"search_scale": (7.0, 3.0), "init_alpha": 1.17, "train_epoch": 20},
    "oxford_flowers": {"search_scale": (50.0, 50.0), "init_alpha": 10.0, "train_epoch": 20},
    "oxford_pets": {"search_scale": (7.0, 3.0), "init_alpha": 1.17, "train_epoch": 20},
    "stanford_cars": {"search_scale": (20.0, 10.0), "init_alpha": 3.0, "train_epoch": 20},
    "sun397": {"search_scale": (12.0, 10.0), "init_alpha": 1.17, "train_epoch": 20},
    "ucf101": {"search_scale": (7.0, 3.0), "init_alpha": 3.0, "train_epoch": 20},
}
#: the settings of a dataset without an official config (custom data, the micro world): ImageNet's.
DEFAULT_DATASET = "imagenet"
#: rows of a ``[rows, N]`` affinity block (bounded memory on large caches and validation sets).
_BLOCK_ELEMENTS = 1 << 22


def official_config(dataset: str | None, shots: int | None = None) -> dict[str, Any]:
    """The official settings of ``dataset`` (``configs/<dataset>.yaml``; ImageNet's for a dataset without one) as
    :class:`TipAdapterConfig` options. The configs are written for 16 shots and the README changes only ``shots``
    for fewer, so ``shots`` changes nothing."""
    source = dataset if dataset in OFFICIAL_CONFIGS else DEFAULT_DATASET
    return {"init_beta": 1.0, **OFFICIAL_CONFIGS[source]}


@dataclass(frozen=True)
class TipAdapterConfig:
    """Tip-Adapter(-F) settings; ``None`` fields take the official value of ``dataset`` (:data:`OFFICIAL_CONFIGS`).

    Attributes:
        dataset: vlprompt dataset name whose official config fills the ``None`` fields (unknown or ``None``:
            :data:`DEFAULT_DATASET`'s).
        init_alpha, init_beta: α and β without a validation split, and during Tip-Adapter-F's training.
        search_scale: upper ends ``(β, α)`` of the search grid; search_step: its sizes ``(β, α)``.
        lr: Tip-Adapter-F's AdamW learning rate; train_epoch: its epochs; batch_size: its batch (``main.py``: 256).
    """

    dataset: str | None = None
    init_alpha: float | None = None
    init_beta: float | None = None
    search_scale: list[float] | None = None
    search_step: list[int] = field(default_factory=lambda: [200, 20])
    lr: float = 0.001
    train_epoch: int | None = None
    batch_size: int = 256

    def __post_init__(self) -> None:
        for name in ("search_scale", "search_step"):  # lists, as JSON gives them back (config.json round trip)
            value = getattr(self, name)
            if value is not None:
                if len(value) != 2:
                    raise ConfigError(f"tip-adapter option {name}={list(value)}: expected two numbers (β, α).")
                object.__setattr__(self, name, list(value))
        if min(self.search_step) < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError(f"tip-adapter options search_step={list(self.search_step)}, batch_size="
                              f"{self.batch_size}, lr={self.lr}: expected positive values.")
        if self.train_epoch is not None and self.train_epoch < 1:
            raise ConfigError(f"tip-adapter option train_epoch={self.train_epoch}: expected at least 1.")

    def resolved(self) -> dict[str, Any]:
        """Every setting, the ``None`` ones filled from the official config of :attr:`dataset`."""
        source = self.dataset if self.dataset in OFFICIAL_CONFIGS else DEFAULT_DATASET
        official = official_config(source)
        mine = {"init_alpha": self.init_alpha, "init_beta": self.init_beta, "search_scale": self.search_scale,
                "train_epoch": self.train_epoch}
        out = {k: official[k] if v is None else v for k, v in mine.items()}
        out.update(search_scale=list(out["search_scale"]), search_step=list(self.search_step), lr=self.lr, batch_size=self.batch_size, official_config=source)
        return out


def normalise(features: torch.Tensor) -> torch.Tensor:
    """``[B, E]`` → unit rows, as the official code divides (``features /= features.norm(dim=-1, keepdim=True)``)."""
    features = features.float()
    return features / features.norm(dim=-1, keepdim=True)


def build_cache(views: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys ``[N, E]`` (the mean of the raw ``views [V, N, E]``, then L2-normalised) and one-hot values ``[N, C]``
    (``build_cache_model``, whose keys are stored transposed, ``[E, N]``)."""
    keys = views.float().mean(dim=0)
    keys = keys / keys.norm(dim=-1, keepdim=True)
    values = torch.nn.functional.one_hot(labels.long(), num_classes).float()
    return keys, values


def cache_logits(affinity_t: torch.Tensor, classes: torch.Tensor, num_classes: int, beta: Any,
                 out: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, C]`` = ``exp(-(β - β · affinity)) @ values`` from the transposed affinity ``[N, B]`` and one-hot values
    whose row ``n`` is class ``classes[n]``.

    The same floats as the official expression (``fl(fl(β·a) − β) = −fl(β − fl(β·a))``, computed in place), and the
    same sums, added per class along contiguous rows (``index_add`` on dim 0) instead of a dense ``[N, C]`` product,
    which on a 1000-class, 16-shot cache is 1000 times the work. ``out`` (``[N, B]``, optional): scratch space for
    the weights, so that a caller looping over β allocates it once."""
    weights = torch.mul(affinity_t, beta, out=out).sub_(beta).exp_()  # [N, B]
    return weights.new_zeros(num_classes, weights.shape[1]).index_add_(0, classes, weights).t()


def search_grid(scale: float, steps: int) -> list[float]:
    """``search_hp``'s grid: ``[i * (scale - 0.1) / steps + 0.1 for i in range(steps)]`` (``scale`` excluded)."""
    return [i * (scale - 0.1) / steps + 0.1 for i in range(steps)]


def count_correct(clip: torch.Tensor, cache: torch.Tensor, alphas: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[A]``: for each α of the ascending ``alphas`` (≥ 0), how many rows ``argmax(clip + cache · α)`` gets right
    (``clip``, ``cache`` ``[m, C]``, ``cache ≥ 0``).

    Exactly the dense argmax (first index on ties), without scoring every class at every α. Against the true class
    ``y``, ``d_c(α) = v_c(α) − v_y(α)`` is linear in α up to rounding (each ``v = fl(clip + fl(cache · α))`` is within
    ``δ = 2⁻²³ (|clip| + cache · α_max)`` of the exact line), so with ``tol = 8δ``: a class with ``d_c > tol`` at both
    ends of the grid beats ``y`` at every α (the row is wrong throughout); a class with ``d_c < −tol`` at both ends
    never reaches ``y``. Only the remaining (row, class) pairs, usually few, are scored at every α, with the dense
    argmax's tie rule (``v_c = v_y`` loses to ``y`` when ``c > y``)."""
    lo = clip + cache * alphas[0]  # [m, C]
    hi = clip + cache * alphas[-1]  # [m, C]
    y = labels[:, None]
    d_lo, d_hi = lo - lo.gather(1, y), hi - hi.gather(1, y)  # [m, C]
    tol = 8 * 2.0**-23 * (clip.abs() + cache * alphas[-1].abs()).amax(dim=1, keepdim=True)  # [m, 1]
    beaten = (torch.minimum(d_lo, d_hi) > tol).any(dim=1)  # [m]: wrong at every α
    near = (torch.maximum(d_lo, d_hi) >= -tol) & ~beaten[:, None]  # [m, C]: y itself included
    near.scatter_(1, y, False)
    rows, cols = near.nonzero(as_tuple=True)  # [P]: the pairs to score
    a = alphas.shape[0]
    val = clip[rows, cols] + cache[rows, cols] * alphas[:, None]  # [A, P]: the same floats as the dense sum
    val_y = clip.gather(1, y)[rows, 0] + cache.gather(1, y)[rows, 0] * alphas[:, None]  # [A, P]
    bad = (val > val_y) | ((val == val_y) & (cols < labels[rows]))  # [A, P]: c wins over y at α
    lost = torch.zeros(a, clip.shape[0]).index_add_(1, rows, bad.float()) > 0  # [A, m]
    return (~beaten).sum() - lost.sum(dim=1)


def search_alpha_beta(affinity_fn: Callable[[torch.Tensor], torch.Tensor], val: torch.Tensor, val_labels: torch.Tensor, text: torch.Tensor,
                      logit_scale: float, classes: torch.Tensor, settings: dict[str, Any],
                      init: tuple[float, float] | None = None) -> dict[str, Any]:
    """``search_hp`` on the validation split: accuracy of every grid point, the first best (β outer, α inner).

    Args:
        affinity_fn: L2-normalised features ``[B, E]`` → transposed affinity ``[N, B]`` (cache or fine-tuned keys).
        val: ``[M, E]`` unnormalised validation features; val_labels: ``[M]``.
        text: ``[C, E]`` zero-shot classifier; classes: ``[N]`` the cache's class per key.
        settings: :meth:`TipAdapterConfig.resolved`.
        init: ``(α, β)`` whose accuracy is also wanted (``val_accuracy_init``), from the same affinity blocks
            (one more exp pass, instead of a second ``[M, N]`` affinity).

    Returns:
        ``beta``, ``alpha`` (as official: 0, 0 when no grid point classifies any image right), ``val_accuracy``, the
        grids and ``trace``: ``[β, α, accuracy]`` at each new best, in the order the official code prints them.
    """
    betas = search_grid(settings["search_scale"][0], settings["search_step"][0])
    alphas = search_grid(settings["search_scale"][1], settings["search_step"][1])
    alpha_t = torch.tensor(alphas, dtype=torch.float32)  # what the kernels make of the official Python floats
    correct = torch.zeros(len(betas), len(alphas), dtype=torch.long)
    init_correct = 0
    rows = max(1, _BLOCK_ELEMENTS // max(1, classes.shape[0]))
    with torch.no_grad():
        for start in range(0, val.shape[0], rows):
            f = normalise(val[start:start + rows])
            y = val_labels[start:start + rows].long()
            affinity_t = affinity_fn(f)  # [N, m]
            clip = logit_scale * f @ text.float().t()  # [m, C]
            scratch = torch.empty_like(affinity_t)  # [N, m], reused by every β
            if init is not None:  # TipAdapter.logits at (α, β) = init, the same floats
                logits = clip + cache_logits(affinity_t, classes, text.shape[0], init[1], out=scratch) * init[0]
                init_correct += int((logits.argmax(dim=1) == y).sum())
            for i, beta in enumerate(betas):
                cache = cache_logits(affinity_t, classes, text.shape[0], beta, out=scratch).contiguous()  # [m, C]
                correct[i] += count_correct(clip, cache, alpha_t, y)
    best, trace, beta, alpha = 0, [], 0.0, 0.0
    for i, b in enumerate(betas):  # the official loop order and its strict ">"
        for j, a in enumerate(alphas):
            if int(correct[i, j]) > best:
                best, beta, alpha = int(correct[i, j]), b, a
                trace.append([b, a, 100.0 * best / val.shape[0]])
    out = {} if init is None else {"val_accuracy_init": 100.0 * init_correct / val.shape[0]}
    return {"beta": beta, "alpha": alpha, "val_accuracy": 100.0 * best / val.shape[0], "trace": trace,
            "beta_grid": {"start": betas[0], "last": betas[-1], "steps": len(betas)},
            "alpha_grid": {"start": alphas[0], "last": alphas[-1], "steps": len(alphas)}, **out}


@register_adapter
class TipAdapter(FeatureAdapter):
    """Tip-Adapter: the training-free cache model (module docstring). State: ``cache_keys [N, E]``,
    ``cache_values [N, C]``, the chosen ``alpha`` and ``beta`` (0-d)."""

    method = "tip-adapter"
    config_class = TipAdapterConfig
    display_name = "Tip-Adapter"
    uses_views = True
    uses_val = True
    new_classes = False
    #: ``augment_epoch: 10`` in every ``configs/*.yaml``.
    #: ``main.py``: ``RandomResizedCrop(224, scale=(0.5, 1), bicubic)`` + ``RandomHorizontalFlip`` for the cache.
    recipe = {"num_views": 10, "crop_scale_min": 0.5, "flip": True}

    def __init__(self, config: TipAdapterConfig):
        super().__init__(config)
        self.logit_scale = 100.0
        self.register_buffer("text", torch.empty(0), persistent=False)  # [C, E] zero-shot classifier
        self.register_buffer("cache_values", torch.empty(0))
        self.register_buffer("alpha", torch.tensor(0.0))
        self.register_buffer("beta", torch.tensor(0.0))
        self.register_load_state_dict_post_hook(lambda module, keys: module._check_values())

    # --- the keys: a buffer here, a trained nn.Linear in Tip-Adapter-F ---------------------------------------
    def _set_keys(self, keys: torch.Tensor) -> None:
        self.register_buffer("cache_keys", keys)

    def _keys_name(self) -> str:
        return "cache_keys"

    def _affinity(self, features: torch.Tensor) -> torch.Tensor:
        """``[N, B]``: the cosine of each key with L2-normalised ``features`` ``[B, E]`` — the official
        ``features @ cache_keys`` (``[B, N]``) transposed, so that :func:`cache_logits` sums contiguous rows."""
        return self.cache_keys @ features.t()

    def _classes(self) -> torch.Tensor:
        """``[N]``: each key's class (the one-hot rows of ``cache_values``, checked on load). Kept between calls —
        an argmax over ``[N, C]`` per training step or block would cost as much as the step's exp pass — and
        recomputed whenever ``cache_values`` changes (another tensor, or written in place by ``load_state_dict``)."""
        v = self.cache_values
        key = (v.data_ptr(), v._version, tuple(v.shape))
        if getattr(self, "_class_key", None) != key:
            self._class_key, self._class_index = key, v.argmax(dim=1)
        return self._class_index

    def _check_values(self) -> None:
        v = self.cache_values
        if v.numel() and not (((v == 0) | (v == 1)).all() and (v.sum(dim=1) == 1).all()):
            raise ArtifactError(f"{self.method}: cache_values {list(v.shape)} are not one-hot labels; the artifact "
                                "is damaged or not a Tip-Adapter artifact — re-run the fit.")

    # --- the FeatureAdapter interface ------------------------------------------------------------------------
    def prepare(self, num_classes: int, feature_dim: int, text: torch.Tensor, logit_scale: float,
                shapes: dict[str, list[int]]) -> None:
        """Empty tensors of the saved shapes (``cache_values [N, C]``, keys ``[N, E]``) for ``load_state_dict``."""
        name = self._keys_name()
        if "cache_values" not in shapes or name not in shapes:
            raise ArtifactError(f"{self.method} artifact lacks {name} or cache_values (has {sorted(shapes)}).")
        n, c = shapes["cache_values"]
        if c != num_classes or list(shapes[name]) != [n, feature_dim]:
            raise ArtifactError(f"{self.method} artifact holds {name} {shapes[name]} and cache_values {[n, c]}; "
                                f"expected [N, {feature_dim}] and [N, {num_classes}] for these classes and features.")
        self.text, self.logit_scale = text.float(), float(logit_scale)
        self.cache_values = torch.empty(n, c)
        self._set_keys(torch.empty(n, feature_dim))

    def fit(self, data: AdapterData) -> dict[str, Any]:
        """Build the cache from ``data.views`` and choose α, β on ``data.val`` (see the module docstring)."""
        settings = self.config.resolved()
        views = data.views
        if views is None:  # no augmented views: the test-transform features are the only view
            _logger.warning("%s: no augmented views given; the cache keys are the test-transform features "
                            "(the official cache averages %d augmented views).", self.method, self.recipe["num_views"])
            views = data.train.unsqueeze(0)
        keys, values = build_cache(views, data.train_labels, data.num_classes)
        self.text, self.logit_scale = data.text.float(), float(data.logit_scale)
        self.cache_values = values
        self._set_keys(keys)
        self.record = {"method": self.method, "settings": settings, "num_views": 0 if data.views is None else int(views.shape[0]),
                       "cache_size": int(keys.shape[0])}
        self.record.update(self._train(data, views, settings))
        self._choose_alpha_beta(data, settings)
        return self.record

    def _train(self, data: AdapterData, views: torch.Tensor, settings: dict[str, Any]) -> dict[str, Any]:
        """Tip-Adapter learns nothing (Tip-Adapter-F trains its keys here)."""
        return {}

    def _choose_alpha_beta(self, data: AdapterData, settings: dict[str, Any]) -> None:
        if data.val is None or data.val_labels is None or data.val.shape[0] == 0:
            beta, alpha = settings["init_beta"], settings["init_alpha"]
            self.record.update(selected_on="init (no validation split)", search=None)
        else:
            search = search_alpha_beta(self._affinity, data.val, data.val_labels, self.text, self.logit_scale,
                                       self._classes(), settings, init=(settings["init_alpha"], settings["init_beta"]))
            beta, alpha = search["beta"], search["alpha"]
            self.record.update(selected_on="val", search=search)
        self.alpha, self.beta = torch.tensor(float(alpha)), torch.tensor(float(beta))
        self.record.update(alpha=alpha, beta=beta)
        _logger.info("%s: alpha %.4g, beta %.4g (%s)", self.method, alpha, beta, self.record["selected_on"])

    def logits(self, features: torch.Tensor, alpha: Any, beta: Any, text: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, C]`` Tip-Adapter logits of L2-normalised ``features`` ``[B, E]`` with the given α, β."""
        text = self.text if text is None else text.float()
        clip = self.logit_scale * features @ text.t()
        return clip + cache_logits(self._affinity(features), self._classes(), text.shape[0], beta) * alpha

    def accuracy(self, features: torch.Tensor, labels: torch.Tensor, alpha: Any, beta: Any) -> float:
        """Top-1 accuracy (percent, ``cls_acc``) of unnormalised ``features [M, E]`` at α, β, in row blocks."""
        rows = max(1, _BLOCK_ELEMENTS // max(1, self.cache_values.shape[0]))
        correct = 0
        with torch.no_grad():
            for start in range(0, features.shape[0], rows):
                logits = self.logits(normalise(features[start:start + rows]), alpha, beta)
                correct += int((logits.argmax(dim=1) == labels[start:start + rows]).sum())
        return 100.0 * correct / features.shape[0]

    def forward(self, image_features: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, C]`` logits of unnormalised ``image_features`` ``[B, E]``; ``text`` may only be the zero-shot
        classifier of the cached classes (a per-class cache cannot classify new classes)."""
        if self.cache_values.dim() != 2:
            raise ConfigError(f"{self.method} has no cache yet: call fit(data), or prepare(...) and load_state_dict "
                              "for a saved one, before classifying.")
        if text is not None and text.shape[0] != self.cache_values.shape[1]:
            raise ConfigError(f"{self.method} caches {self.cache_values.shape[1]} classes and cannot classify "
                              f"{text.shape[0]} others (new_classes is false); use a method that can, such as "
                              "clip-adapter.")
        return self.logits(normalise(image_features), self.alpha, self.beta, text)


__all__ = ["DEFAULT_DATASET", "OFFICIAL_CONFIGS", "TipAdapter", "TipAdapterConfig", "build_cache", "cache_logits",
           "count_correct", "normalise", "official_config", "search_alpha_beta", "search_grid"]
