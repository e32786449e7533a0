"""Run folders (DESIGN.md §7): train a prompt, run zero-shot, evaluate a saved prompt on another dataset.

Each function writes ``config.json`` first (so an unfinished run is recognisable), ``history.jsonl`` per epoch, the
learned prompt, and ``metrics.json`` last: a folder with ``metrics.json`` is a finished run, and it is not
overwritten without ``overwrite=True``.

**Resuming.** Training saves its full state after every epoch (:mod:`vlprompt.engine.train_state`). Running the
same training again into a folder that holds an unfinished run of the same resolved configuration continues after
the last completed epoch and ends with the same context and metrics as an uninterrupted run; a different
configuration is refused (naming the differences) unless ``overwrite``. With ``resume=True`` a finished run of the
same configuration is kept and its metrics returned, so a grid can simply be restarted.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import time
from dataclasses import fields, replace
from pathlib import Path

import torch

from vlprompt import __version__
from vlprompt._io import append_jsonl, atomic_write_json
from vlprompt.backbones import create_backbone
from vlprompt.engine import distributed as D
from vlprompt.engine import pipeline as P
from vlprompt.engine import tracking as T
from vlprompt.engine import train_state as TS
from vlprompt.engine.checkpoint import LEARNER_JSON, LEARNER_WEIGHTS, save_learner
from vlprompt.engine.config import parse_augment
from vlprompt.engine.fit import FeatureBankBatches, fit, make_optimizer, make_scaler
from vlprompt.engine.model import PromptModel
from vlprompt.engine.recipe import method_template, resolve_train_config, train_drop_last
from vlprompt.engine.spec import RunSpec, spec_to_dict
from vlprompt.errors import ConfigError
from vlprompt.prompts import CoOpConfig, create_prompt_learner, get_prompt_learner_class, list_prompt_learners

_logger = logging.getLogger(__name__)


def default_label(method: str, learner: dict) -> str:
    """Readable variant name used to group runs in reports, e.g. ``CoOp M=16 end`` or ``CoOp M=4 init CSC``.

    Options a method adds to CoOp's (e.g. KgCoOp's ``kg_weight``) are appended when they differ from the method's
    default; unregistered methods are named as they are.
    """
    if method not in list_prompt_learners():
        return method
    cls = get_prompt_learner_class(method)
    m = len(learner["ctx_init"].split()) if learner.get("ctx_init") else learner.get("n_ctx", 16)
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


def _refuse_finished(spec: RunSpec) -> None:
    """Fail early (before any loading) when ``spec.out`` holds a finished run and ``overwrite`` is not set."""
    if (Path(spec.out) / "metrics.json").exists() and not spec.overwrite:
        prepare_out(spec.out, False)  # raises with the standard message


def _versions() -> dict:
    import open_clip

    return {"vlprompt": __version__, "torch": torch.__version__, "open_clip": open_clip.__version__,
            "python": platform.python_version()}


def _data_options(spec: RunSpec) -> dict:
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


def _base_config(spec: RunSpec, data: P.FewShotData, backbone, epochs: int | None, label: str) -> dict:
    s = data.splits
    return {
        "label": label,
        "method": spec.method,
        "dataset": {"name": s.name, "spec": spec.dataset, "root": s.root, "num_classes": s.num_classes,
                    "classnames": s.classnames, "template": s.template, "info": s.info},
        "shots": spec.shots,
        "seed": spec.seed,
        "subsample": spec.subsample,
        "data": _data_options(spec),  # issue 17: --root, --classnames, … as given (for re-runs)
        "backbone": backbone.identity(),
        "learner": dict(spec.learner),
        "train": {**spec.train.to_dict(), "epochs": epochs},
        "device": str(backbone.device),
        "threads": torch.get_num_threads(),
        "versions": _versions(),
        "fewshot": {"train": P.relative_paths(data.train, s.root), "val": P.relative_paths(data.val, s.root)},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _load(spec: RunSpec, backbone=None):
    """Device, data and backbone of a run (``backbone`` reuses an already-built one with the same identity)."""
    device = D.local_device(P.resolve_device(spec.device))  # under torchrun: cuda:LOCAL_RANK
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
        from vlprompt.engine.replay import check_recorded

        check_recorded(spec.expect, data, backbone)
    return backbone.device, data, backbone


def _test_features(spec: RunSpec, backbone, data: P.FewShotData, split: str, records, progress: bool) -> torch.Tensor:
    from vlprompt.data.transforms import build_transform, transform_fingerprint

    tf = build_transform(backbone.preprocess, train=False)
    return P.cached_features(
        backbone, records, transform_fingerprint(backbone.preprocess, False), tf, dataset=data.splits.name,
        split=split, root=data.splits.root, precision=spec.train.precision, cache_dir=spec.cache_dir,
        batch_size=spec.train.eval_batch_size, num_workers=spec.train.num_workers, progress=progress,
    )


def _train_batches(spec: RunSpec, model: PromptModel, data: P.FewShotData, progress: bool):
    """The per-epoch batch source for the chosen --augment mode and whether it yields features."""
    from torch.utils.data import DataLoader

    from vlprompt.data.dataset import ImageDataset
    from vlprompt.data.transforms import build_transform

    cfg, backbone = spec.train, model.backbone
    mode, k = parse_augment(cfg.augment)
    gen = torch.Generator().manual_seed(spec.seed)
    labels = P.labels_of(data.train)
    if mode == "none":
        feats = _test_features(spec, backbone, data, "train-fewshot", data.train, progress)
        bank = torch.nn.functional.normalize(feats, dim=-1).unsqueeze(0)  # (1, N, E)
        return FeatureBankBatches(bank.to(backbone.device), labels, cfg.batch_size, gen), True
    tf = build_transform(backbone.preprocess, train=True, flip=cfg.flip, crop_scale=(cfg.crop_scale_min, 1.0))
    if mode == "cached":
        views = []
        for v in range(k):  # K augmented views, each from the seeded global RNG stream
            f = P.extract_features(backbone, data.train, tf, batch_size=cfg.eval_batch_size, precision=cfg.precision,
                                   progress=progress, desc=f"view {v + 1}/{k}", augmented=True)
            views.append(torch.nn.functional.normalize(f, dim=-1))
        return FeatureBankBatches(torch.stack(views).to(backbone.device), labels, cfg.batch_size, gen), True
    loader = DataLoader(ImageDataset(data.train, tf), batch_size=cfg.batch_size, shuffle=True, generator=gen,
                        drop_last=train_drop_last(len(data.train), cfg.batch_size), num_workers=cfg.num_workers)
    return loader, False


def train_run(spec: RunSpec, progress: bool = False, backbone=None) -> dict:
    """Train a prompt with ``spec`` into ``spec.out`` and return its metrics (``backbone``: reuse a built one).

    An unfinished run of the same configuration in ``spec.out`` is resumed (see the module docstring). The folder
    is locked while training: a second process training into it is refused. Launched with torchrun, the ranks share
    the work (:mod:`vlprompt.engine.distributed`) and only rank 0 touches ``spec.out``.
    """
    out = Path(spec.out)
    if spec.resume and spec.overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: --resume continues or keeps the run in "
                          f"'{out}', --overwrite discards it; pass one of them.")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out '{out}' is a file, not a folder; choose a folder for the run.")
    if spec.tensorboard:
        T.require_tensorboard()  # a missing package is reported before anything is loaded
    if not spec.resume:
        _refuse_finished(spec)
    with D.process_group(P.resolve_device(spec.device)):
        loaded = _load(spec, backbone)  # inputs are validated before the folder is created or touched
        if not loaded[1].train:
            raise ConfigError(f"dataset '{spec.dataset}' has no training images.")
        with contextlib.ExitStack() as lock:  # only rank 0 creates, locks and writes the folder
            D.on_main(_lock_folder, out, lock)
            return _train_locked(spec, out, progress and D.is_main(), lock, *loaded)


def _lock_folder(out: Path, stack: contextlib.ExitStack) -> None:
    """Create ``out`` and hold its run lock until ``stack`` closes."""
    out.mkdir(parents=True, exist_ok=True)
    stack.enter_context(TS.run_lock(out))


def _open_folder(spec: RunSpec, out: Path, config: dict, epochs: int) -> tuple[dict | None, int, list[dict], dict]:
    """Prepare the locked run folder for ``config``: ``(metrics of a finished run kept by --resume, else None,
    epoch to resume after, history of the epochs before it, the config as written)``."""
    finished = (out / "metrics.json").exists() and not spec.overwrite
    if finished and not spec.resume:
        prepare_out(out, False)  # raises (another process finished it meanwhile)
    if spec.overwrite:
        prepare_out(out, True)
    TS.remove_stale_temporaries(out)
    if finished:  # --resume on a finished run: keep it if it is this run
        TS.check_same_config(out, "a finished run", TS.read_json(out / "config.json"), config)
        _logger.warning("%s already holds this finished run; keeping it (--resume)", out)
        return TS.read_json(out / "metrics.json"), 0, [], config
    start = TS.resume_point(out, config)
    if start:
        old = TS.read_json(out / "config.json")
        config["started"] = old.get("started", config["started"])
        config["resumes"] = [*old.get("resumes", []), {"after_epoch": start, "at": time.strftime("%Y-%m-%dT%H:%M:%S")}]
        prior = TS.truncate_history(out / "history.jsonl", start)
        _logger.warning("resuming %s after epoch %d of %d", out, start, epochs)
    else:
        prepare_out(out, True)  # stale files of an unfinished run that never completed an epoch, or of another run
        prior = []
    atomic_write_json(out / "config.json", config)
    return None, start, prior, config


def _train_locked(spec: RunSpec, out: Path, progress: bool, stack: contextlib.ExitStack, device, data, backbone) -> dict:
    P.seed_everything(spec.seed)
    template = method_template(spec.method, data.splits.name, data.splits.template)  # KgCoOp: its own templates
    learner = create_prompt_learner(spec.method, backbone, data.splits.classnames, spec.learner,
                                    template=template).to(device)
    # The run's resolved spec, derived (the caller's is frozen and stays as given): the learner's full config, and
    # the user's values, else the method's own recipe (CoCoOp: batch 1, 10 epochs; KgCoOp: 128, 100), else CoOp's
    # (batch 32, epochs by shot count): resolved once here, passed down, and recorded resolved in config.json
    spec = replace(spec, learner=learner.config_dict(),
                   train=resolve_train_config(spec.train, spec.method, spec.shots, data.splits.name))
    epochs = spec.train.epochs
    config = _base_config(spec, data, backbone, epochs, spec.label or default_label(spec.method, spec.learner))
    kept, start, prior, config = D.on_main(_open_folder, spec, out, config, epochs)
    if kept is not None:
        return kept
    model = PromptModel(backbone, learner, text_chunk=spec.train.text_chunk)

    t0 = time.perf_counter()
    batches, are_feats = _train_batches(spec, model, data, progress) if start < epochs else ([], True)
    optimizer, scaler = make_optimizer(learner, spec.train), make_scaler(spec.train, device)
    generator = getattr(batches, "generator", None)
    digest = TS.config_digest(config)
    if start:
        D.on_main(TS.load_train_state, out, learner=learner, optimizer=optimizer, generator=generator, scaler=scaler,
                  digest=digest)
    D.sync_train_state(learner, optimizer, generator, scaler)  # torchrun: every rank from rank 0's state

    last_save = [time.perf_counter()]
    # TensorBoard (rank 0 only; a NullTracker elsewhere or when off), opened once the folder is resolved; closed
    # (flushed) however the run ends, when ``stack`` closes, before the folder's lock is released
    tracker = _open_tracker(spec, out, start, len(batches) if start < epochs else None, prior)
    stack.callback(tracker.close)

    def on_epoch(record: dict, _opt) -> None:
        due = time.perf_counter() - last_save[0] >= spec.state_every_seconds
        # History first (fsynced when a state follows): a kill before the state is saved is undone on resume.
        append_jsonl(out / "history.jsonl", record, fsync=due)
        tracker.log_scalars(T.epoch_scalars(record), record["epoch"])
        tracker.flush()
        if due:
            TS.save_train_state(out, epoch=record["epoch"], learner=learner, optimizer=optimizer,
                                generator=generator, scaler=scaler, digest=digest)
            last_save[0] = time.perf_counter()

    def on_step(record: dict) -> None:
        tracker.log_scalars(T.step_scalars(record), record["global_step"])

    fit(model, batches, spec.train, epochs, images_are_features=are_feats, progress=progress,
        on_epoch=on_epoch if D.is_main() else None, start_epoch=start + 1, optimizer=optimizer, scaler=scaler,
        on_step=on_step if spec.tensorboard and D.is_main() else None)  # None: nothing at all per step
    train_seconds = time.perf_counter() - t0 + sum(float(r.get("seconds", 0.0)) for r in prior)
    D.on_main(save_learner, out, learner, backbone)

    t1 = time.perf_counter()
    with torch.no_grad():
        text = model.class_text_features()  # once per evaluation, not per batch (None: per-image prompts)
        metrics, _ = P.evaluate_model(model, _test_features(spec, backbone, data, "test", data.splits.test, progress),
                                      P.labels_of(data.splits.test), text)
        if data.val and not data.splits.val_is_test:
            val_metrics, _ = P.evaluate_model(
                model, _test_features(spec, backbone, data, "val-fewshot", data.val, progress),
                P.labels_of(data.val), text)
            metrics["val_accuracy"] = val_metrics["accuracy"]
    metrics.update(train_seconds=train_seconds, eval_seconds=time.perf_counter() - t1,
                   peak_memory_mb=P.peak_memory_mb(device), epochs=epochs)
    T.log_final(tracker, metrics, epochs, config)  # before metrics.json: a finished run has its eval events
    D.on_main(_finish, out, metrics)
    return metrics


def _open_tracker(spec: RunSpec, out: Path, start: int, steps_per_epoch: int | None, prior: list[dict]) -> T.Tracker:
    """The run's tracker: a :class:`~vlprompt.engine.tracking.TensorBoardTracker` on rank 0 with
    ``spec.tensorboard``, else a :class:`~vlprompt.engine.tracking.NullTracker`. An error opening it on rank 0 is
    raised on every rank (``D.on_main``), so no rank waits in a later collective."""
    if not spec.tensorboard:
        return T.NullTracker()
    opened: list[T.Tracker] = []
    D.on_main(lambda: opened.append(T.open_run_tracker(out, resume_after_epoch=start, steps_per_epoch=steps_per_epoch,
                                                       prior_history=prior)))
    return opened[0] if opened else T.NullTracker()


def _finish(out: Path, metrics: dict) -> None:
    """Mark the run finished: ``metrics.json`` written, the resumable state removed."""
    atomic_write_json(out / "metrics.json", metrics)
    TS.remove_train_state(out)


def zeroshot_run(spec: RunSpec, templates: list[str], progress: bool = False, backbone=None) -> dict:
    """Zero-shot CLIP with ``templates`` on the test split of ``spec.dataset``; writes a run folder."""
    from vlprompt.data.templates import check_template
    from vlprompt.eval.zeroshot import zero_shot_weights

    if not templates:
        raise ConfigError("no zero-shot templates given.")
    for t in templates:
        check_template(t)
    if spec.tensorboard:
        T.require_tensorboard()
    _refuse_finished(spec)
    spec = replace(spec, method="zeroshot", learner={"templates": list(templates)})  # a derived copy: see RunSpec
    device, data, backbone = _load(spec, backbone)
    out = prepare_out(spec.out, spec.overwrite)  # after the inputs are validated: a failed call leaves no folder
    label = spec.label or ("Zero-shot CLIP" if len(templates) == 1 else f"Zero-shot CLIP ({len(templates)} templates)")
    config = _base_config(spec, data, backbone, None, label)
    atomic_write_json(out / "config.json", config)
    t1 = time.perf_counter()
    weights = zero_shot_weights(backbone, data.splits.classnames, templates)
    metrics, _ = P.evaluate_features(weights, _test_features(spec, backbone, data, "test", data.splits.test, progress),
                                     P.labels_of(data.splits.test), backbone.logit_scale)
    metrics.update(train_seconds=0.0, eval_seconds=time.perf_counter() - t1, peak_memory_mb=P.peak_memory_mb(device))
    log_eval_only(spec, out, metrics, config)
    atomic_write_json(out / "metrics.json", metrics)
    return metrics


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


def eval_run(run_dir: str, spec: RunSpec, progress: bool = False, *, backbone=None) -> dict:
    """Evaluate the prompt saved in ``run_dir`` on the test split of ``spec.dataset``; writes ``spec.out``.

    ``backbone`` reuses a built one (a grid's: the prompt's own backbone in fp32, which the identity check of
    :func:`~vlprompt.engine.checkpoint.load_learner` verifies); ``None`` builds it from the run folder's record.
    Launched with torchrun, the ranks share the feature extraction and only rank 0 writes ``spec.out``.
    """
    with D.process_group(P.resolve_device(spec.device)):
        return _eval(run_dir, spec, progress and D.is_main(), backbone)


def _eval(run_dir: str, spec: RunSpec, progress: bool, backbone=None) -> dict:
    from vlprompt.api import PromptClassifier

    src = TS.read_json(Path(run_dir) / "config.json") if (Path(run_dir) / "config.json").exists() else {}
    _refuse_finished(spec)
    device = D.local_device(P.resolve_device(spec.device))
    data = P.prepare_data(spec.dataset, spec.root, None, spec.seed, subsample=spec.subsample,
                          classnames_file=spec.classnames_file, strict=spec.strict,
                          allow_outside_root=spec.allow_outside_root)
    clf = PromptClassifier.load(run_dir, device=device, classnames=data.splits.classnames,
                                pretrained=spec.pretrained, backbone=backbone)
    spec = replace(spec, method=clf.method, backbone=clf.backbone.name)  # a derived copy: see RunSpec
    out = D.on_main(prepare_out, spec.out, spec.overwrite)  # after the inputs are validated: no folder on failure
    config = {**_base_config(spec, data, clf.backbone, None, src.get("label", clf.method)),
              "shots": src.get("shots"), "seed": src.get("seed", spec.seed), "learner": clf.learner_config,
              "evaluated_from": str(Path(run_dir).resolve()), "source_dataset": src.get("dataset", {}).get("name")}
    D.on_main(atomic_write_json, out / "config.json", config)
    t1 = time.perf_counter()
    metrics, _ = P.evaluate_model(clf.model, _test_features(spec, clf.backbone, data, "test", data.splits.test,
                                  progress), P.labels_of(data.splits.test), clf.baked_text_features)
    metrics.update(train_seconds=0.0, eval_seconds=time.perf_counter() - t1, peak_memory_mb=P.peak_memory_mb(device))
    D.on_main(atomic_write_json, out / "metrics.json", metrics)
    return metrics


__all__ = ["RunSpec", "train_run", "zeroshot_run", "eval_run", "default_label", "prepare_out", "spec_to_dict"]
