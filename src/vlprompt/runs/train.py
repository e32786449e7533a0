"""Train a prompt into a run folder (DESIGN.md §7); moved here from ``engine/run.py`` by issue 13 (that path
re-exports :func:`train_run`).

Each function writes ``config.json`` first (so an unfinished run is recognisable), ``history.jsonl`` per epoch, the
learned prompt, and ``metrics.json`` last: a folder with ``metrics.json`` is a finished run, and it is not
overwritten without ``overwrite=True``.

**Resuming.** Training saves its full state after every epoch (:mod:`vlprompt.runs.state`). Running the
same training again into a folder that holds an unfinished run of the same resolved configuration continues after
the last completed epoch and ends with the same context and metrics as an uninterrupted run; a different
configuration is refused (naming the differences) unless ``overwrite``. With ``resume=True`` a finished run of the
same configuration is kept and its metrics returned, so a grid can simply be restarted.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import replace
from pathlib import Path

import torch

from vlprompt._io import append_jsonl, atomic_write_json
from vlprompt.engine import pipeline as P
from vlprompt.engine.checkpoint import save_learner
from vlprompt.engine.config import parse_augment
from vlprompt.engine.execution import Execution, open_execution
from vlprompt.engine.fit import FeatureBankBatches, fit, make_optimizer, make_scaler
from vlprompt.engine.model import PromptModel
from vlprompt.engine.recipe import method_template, resolve_train_config, train_drop_last
from vlprompt.engine.spec import RunSpec
from vlprompt.errors import ConfigError
from vlprompt.prompts import create_prompt_learner
from vlprompt.runs import state as TS
from vlprompt.runs import tracking as T
from vlprompt.runs.folder import (
    RunInputs,
    base_config,
    default_label,
    evaluate_split,
    load_inputs,
    prepare_out,
    refuse_finished,
    test_features,
)

_logger = logging.getLogger(__name__)


def _train_batches(spec: RunSpec, model: PromptModel, data: P.FewShotData, progress: bool):
    """The per-epoch batch source for the chosen --augment mode and whether it yields features. A learner that
    ``prompts_image`` gets image batches in every mode: ``online`` augmented, ``none`` through the test transform."""
    from torch.utils.data import DataLoader

    from vlprompt.data.dataset import ImageDataset
    from vlprompt.data.transforms import build_transform

    cfg, backbone = spec.train, model.backbone
    mode, k = parse_augment(cfg.augment)
    gen = torch.Generator().manual_seed(spec.seed)
    labels = P.labels_of(data.train)
    prompted = model.learner.prompts_image  # trains on images, never features (cached:K refused before)
    if mode == "none" and not prompted:
        feats = test_features(spec, backbone, data, "train-fewshot", data.train, progress, model.execution)
        bank = torch.nn.functional.normalize(feats, dim=-1).unsqueeze(0)  # (1, N, E)
        return FeatureBankBatches(bank.to(backbone.device), labels, cfg.batch_size, gen), True
    if mode == "cached":  # K views from the feature cache, shared with every method and re-run on these images
        feats = P.cached_views(backbone, data.train, dataset=data.splits.name, split="train-fewshot",
                               root=data.splits.root, num_views=k, aug_seed=spec.seed,
                               crop_scale=(cfg.crop_scale_min, 1.0), flip=cfg.flip, precision=cfg.precision,
                               cache_dir=spec.cache_dir, batch_size=cfg.eval_batch_size, num_workers=cfg.num_workers,
                               progress=progress, execution=model.execution)  # (K, N, E)
        bank = torch.nn.functional.normalize(feats, dim=-1)
        return FeatureBankBatches(bank.to(backbone.device), labels, cfg.batch_size, gen), True
    # online: the train transform; none (a prompted tower): the test transform, unaugmented images
    tf = (build_transform(backbone.preprocess, train=True, flip=cfg.flip, crop_scale=(cfg.crop_scale_min, 1.0))
          if mode == "online" else build_transform(backbone.preprocess, train=False))
    loader = DataLoader(ImageDataset(data.train, tf), batch_size=cfg.batch_size, shuffle=True, generator=gen,
                        drop_last=train_drop_last(len(data.train), cfg.batch_size), num_workers=cfg.num_workers)
    return loader, False


def train_run(spec: RunSpec, progress: bool = False, backbone=None) -> dict:
    """Train a prompt with ``spec`` into ``spec.out`` and return its metrics (``backbone``: reuse a built one).

    An unfinished run of the same configuration in ``spec.out`` is resumed (see the module docstring). The folder
    is locked while training: a second process training into it is refused. Launched with torchrun, the ranks share
    the work (:mod:`vlprompt.engine.execution`) and only rank 0 touches ``spec.out``.
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
        refuse_finished(spec)
    with open_execution(P.resolve_device(spec.device)) as ex:  # one process, or this rank of a torchrun launch
        inputs = load_inputs(spec, backbone, ex)  # inputs are validated before the folder is created or touched
        if not inputs.data.train:
            raise ConfigError(f"dataset '{spec.dataset}' has no training images.")
        with contextlib.ExitStack() as lock:  # only rank 0 creates, locks and writes the folder
            ex.on_main(_lock_folder, out, lock)
            return _train_locked(spec, out, progress and ex.is_main, lock, ex, inputs)


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


