"""Each method's official training recipe, resolved once, in the library (``docs/recipes.md``).

The precedence is: the user's value > the method's own official recipe > the dataset default (CoOp's epochs for
the shot count, or the benchmark's own: :func:`coop_epochs`, a typed property of the benchmark's metadata, never a
name compared in the engine). :func:`resolve_train_config` applies it; :func:`vlprompt.engine.run.train_run` calls it before training,
so the Python API and ``vlprompt train`` train with the same settings, and ``config.json`` records the resolved
values.

Only ``epochs``, ``batch_size`` and the SGD ``lr`` differ between the official methods (:data:`RECIPE_FIELDS`; lr
0.002 for the CoOp family, :data:`~vlprompt.engine.config.DEFAULT_LR`); every other optimisation default (momentum
0.9, weight decay 5e-4, one warm-up epoch at 1e-5, cosine) is the same in all their configs and is a plain
:class:`~vlprompt.engine.config.TrainConfig` default.

Official sources (``Repo:path``):

- CoOp: ``CoOp:configs/trainers/CoOp/rn50{_ep50,_ep100,}.yaml`` (``BATCH_SIZE: 32``; ``MAX_EPOCH`` 50/100/200),
  ``CoOp:COOP.md`` (1 shot → ``*_ep50``, 2–4 → ``*_ep100``, 8–16 → the 200-epoch config; ImageNet ``*_ep50`` for
  every shot count);
- CoCoOp: ``CoOp:configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml`` (``BATCH_SIZE: 1``, ``MAX_EPOCH: 10``),
  used for every dataset by ``CoOp:scripts/cocoop/base2new_train.sh`` and ``xd_train.sh``;
- KgCoOp: ``KgCoOp:KgCoOp/configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml`` (``BATCH_SIZE: 128``,
  ``MAX_EPOCH: 100``), used for every dataset and shot count by ``KgCoOp/scripts/base2new_train.sh`` (16 shots; its
  ImageNet line in ``scripts/run.sh`` uses the same script and config) and ``KgCoOp/scripts/xd_train.sh`` (4 shots,
  ImageNet included);
- IVLP, VPT-deep: :attr:`vlprompt.prompts.ivlp.IVLP.recipe`, :attr:`vlprompt.prompts.vpt.VPT.recipe` (their
  modules cite the configs).
"""

from __future__ import annotations

import logging
from dataclasses import replace

from vlprompt.engine.config import DEFAULT_LR, TrainConfig
from vlprompt.errors import ConfigError

_logger = logging.getLogger(__name__)

#: The ``TrainConfig`` fields a method's recipe may set (the only ones that differ between official methods).
RECIPE_FIELDS = ("epochs", "batch_size", "lr")

#: CoOp's train batch size (``CoOp:configs/trainers/CoOp/*.yaml`` ``DATALOADER.TRAIN_X.BATCH_SIZE: 32``).
COOP_BATCH_SIZE = 32


def coop_epochs(shots: int | None, dataset: str | None = None) -> int:
    """CoOp's ``MAX_EPOCH``, the default of a method without its own epochs: the dataset's own count where its
    benchmark has one (:attr:`vlprompt.data.Benchmark.coop_epochs`: ImageNet 50 for every shot count), else by the
    shot count (``CoOp:COOP.md``): 50 for 1 shot, 100 for 2–4, 200 for 8–16 and for all images.

    Args:
        shots: images per class (``None`` or 0: all training images).
        dataset: the dataset's name (``DatasetSplits.name``).
    """
    from vlprompt.data.benchmarks import benchmark_epochs

    own = benchmark_epochs(dataset)
    if own is not None:
        return own
    if shots is not None and 0 < shots <= 1:
        return 50
    if shots is not None and 0 < shots <= 4:
        return 100
    return 200


