"""The run folder's shared steps (DESIGN.md §7), used by every run function (:mod:`vlprompt.runs.train`,
:mod:`vlprompt.runs.evaluate`, :mod:`vlprompt.runs.probe`, :mod:`vlprompt.runs.adapter_run`): the run's label,
creating (or refusing to replace) its folder, loading and validating its inputs (:class:`RunInputs`), the common
entries of ``config.json``, the cached test-transform features of a split, and the ``eval/*`` events of a run that
trains nothing.

Application layer (runs); moved here from ``engine/run.py`` by issue 13 (that path re-exports these names).
"""

from __future__ import annotations

import platform
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from vlprompt import __version__
from vlprompt.backbones import Backbone, create_backbone
from vlprompt.engine import pipeline as P
from vlprompt.engine.checkpoint import LEARNER_JSON, LEARNER_WEIGHTS
from vlprompt.engine.execution import Execution
from vlprompt.engine.launch import local_device
from vlprompt.engine.spec import RunSpec
from vlprompt.errors import ConfigError
from vlprompt.prompts import CoOpConfig, get_prompt_learner_class, list_prompt_learners
from vlprompt.runs import state as TS
from vlprompt.runs import tracking as T


def default_label(method: str, learner: dict) -> str:
    """Readable variant name used to group runs in reports, e.g. ``CoOp M=16 end`` or ``CoOp M=4 init CSC``.

    ``M`` is the number of learned input-layer tokens: the init phrase's words for CoOp, ``n_ctx`` for the deep
    methods (:class:`~vlprompt.prompts.deep.DeepPromptConfig`: the first ``n_ctx`` tokens of the phrase are learned).

    Options a method adds to CoOp's (e.g. KgCoOp's ``kg_weight``) are appended when they differ from the method's
    default; unregistered methods are named as they are.
    """
    if method not in list_prompt_learners():
        return method
    from vlprompt.prompts.deep import DeepPromptConfig

    cls = get_prompt_learner_class(method)
    m = len(learner["ctx_init"].split()) if learner.get("ctx_init") else learner.get("n_ctx", 16)
    if issubclass(cls.config_class, DeepPromptConfig):  # the official deep rule: n_ctx tokens of the phrase learned
        m = learner.get("n_ctx", cls.config_class.n_ctx)
    if "n_ctx" not in cls.config_class.__dataclass_fields__:  # nothing learned text-side (VPT-deep): no M, no init
        parts = [cls.display_name or method]
    else:
        parts = [f"{cls.display_name or method} M={m}", learner.get("class_token_position", "end")]
        if learner.get("ctx_init"):
            parts.append(f"init '{learner['ctx_init']}'")
        if learner.get("csc"):
            parts.append("CSC")
    coop_fields = set(CoOpConfig.__dataclass_fields__)
    for f in fields(cls.config_class):
        if f.name not in coop_fields and f.default is not None and learner.get(f.name, f.default) != f.default:
            parts.append(f"{f.name}={learner[f.name]}")
    return " ".join(parts)


