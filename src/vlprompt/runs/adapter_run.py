"""A feature-space adapter (:mod:`vlprompt.adapters`: CLIP-Adapter, Tip-Adapter, TaskRes, CLAP, LP++) as a run folder.

The folder has the contract of every run (DESIGN.md §7), as the linear probe's (:mod:`vlprompt.engine.baselines`):
``config.json`` first (label, method, the adapter's full config as ``learner``, the exact few-shot train/val image
lists, the number of augmented views under ``adapter``), the fitted adapter as ``adapter.safetensors`` (its
``state_dict``) + ``adapter.json`` (:mod:`vlprompt.engine.adapter_artifact`), and ``metrics.json`` last. A finished run
is not replaced without ``overwrite``; with ``resume`` a finished run of the same configuration is kept and its
metrics returned (an unfinished one is fitted again: there is no per-epoch state to continue, fitting takes seconds).

Inputs are cached features only, never images during the fit: the few-shot train images' and (for a method that
selects on validation, ``uses_val``) the few-shot val images' unnormalised features with the test transform, from
the feature cache under the keys CoOp's evaluation and the linear probe use (so a grid extracts them once); the
augmented views of the train images (``uses_views``) from :func:`_train_views`; the zero-shot classifier of the
dataset's hand-crafted template (:func:`vlprompt.backbones.text.zero_shot_weights`).

Settings: the adapter's options come from ``spec.learner`` (``--learner-opt KEY=VALUE``), checked against its config;
those left unset take the method's official values for the dataset and shot count
(:meth:`~vlprompt.adapters.FeatureAdapter.dataset_config`), then its config's defaults.
Of the training flags, an adapter run uses the precision, the feature-extraction batch size and workers, and — for a
method with views — ``--augment``: unset (``online``), the method's recipe's ``num_views`` augmented views; ``cached:K``: ``K``;
``none``: the test-transform features as the single view (``flip``/``crop_scale_min``: the user's, else the recipe's,
else TrainConfig's). An optimisation flag (``--epochs``, ``--lr``, …) sets the adapter's option of that name where
its config has one; any other is refused with the reason, as is ``--augment`` for a method without views.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import fields, replace
from pathlib import Path

import torch

from vlprompt._io import atomic_write_json
from vlprompt.adapters import AdapterData, FeatureAdapter, create_adapter, get_adapter_class
from vlprompt.engine import pipeline as P
from vlprompt.engine import train_state as TS
from vlprompt.engine.adapter_artifact import ADAPTER_JSON, ADAPTER_WEIGHTS, AdapterHead, save_adapter
from vlprompt.engine.config import TrainConfig, parse_augment
from vlprompt.engine.spec import RunSpec
from vlprompt.errors import ConfigError
from vlprompt.eval.metrics import classification_metrics
from vlprompt.runs.folder import base_config, load_inputs, log_eval_only, prepare_out, refuse_finished, test_features
from vlprompt.runs.probe import selection_set

_logger = logging.getLogger(__name__)

#: Optimisation settings of prompt training → their flag. An adapter run passes one the user set to the adapter's
#: option of the same name, or refuses it.
PROMPT_TRAIN_FLAGS = {"epochs": "--epochs", "batch_size": "--batch-size", "lr": "--lr", "momentum": "--momentum",
                      "weight_decay": "--weight-decay", "warmup_epochs": "--warmup-epochs",
                      "warmup_lr": "--warmup-lr", "text_chunk": "--text-chunk"}
#: Settings of the augmented views (used only by a method with ``uses_views``) → their flag.
VIEW_FLAGS = {"augment": "--augment", "flip": "--no-flip", "crop_scale_min": "--crop-scale-min"}


def adapter_label(cls: type[FeatureAdapter], config: dict) -> str:
    """Readable name of an adapter variant: its display name and the options in ``config`` (the user's) that differ
    from the defaults."""
    changed = [f"{f.name}={config[f.name]}" for f in fields(cls.config_class)
               if f.name in config and config[f.name] != f.default]
    return " ".join([cls.display_name or cls.method, *changed])


def adapter_settings(spec: RunSpec, cls: type[FeatureAdapter]) -> tuple[dict, TrainConfig, int]:
    """``(adapter options, the run's TrainConfig with the views resolved, number of augmented views)``.

    The number of views is 0 for a method without views and for ``--augment none`` (the test-transform features are
    then the only view). Raises :class:`~vlprompt.errors.ConfigError` naming every flag that does not apply.
    """
    options, default, problems = dict(spec.learner), TrainConfig(), []
    own = set(cls.config_class.__dataclass_fields__)
    for name, flag in PROMPT_TRAIN_FLAGS.items():
        value = getattr(spec.train, name)
        if value == getattr(default, name):
            continue  # not set (TrainConfig's default)
        if name not in own:
            problems.append(f"{flag} does not apply to '{cls.method}' (a feature-space adapter; its options, set "
                            f"with --learner-opt KEY=VALUE: {', '.join(sorted(own)) or 'none'})")
        elif options.setdefault(name, value) != value:
            problems.append(f"{flag} {value} contradicts --learner-opt {name}={options[name]}; give one of them")
    mode, _ = parse_augment(spec.train.augment)
    given = [flag for name, flag in VIEW_FLAGS.items() if getattr(spec.train, name) != getattr(default, name)]
    unused = [g for g in given if g != "--augment" or mode != "none"]  # --augment none: what it does anyway
    if not cls.uses_views and unused:
        problems.append(f"{', '.join(unused)}: '{cls.method}' fits on the test-transform features of the training "
                        "images and uses no augmented views; leave these out")
    if problems:
        raise ConfigError("; ".join(problems) + ".")
    if not cls.uses_views:
        return options, replace(spec.train, augment="none"), 0
    recipe, views = cls.recipe, resolve_views(cls, spec.train.augment)
    train = replace(spec.train, augment=f"cached:{views}" if views else "none",
                    flip=spec.train.flip if "--no-flip" in given else bool(recipe.get("flip", default.flip)),
                    crop_scale_min=spec.train.crop_scale_min if "--crop-scale-min" in given
                    else float(recipe.get("crop_scale_min", default.crop_scale_min)))
    return options, train, views


def resolve_views(cls: type[FeatureAdapter], augment: str) -> int:
    """The augmented views adapter ``cls`` fits on under ``--augment augment``: 0 without views or with ``none``
    (the test-transform features are its one view), ``K`` with ``cached:K``, else its recipe's ``num_views``."""
    if not cls.uses_views:
        return 0
    mode, k = parse_augment(augment)
    return {"online": int(cls.recipe.get("num_views", 1)), "cached": k, "none": 0}[mode]


def grid_train_config(train: TrainConfig, method: str) -> TrainConfig:
    """A grid's training settings as they apply to adapter ``method``: the precision and feature extraction, and the
    views settings for a method with views; the prompt-optimisation settings are the prompt learners' (an adapter
    runs its own recipe, :attr:`~vlprompt.adapters.FeatureAdapter.recipe`)."""
    cls = get_adapter_class(method)
    kept = {"precision": train.precision, "eval_batch_size": train.eval_batch_size, "num_workers": train.num_workers}
    if cls.uses_views:
        kept.update(augment=train.augment, flip=train.flip, crop_scale_min=train.crop_scale_min)
    return TrainConfig(**kept)


def _train_views(spec: RunSpec, backbone, data: P.FewShotData, num_views: int, progress: bool) -> torch.Tensor:
    """``[V, N, E]`` unnormalised fp32 features of ``num_views`` augmented views of the few-shot train images.

    From the on-disk view cache (:func:`vlprompt.engine.pipeline.cached_views`): the run's train transform
    (RandomResizedCrop with ``crop_scale_min``, ``flip``), augmentation seed = the run's seed, so CoOp's
    ``--augment cached:K`` and every adapter on the same images and settings share the views."""
    cfg = spec.train
    return P.cached_views(backbone, data.train, dataset=data.splits.name, split="train-fewshot", root=data.splits.root,
                          num_views=num_views, aug_seed=spec.seed, crop_scale=(cfg.crop_scale_min, 1.0),
                          flip=cfg.flip, precision=cfg.precision, cache_dir=spec.cache_dir,
                          batch_size=cfg.eval_batch_size, num_workers=cfg.num_workers, progress=progress).float()


def adapter_run(spec: RunSpec, progress: bool = False, backbone=None) -> dict:
    """Fit the adapter ``spec.method`` on the few-shot subset of ``spec`` and evaluate it on the test split.

    Args:
        spec: the run; ``spec.learner`` holds the adapter's options (left unchanged: the run records a derived copy).
        progress: show feature-extraction progress bars.
        backbone: reuse an already-built backbone (must be ``spec.backbone``).

    Returns:
        The metrics written to ``metrics.json``: test ``accuracy``/``macro_f1``/``per_class_accuracy``/``num_test``,
        ``val_accuracy`` (where the dataset has a few-shot val set that is not its test set), ``views``,
        ``train_seconds`` (features, views, zero-shot classifier and the fit), ``eval_seconds``, ``peak_memory_mb``.

    Raises:
        ConfigError: an unknown option, a flag that does not apply, a finished run in ``spec.out`` (without
            ``overwrite``/``resume``), or a dataset without training images.
    """
    from vlprompt.engine.launch import launched

    cls = get_adapter_class(spec.method)
    if launched():  # read from torchrun's environment, before any rendezvous: there is no execution to open
        raise ConfigError(f"--method {spec.method} is a feature-space adapter: it fits in one process on cached "
                          "features (seconds), so there is nothing to share between torchrun ranks; run it without "
                          "torchrun (plain `vlprompt train`).")
    if spec.resume and spec.overwrite:
        raise ConfigError(f"--resume and --overwrite contradict each other: --resume keeps the run in '{spec.out}', "
                          "--overwrite discards it; pass one of them.")
    if spec.tensorboard:
        from vlprompt.engine.tracking import require_tensorboard

        require_tensorboard()
    if not spec.resume:
        refuse_finished(spec)
    options, train, num_views = adapter_settings(spec, cls)
    create_adapter(spec.method, options)  # the user's options checked before anything is loaded
    inputs = load_inputs(spec, backbone)  # inputs are validated before the folder is created
    device, data, backbone = inputs.device, inputs.data, inputs.backbone
    if not data.train:
        raise ConfigError(f"dataset '{spec.dataset}' has no training images to fit '{spec.method}' on.")
    # the user's options > the official per-dataset/shot values > the config's defaults
    adapter = create_adapter(spec.method, {**cls.dataset_config(data.splits.name, spec.shots), **options})
    spec = replace(spec, learner=adapter.config_dict(), train=train)  # a derived copy: see RunSpec
    config = base_config(spec, data, backbone, None, spec.label or adapter_label(cls, options))
    config["adapter"] = {"views": num_views, "uses_views": cls.uses_views, "uses_val": cls.uses_val,
                         "new_classes": cls.new_classes, "recipe": dict(cls.recipe)}
    config = json.loads(json.dumps(config))  # as config.json holds it (tuples → lists), for the resume comparison
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    with TS.run_lock(out):
        kept = _open_folder(spec, out, config)
        if kept is not None:
            return kept
        return _fit_and_evaluate(spec, out, config, adapter, num_views, progress, device, data, backbone)


def _open_folder(spec: RunSpec, out: Path, config: dict) -> dict | None:
    """The metrics of a finished run of this configuration kept by ``resume``, else ``None`` after preparing the
    folder and writing ``config.json``."""
    if spec.resume and (out / "metrics.json").exists():
        TS.check_same_config(out, "a finished run", TS.read_json(out / "config.json"), config)
        _logger.warning("%s already holds this finished run; keeping it (--resume)", out)
        return TS.read_json(out / "metrics.json")
    prepare_out(out, spec.overwrite)
    for name in (ADAPTER_WEIGHTS, ADAPTER_JSON):
        (out / name).unlink(missing_ok=True)  # an unfinished earlier attempt must not leave a stale adapter behind
    atomic_write_json(out / "config.json", config)
    return None


def _fit_data(spec: RunSpec, cls: type[FeatureAdapter], num_views: int, progress: bool, data: P.FewShotData,
              backbone) -> tuple[AdapterData, dict]:
    """What the adapter is fitted on (cached features, views, the zero-shot classifier; on the backbone's device)
    and the JSON entries naming the selection set."""
    from vlprompt.backbones.text import zero_shot_weights

    device = backbone.device
    train_x = test_features(spec, backbone, data, "train-fewshot", data.train, progress).float()  # [N, E]
    views = None
    if cls.uses_views:  # [V, N, E]; --augment none: the test-transform features are the one view
        views = _train_views(spec, backbone, data, num_views, progress) if num_views else train_x[None]
    val, split = selection_set(data, spec.shots, spec.seed) if cls.uses_val else ([], None)
    val_x = test_features(spec, backbone, data, split, val, progress).float() if val else None
    text = zero_shot_weights(backbone, data.splits.classnames, [data.splits.template]).float()  # [C, E]
    fit = AdapterData(train=train_x.to(device), train_labels=P.labels_of(data.train).to(device), text=text.to(device),
                      logit_scale=float(backbone.logit_scale), views=None if views is None else views.to(device),
                      val=None if val_x is None else val_x.to(device),
                      val_labels=P.labels_of(val).to(device) if val else None, seed=spec.seed,
                      **_raw_text(backbone, data.splits.classnames, data.splits.template))
    extra = {"selection_split": split, "selection_images": P.relative_paths(val, data.splits.root)} if val else {}
    return fit, extra


def _raw_text(backbone, classnames: list[str], template: str) -> dict[str, torch.Tensor]:
    """``{"text_unnormalised": [C, E]}``: the class text features before normalisation (CLAP's start, TaskRes's
    base), the dataset's template filled as :func:`~vlprompt.backbones.text.zero_shot_weights` fills it, one
    text-encoder pass."""
    from vlprompt.backbones.text import TEXT_CHUNK

    prompts = [template.format(c.replace("_", " ")) for c in classnames]
    with torch.no_grad():
        raw = torch.cat([backbone.encode_text(prompts[i : i + TEXT_CHUNK]).float()
                         for i in range(0, len(prompts), TEXT_CHUNK)]).to(backbone.device)  # [C, E]
    return {"text_unnormalised": raw}


def _fit_and_evaluate(spec: RunSpec, out: Path, config: dict, adapter: FeatureAdapter, num_views: int,
                      progress: bool, device, data: P.FewShotData, backbone) -> dict:
    """Fit (features only: no image passes through the encoder from here until the evaluation), save, evaluate."""
    cls = type(adapter)
    t0 = time.perf_counter()
    fit_data, extra = _fit_data(spec, cls, num_views, progress, data, backbone)
    P.seed_everything(spec.seed)
    adapter.to(device)
    adapter.record = adapter.fit(fit_data)
    train_seconds = time.perf_counter() - t0
    save_adapter(out, adapter, data.splits.classnames, backbone.identity(), feature_dim=fit_data.train.shape[1],
                 logit_scale=fit_data.logit_scale, template=data.splits.template, extra=extra)

    t1 = time.perf_counter()
    adapter.eval()
    head = AdapterHead(adapter, data.splits.classnames, device=device)
    test_x = test_features(spec, backbone, data, "test", data.splits.test, progress)
    metrics = classification_metrics(head.logits(test_x).argmax(-1).cpu(), P.labels_of(data.splits.test),
                                     data.splits.num_classes)
    if data.val and not data.splits.val_is_test:
        val_x = test_features(spec, backbone, data, "val-fewshot", data.val, progress)
        metrics["val_accuracy"] = classification_metrics(head.logits(val_x).argmax(-1).cpu(),
                                                         P.labels_of(data.val), data.splits.num_classes)["accuracy"]
    metrics.update(views=num_views, train_seconds=train_seconds, eval_seconds=time.perf_counter() - t1,
                   peak_memory_mb=P.peak_memory_mb(device))
    log_eval_only(spec, out, metrics, config)
    atomic_write_json(out / "metrics.json", metrics)
    return metrics


__all__ = ["PROMPT_TRAIN_FLAGS", "VIEW_FLAGS", "adapter_label", "adapter_run", "adapter_settings",
           "grid_train_config", "resolve_views"]