def _train_locked(spec: RunSpec, out: Path, progress: bool, stack: contextlib.ExitStack, ex: Execution,
                  inputs: RunInputs) -> dict:
    """Train into the locked ``out``: resolve the spec, open (or resume) the folder, fit, save, evaluate, finish."""
    device, data, backbone = inputs.device, inputs.data, inputs.backbone
    spec, learner = _resolve(spec, inputs)
    _refuse_cached_views(spec, learner)
    epochs = spec.train.epochs
    config = base_config(spec, data, backbone, epochs, spec.label or default_label(spec.method, spec.learner))
    kept, start, prior, config = ex.on_main(_open_folder, spec, out, config, epochs)
    if kept is not None:
        return kept
    model = PromptModel(backbone, learner, text_chunk=spec.train.text_chunk, execution=ex)

    t0 = time.perf_counter()
    batches, are_feats = _train_batches(spec, model, data, progress) if start < epochs else ([], True)
    optimizer, scaler = make_optimizer(learner, spec.train), make_scaler(spec.train, device)
    generator = getattr(batches, "generator", None)
    digest = TS.config_digest(config)
    state = {"learner": learner, "optimizer": optimizer, "generator": generator, "scaler": scaler}  # what resumes
    if start:
        ex.on_main(TS.load_train_state, out, digest=digest, **state)
    ex.sync_train_state(learner, optimizer, generator, scaler)  # torchrun: every rank from rank 0's state

    # TensorBoard (rank 0 only; a NullTracker elsewhere or when off), opened once the folder is resolved; closed
    # (flushed) however the run ends, when ``stack`` closes, before the folder's lock is released
    tracker = _open_tracker(spec, out, start, len(batches) if start < epochs else None, prior, ex)
    stack.callback(tracker.close)
    on_epoch, on_step = _epoch_hooks(spec, out, tracker, state, digest)
    fit(model, batches, spec.train, epochs, images_are_features=are_feats, progress=progress,
        on_epoch=on_epoch if ex.is_main else None, start_epoch=start + 1, optimizer=optimizer, scaler=scaler,
        on_step=on_step if spec.tensorboard and ex.is_main else None, execution=ex)  # None: nothing at all per step
    train_seconds = time.perf_counter() - t0 + sum(float(r.get("seconds", 0.0)) for r in prior)
    ex.on_main(save_learner, out, learner, backbone)

    t1 = time.perf_counter()
    metrics = _evaluate_trained(spec, model, data, progress)
    metrics.update(train_seconds=train_seconds, eval_seconds=time.perf_counter() - t1,
                   peak_memory_mb=P.peak_memory_mb(device), epochs=epochs)
    T.log_final(tracker, metrics, epochs, config)  # before metrics.json: a finished run has its eval events
    ex.on_main(_finish, out, metrics)
    return metrics