def prepare_out(out: str | Path, overwrite: bool) -> Path:
    """Create the run folder; refuse to replace a finished run unless ``overwrite``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out '{out}' is a file, not a folder; choose a folder for the run.")
    if (out / "metrics.json").exists():
        if not overwrite:
            raise ConfigError(f"--out '{out}' already holds a finished run (metrics.json); pass --overwrite to replace "
                              "it (or --resume to keep it).")
        for name in ("metrics.json", "history.jsonl", LEARNER_JSON, LEARNER_WEIGHTS, "config.json"):
            (out / name).unlink(missing_ok=True)
    (out / "history.jsonl").unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    TS.remove_train_state(out)
    T.remove_event_files(out)  # TensorBoard events of the replaced run
    return out


def refuse_finished(spec: RunSpec) -> None:
    """Fail early (before any loading) when ``spec.out`` holds a finished run and ``overwrite`` is not set."""
    if (Path(spec.out) / "metrics.json").exists() and not spec.overwrite:
        prepare_out(spec.out, False)  # raises with the standard message


def versions() -> dict:
    import open_clip

    return {"vlprompt": __version__, "torch": torch.__version__, "open_clip": open_clip.__version__,
            "python": platform.python_version()}


def data_options(spec: RunSpec) -> dict:
    """The data options that are not part of ``dataset`` (issue 17: what ``--config RUN/config.json`` needs to draw
    the same data again). Paths are absolute; a relative ``folder:``/``csv:``/``split:`` path given without
    ``--root`` records the working directory as the root it was resolved against."""
    import os

    from vlprompt.data.load import CUSTOM_PREFIXES

    def absolute(path: str | None) -> str | None:
        return os.path.abspath(os.path.expanduser(path)) if path else None

    root = absolute(spec.root)
    prefix = next((p for p in CUSTOM_PREFIXES if spec.dataset.startswith(p)), None)
    if root is None and prefix and not os.path.isabs(os.path.expanduser(spec.dataset[len(prefix):])):
        root = os.getcwd()
    return {"root": root, "classnames_file": absolute(spec.classnames_file), "fewshot_file": absolute(spec.fewshot_file),
            "strict": spec.strict, "allow_outside_root": spec.allow_outside_root}


def base_config(spec: RunSpec, data: P.FewShotData, backbone, epochs: int | None, label: str) -> dict:
    s = data.splits
    return {
        "label": label,
        "method": spec.method,
        "dataset": {"name": s.name, "spec": spec.dataset, "root": s.root, "num_classes": s.num_classes,
                    "classnames": s.classnames, "template": s.template, "info": s.info},
        "shots": spec.shots,
        "seed": spec.seed,
        "subsample": spec.subsample,
        "data": data_options(spec),  # issue 17: --root, --classnames, … as given (for re-runs)
        "backbone": backbone.identity(),
        "learner": dict(spec.learner),
        "train": {**spec.train.to_dict(), "epochs": epochs},
        "device": str(backbone.device),
        "threads": torch.get_num_threads(),
        "versions": versions(),
        "fewshot": {"train": P.relative_paths(data.train, s.root), "val": P.relative_paths(data.val, s.root)},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


@dataclass(frozen=True)
class RunInputs:
    """What a run is computed from, loaded and validated before its folder is touched (:func:`load_inputs`): the
    ``device`` (the backbone's; under torchrun ``cuda:LOCAL_RANK``), the ``data`` (splits and few-shot subsets), the
    built ``backbone``."""

    device: torch.device
    data: P.FewShotData
    backbone: Backbone

    def __iter__(self) -> Iterator[Any]:
        # ``device, data, backbone = load_inputs(...)``: kept for callers written against the former tuple; new
        # code reads the names
        return iter((self.device, self.data, self.backbone))


def load_inputs(spec: RunSpec, backbone=None, execution: Execution | None = None) -> RunInputs:
    """Device, data and backbone of a run (``backbone`` reuses an already-built one with the same identity) on the
    device of ``execution`` (``None``: this rank's device of ``spec.device``)."""
    # under torchrun: cuda:LOCAL_RANK
    device = execution.device if execution is not None else local_device(P.resolve_device(spec.device))
    P.check_precision(spec.train.precision, device)
    data = P.prepare_data(spec.dataset, spec.root, spec.shots, spec.seed, subsample=spec.subsample,
                          classnames_file=spec.classnames_file, strict=spec.strict,
                          allow_outside_root=spec.allow_outside_root, fewshot_file=spec.fewshot_file)
    if not data.splits.test:
        raise ConfigError(f"dataset '{spec.dataset}' has no test images to evaluate on.")
    if backbone is None:
        backbone = create_backbone(spec.backbone, spec.pretrained, device=device, precision=spec.train.precision)
    elif backbone.name != spec.backbone:
        raise ConfigError(f"the backbone passed in is '{backbone.name}' but the run asks for '{spec.backbone}'.")
    if spec.expect:  # issue 17: a re-run of a recorded run must find the recorded images and weights
        from vlprompt.runs.replay import check_recorded

        check_recorded(spec.expect, data, backbone)
    return RunInputs(backbone.device, data, backbone)


def test_features(spec: RunSpec, backbone, data: P.FewShotData, split: str, records, progress: bool,
                  execution: Execution | None = None) -> torch.Tensor:
    """Test-transform features ``(N, E)`` of ``records`` from the feature cache (extracted on a miss, shared over the
    ranks of ``execution``; ``None``: the current one)."""
    from vlprompt.data.transforms import build_transform, transform_fingerprint

    tf = build_transform(backbone.preprocess, train=False)
    return P.cached_features(
        backbone, records, transform_fingerprint(backbone.preprocess, False), tf, dataset=data.splits.name,
        split=split, root=data.splits.root, precision=spec.train.precision, cache_dir=spec.cache_dir,
        batch_size=spec.train.eval_batch_size, num_workers=spec.train.num_workers, progress=progress,
        execution=execution,
    )


def evaluate_split(spec: RunSpec, model, data: P.FewShotData, split: str, records, progress: bool,
                   execution: Execution | None = None, text_features: torch.Tensor | None = None
                   ) -> tuple[dict, torch.Tensor]:  # fmt: skip
    """``(metrics, logits [N, C])`` of the prompt ``model`` (a :class:`~vlprompt.engine.model.PromptModel`) on
    ``records``, the images of ``split``: the test-transform features from the feature cache (:func:`test_features`),
    or, for a learner that ``prompts_image``, the images through the prompted tower, never cached
    (:func:`vlprompt.engine.prompted.prompted_metrics`). ``text_features``: the model's ``[C, E]`` class text
    features when already computed (``None``: computed once here, or per image for a conditional learner)."""
    if not model.learner.prompts_image:
        feats = test_features(spec, model.backbone, data, split, records, progress, execution)
        return P.evaluate_model(model, feats, P.labels_of(records), text_features)
    from vlprompt.data.transforms import build_transform
    from vlprompt.engine.prompted import prompted_metrics

    return prompted_metrics(model, records, build_transform(model.backbone.preprocess, train=False), text_features,
                            batch_size=spec.train.eval_batch_size, num_workers=spec.train.num_workers,
                            precision=spec.train.precision, progress=progress, desc=f"{split} (prompted tower)",
                            execution=execution)


def log_eval_only(spec: RunSpec, out: Path, metrics: dict, config: dict) -> None:
    """With ``spec.tensorboard``: the ``eval/*`` scalars (step 0) and hparams of a run that trains no prompt
    (zero-shot, linear probe) into a fresh ``out/tensorboard/``."""
    if not spec.tensorboard:
        return
    tracker = T.eval_only_tracker(out)
    try:
        T.log_final(tracker, metrics, 0, config)
    finally:
        tracker.close()


__all__ = ["RunInputs", "base_config", "data_options", "default_label", "evaluate_split", "load_inputs", "log_eval_only", "prepare_out", "refuse_finished", "test_features", "versions"]