def method_recipe(method: str, shots: int | None = None, dataset: str | None = None) -> dict[str, int | float]:
    """The official ``{"epochs", "batch_size", "lr"}`` of ``method`` for ``shots`` images per class on ``dataset``.

    Args:
        method: a registered prompt-learning method (``coop``, ``cocoop``, ``kgcoop``, …).
        shots: images per class (``None`` or 0: all training images).
        dataset: the dataset's name (``DatasetSplits.name``; a benchmark with its own epoch count, ImageNet,
            changes CoOp's: :func:`coop_epochs`).

    Raises:
        ConfigError: an unknown method, or a method whose ``recipe`` sets other fields than :data:`RECIPE_FIELDS`.
    """
    from vlprompt.prompts import get_prompt_learner_class

    cls = get_prompt_learner_class(method)
    own = dict(cls.recipe)
    extra = sorted(set(own) - set(RECIPE_FIELDS))
    if extra:
        raise ConfigError(f"method '{method}' ({cls.__name__}.recipe) sets {extra}; a method's recipe may only set "
                          f"{', '.join(RECIPE_FIELDS)} (the other settings are TrainConfig defaults).")
    base = {"epochs": coop_epochs(shots, dataset), "batch_size": COOP_BATCH_SIZE, "lr": DEFAULT_LR}  # the default
    return {**base, **own}


def resolve_train_config(
    train: TrainConfig, method: str, shots: int | None = None, dataset: str | None = None
) -> TrainConfig:
    """``train`` with every field the user left unset (``None``) filled from ``method``'s official recipe.

    Args:
        train: the user's settings (``epochs``/``batch_size`` ``None`` where not chosen).
        method: the prompt-learning method.
        shots: images per class (``None`` or 0: all).
        dataset: the dataset's name (``DatasetSplits.name``).

    Returns:
        A fully resolved, frozen :class:`TrainConfig` (``resolved`` is true); values the user set are kept.
    """
    recipe = method_recipe(method, shots, dataset)
    chosen = {k: recipe[k] for k in RECIPE_FIELDS if getattr(train, k) is None}
    if chosen:
        _logger.info("%s recipe for %s shots on %s: %s", method, shots, dataset,
                     ", ".join(f"{k}={v}" for k, v in chosen.items()))
    return replace(train, **chosen)


def train_drop_last(num_images: int, batch_size: int) -> bool:
    """Dassl's train-loader rule: drop the last partial batch only when there are at least ``batch_size`` images
    (``Dassl:dassl/data/data_manager.py`` ``build_data_loader``: ``drop_last=is_train and len(data_source) >=
    batch_size``)."""
    return num_images >= batch_size


def steps_per_epoch(num_images: int, batch_size: int) -> int:
    """Optimiser steps per epoch under :func:`train_drop_last`: ``⌊N/B⌋`` when ``N ≥ B``, else one partial batch."""
    return num_images // batch_size if train_drop_last(num_images, batch_size) else (1 if num_images else 0)


def method_template(method: str, dataset: str | None, dataset_template: str) -> str:
    """The hand-crafted prompt a method uses on ``dataset``: its class's ``dataset_templates`` entry, else the
    dataset's.

    KgCoOp's guidance features use KgCoOp's own ``CUSTOM_TEMPLATES`` (``KgCoOp:KgCoOp/trainers/kgcoop.py`` l.37–54,
    :data:`vlprompt.prompts.kgcoop.KGCOOP_TEMPLATES`), which differ from CoOp's zero-shot ones (DTD "a photo of a {},
    a type of texture." instead of "{} texture."). They apply to the official benchmarks only: a dataset whose
    template is not the benchmark's own (custom data, a split file with its own template) keeps its template.

    Args:
        method: the prompt-learning method.
        dataset: the dataset's name (``DatasetSplits.name``).
        dataset_template: the dataset's own template (``DatasetSplits.template``, CoOp's for a benchmark).
    """
    from vlprompt.data.templates import CUSTOM_TEMPLATES
    from vlprompt.prompts import get_prompt_learner_class

    own = getattr(get_prompt_learner_class(method), "dataset_templates", None) or {}
    if dataset in own and dataset_template == CUSTOM_TEMPLATES.get(dataset):
        return own[dataset]
    return dataset_template


__all__ = ["RECIPE_FIELDS", "COOP_BATCH_SIZE", "coop_epochs", "method_recipe", "resolve_train_config", "train_drop_last",
           "steps_per_epoch", "method_template"]