def _resolve(spec: RunSpec, inputs: RunInputs) -> tuple[RunSpec, torch.nn.Module]:
    """Seed the run, build its learner, derive the run's resolved spec (the caller's is frozen): ``(spec, learner)``.
    The derived spec holds the learner's full config, and the user's values, else the method's own recipe (CoCoOp:
    batch 1, 10 epochs; KgCoOp: 128, 100), else CoOp's (batch 32, epochs by shot count), recorded in config.json."""
    data = inputs.data
    P.seed_everything(spec.seed)
    template = method_template(spec.method, data.splits.name, data.splits.template)  # KgCoOp: its own templates
    learner = create_prompt_learner(spec.method, inputs.backbone, data.splits.classnames, spec.learner,
                                    template=template).to(inputs.device)
    spec = replace(spec, learner=learner.config_dict(),
                   train=resolve_train_config(spec.train, spec.method, spec.shots, data.splits.name))
    return spec, learner


def _refuse_cached_views(spec: RunSpec, learner: torch.nn.Module) -> None:
    """Refuse ``--augment cached:K`` for a learner that ``prompts_image`` (before the folder is written): cached views
    are frozen-tower features, and its image tower runs with learned vision tokens on every batch."""
    if learner.prompts_image and parse_augment(spec.train.augment)[0] == "cached":
        raise ConfigError(
            f"--augment {spec.train.augment}: method '{spec.method}' prompts the image tower (learned vision tokens "
            "inside it), so it trains on images, and cached views are features of the unprompted tower that cannot "
            "feed it. Use --augment online (random crops and flips, the official recipe) or --augment none "
            "(unaugmented images).")


def _epoch_hooks(spec: RunSpec, out: Path, tracker: T.Tracker, state: dict, digest: str):
    """The loop's rank-0 callbacks ``(on_epoch, on_step)``: ``on_epoch`` appends the epoch to ``history.jsonl``, logs
    it, and saves the resumable ``state`` (learner, optimizer, generator, scaler) once ``spec.state_every_seconds``
    have passed since the last save (0: every epoch); ``on_step`` logs a step's scalars."""
    last_save = [time.perf_counter()]

    def on_epoch(record: dict, _opt) -> None:
        due = time.perf_counter() - last_save[0] >= spec.state_every_seconds
        # History first (fsynced when a state follows): a kill before the state is saved is undone on resume.
        append_jsonl(out / "history.jsonl", record, fsync=due)
        tracker.log_scalars(T.epoch_scalars(record), record["epoch"])
        tracker.flush()
        if due:
            TS.save_train_state(out, epoch=record["epoch"], digest=digest, **state)
            last_save[0] = time.perf_counter()

    def on_step(record: dict) -> None:
        tracker.log_scalars(T.step_scalars(record), record["global_step"])

    return on_epoch, on_step


def _evaluate_trained(spec: RunSpec, model: PromptModel, data: P.FewShotData, progress: bool) -> dict:
    """Test metrics of the trained ``model``, with ``val_accuracy`` on the few-shot val set where it is not the
    test set (ImageNet's val is its test)."""
    with torch.no_grad():
        text = model.class_text_features()  # once per evaluation, not per batch (None: per-image prompts)
        metrics, _ = evaluate_split(spec, model, data, "test", data.splits.test, progress, model.execution, text)
        if data.val and not data.splits.val_is_test:
            val_metrics, _ = evaluate_split(spec, model, data, "val-fewshot", data.val, progress, model.execution, text)
            metrics["val_accuracy"] = val_metrics["accuracy"]
    return metrics


def _open_tracker(spec: RunSpec, out: Path, start: int, steps_per_epoch: int | None, prior: list[dict],
                  ex: Execution) -> T.Tracker:
    """The run's tracker: a :class:`~vlprompt.runs.tracking.TensorBoardTracker` on rank 0 with
    ``spec.tensorboard``, else a :class:`~vlprompt.runs.tracking.NullTracker`. An error opening it on rank 0 is
    raised on every rank (``ex.on_main``), so no rank waits in a later collective."""
    if not spec.tensorboard:
        return T.NullTracker()
    opened: list[T.Tracker] = []
    ex.on_main(lambda: opened.append(T.open_run_tracker(out, resume_after_epoch=start, steps_per_epoch=steps_per_epoch,
                                                        prior_history=prior)))
    return opened[0] if opened else T.NullTracker()


def _finish(out: Path, metrics: dict) -> None:
    """Mark the run finished: ``metrics.json`` written, the resumable state removed."""
    atomic_write_json(out / "metrics.json", metrics)
    TS.remove_train_state(out)


__all__ = ["train_run"]
