"""Experiment tracking: TensorBoard event logs of a run (``--tensorboard``), beside ``history.jsonl``.

A run with tracking on writes its events into ``RUN/tensorboard/`` (Dassl's layout: ``OUTPUT_DIR/tensorboard``,
``Dassl:dassl/engine/trainer.py`` ``before_train``), one log directory per run, so ``tensorboard --logdir RUNS``
compares every run of a grid. Tags, all scalars:

- ``train/loss``, ``train/accuracy`` (percent), ``train/lr``: after every optimiser step; the step is the number of
  optimiser steps so far over all epochs (``1 … epochs × steps per epoch``), as Dassl's per-iteration ``train/*``
  scalars (Dassl counts from 0 and logs its running epoch mean; here each step's own batch value is logged, so the
  rows-weighted mean of an epoch's steps is that epoch's ``history.jsonl`` loss).
- ``epoch/loss``, ``epoch/train_accuracy``, ``epoch/lr``: once per epoch at step = epoch (``1 … epochs``), the
  values of that epoch's ``history.jsonl`` record.
- ``eval/accuracy``, ``eval/macro_f1`` (and ``eval/val_accuracy`` when the run has one): the ``metrics.json`` values,
  at step = the number of epochs (0 for zero-shot and the linear probe, which train no prompt).
- hparams (the HPARAMS dashboard): the run's label, method, dataset, shots, seed, backbone and recipe, with the
  ``eval/*`` metrics, so a grid's runs can be sorted and filtered side by side.

**Resuming.** A resumed run continues the same log: before writing, the log directory's event files are rewritten
(atomically, with tensorboard's own record reader and writer) to hold only the ``train/*`` events of the optimiser
steps the resumed state has completed; ``epoch/*`` events of those epochs are written again from ``history.jsonl``
(its truncated records are the authority), the redone epochs and the final evaluation follow. No step is ever
recorded twice, whatever the reader (TensorBoard's "purge orphaned data" heuristics are not relied on), and a kill
during the rewrite is repaired by the next resume (events are de-duplicated by tag and step).

The writer is ``torch.utils.tensorboard.SummaryWriter`` (which needs the ``tensorboard`` package: the optional
extra ``pip install 'vlprompt[tensorboard]'``), imported only when tracking is on.
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from vlprompt.errors import ConfigError

_logger = logging.getLogger(__name__)

#: The log directory inside a run folder.
LOG_DIR = "tensorboard"
#: Tag prefixes (see the module docstring).
STEP_PREFIX, EPOCH_PREFIX, EVAL_PREFIX = "train/", "epoch/", "eval/"
_TMP_PREFIX = ".rewrite-"
INSTALL_HINT = "pip install 'vlprompt[tensorboard]' (or: pip install tensorboard)"


class Tracker(Protocol):
    """Where a run's scalars go. Implementations: :class:`NullTracker` (tracking off), :class:`TensorBoardTracker`."""

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        """Record each ``tag → value`` of ``scalars`` at ``step``."""

    def log_hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        """Record the run's hyper-parameters with its final ``metrics`` (``tag → value``)."""

    def flush(self) -> None:
        """Make everything recorded so far readable (written to disk)."""

    def close(self) -> None:
        """Flush and release the writer; calling it twice is harmless."""


class NullTracker:
    """Tracking off: every call does nothing."""

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None:  # noqa: D102
        pass

    def log_hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:  # noqa: D102
        pass

    def flush(self) -> None:  # noqa: D102
        pass

    def close(self) -> None:  # noqa: D102
        pass


def import_summary_writer():
    """``torch.utils.tensorboard.SummaryWriter``, or a :class:`ConfigError` saying how to install TensorBoard."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:  # torch's wrapper raises ImportError when the tensorboard package is absent or too old
        raise ConfigError(
            f"--tensorboard needs the tensorboard package, which is not installed or too old ({e}). Install the "
            f"extra with: {INSTALL_HINT}; or run without --tensorboard (history.jsonl and metrics.json are always "
            "written).") from e
    return SummaryWriter


def require_tensorboard() -> None:
    """Fail early (before any data or model is loaded) when ``--tensorboard`` cannot work: see
    :func:`import_summary_writer`."""
    import_summary_writer()


class TensorBoardTracker:
    """TensorBoard event files in ``log_dir`` through ``torch.utils.tensorboard.SummaryWriter``.

    Args:
        log_dir: the log directory (created).
        flush_secs: how often the writer's background thread writes queued events to disk at the latest.
    """

    def __init__(self, log_dir: str | Path, flush_secs: int = 30):
        summary_writer = import_summary_writer()
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._writer = summary_writer(log_dir=str(self.log_dir), flush_secs=flush_secs)

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        """One scalar event per tag (non-finite values are recorded as they are: a diverging loss is visible)."""
        for tag, value in scalars.items():
            self._writer.add_scalar(tag, float(value), global_step=int(step))

    def log_hparams(self, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        """The HPARAMS plugin's summaries, written into this run's own event file (``SummaryWriter.add_hparams``
        would open a sub-directory, i.e. a second run, per call); ``metrics`` name scalar tags logged already."""
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        values = {k: _hparam_value(v) for k, v in hparams.items()}
        exp, ssi, sei = hparams_summaries(values, {k: float(v) for k, v in metrics.items()})
        for summary in (exp, ssi, sei):
            self._writer.file_writer.add_summary(summary)

    def flush(self) -> None:  # noqa: D102
        self._writer.flush()

    def close(self) -> None:  # noqa: D102
        self._writer.close()


def _hparam_value(value: Any) -> bool | int | float | str:
    """A value the HPARAMS plugin accepts (bool, number, string); ``None`` and others as strings."""
    if isinstance(value, bool | int | float | str):
        return value
    return "none" if value is None else str(value)


def log_dir(run_dir: str | Path) -> Path:
    """The TensorBoard log directory of a run folder."""
    return Path(run_dir) / LOG_DIR


def event_files(directory: str | Path) -> list[Path]:
    """The event files of ``directory`` in the order TensorBoard reads them (by name; ``tfevents`` in the name, as
    ``tensorboard.backend.event_processing.io_wrapper.IsSummaryEventsFile`` recognises them)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_file() and "tfevents" in p.name and not p.name.startswith("."))


def remove_event_files(run_dir: str | Path) -> None:
    """Delete a run folder's TensorBoard events (of a discarded or replaced run); the folder too when left empty."""
    directory = log_dir(run_dir)
    for path in [*event_files(directory), *directory.glob(f"{_TMP_PREFIX}*.tmp")]:
        path.unlink(missing_ok=True)
    if directory.is_dir() and not any(directory.iterdir()):
        directory.rmdir()


def keep_completed_steps(directory: str | Path, last_step: int | None) -> int:
    """Rewrite the event files of ``directory`` as one file holding only the ``train/*`` scalar events of steps
    ``≤ last_step`` (``None``: all of them), each ``(tag, step)`` once, after the first ``file_version`` event.

    Everything else (``epoch/*``, ``eval/*``, hparams, events of redone steps) is dropped: the resumed run writes it
    again. The result replaces the first file atomically (so it sorts before the resumed writer's new file), then the
    other files are deleted; a kill in between leaves duplicates that the next call removes. A torn last record
    (a kill while writing) is skipped by tensorboard's reader.

    Returns:
        The number of ``train/*`` events kept.
    """
    from google.protobuf.message import DecodeError
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    for leftover in Path(directory).glob(f"{_TMP_PREFIX}*.tmp"):  # of a rewrite killed before its rename
        leftover.unlink(missing_ok=True)
    files = event_files(directory)
    if not files:
        return 0
    buffer = io.BytesIO()
    out = RecordWriter(buffer)
    seen: set[tuple[str, int]] = set()
    have_version, kept = False, 0
    for path in files:
        for raw in RawEventFileLoader(str(path)).Load():
            try:
                event = event_pb2.Event.FromString(raw)
            except DecodeError:  # a damaged record (its checksum passed): a log is no reason to stop the run
                _logger.warning("%s: skipping an unreadable TensorBoard event", path)
                continue
            if event.HasField("file_version"):
                if not have_version:
                    out.write(raw)
                    have_version = True
                continue
            values = event.summary.value if event.HasField("summary") else []
            if len(values) != 1 or not values[0].tag.startswith(STEP_PREFIX):
                continue  # add_scalar writes one value per event; hparams and other tags are rewritten
            key = (values[0].tag, int(event.step))
            if (last_step is not None and event.step > last_step) or key in seen:
                continue
            seen.add(key)
            out.write(raw)
            kept += 1
    # not atomic_write: its temporary name would contain "tfevents", and readers would take it for an event file
    tmp = Path(directory) / f"{_TMP_PREFIX}{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(buffer.getvalue())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, files[0])
    for path in files[1:]:
        path.unlink(missing_ok=True)
    return kept


def open_run_tracker(
    run_dir: str | Path,
    *,
    resume_after_epoch: int = 0,
    steps_per_epoch: int | None = None,
    prior_history: Iterable[Mapping] = (),
) -> TensorBoardTracker:
    """The tracker of a training run in ``run_dir`` (log directory ``run_dir/tensorboard``).

    Args:
        run_dir: the (locked) run folder.
        resume_after_epoch: the completed epoch a resumed run continues after (0: a fresh run, whose stale events
            are deleted).
        steps_per_epoch: optimiser steps per epoch (``len`` of the batch source); ``None`` when no epoch is left to
            run, which keeps every ``train/*`` event.
        prior_history: the ``history.jsonl`` records of the completed epochs, re-logged as ``epoch/*``.
    """
    directory = log_dir(run_dir)
    import_summary_writer()  # the clear error before any file is touched
    if resume_after_epoch <= 0:
        remove_event_files(run_dir)
    else:
        last = None if steps_per_epoch is None else resume_after_epoch * steps_per_epoch
        kept = keep_completed_steps(directory, last)
        _logger.info("%s: resuming the TensorBoard log after epoch %d (%d step events kept)", directory,
                     resume_after_epoch, kept)
    tracker = TensorBoardTracker(directory)
    for record in prior_history:
        tracker.log_scalars(epoch_scalars(record), int(record["epoch"]))
    return tracker


def step_scalars(record: Mapping) -> dict[str, float]:
    """``train/*`` scalars of one optimiser step (:func:`vlprompt.engine.fit.fit`'s ``on_step`` record)."""
    return {"train/loss": record["loss"], "train/accuracy": record["accuracy"], "train/lr": record["lr"]}


def epoch_scalars(record: Mapping) -> dict[str, float]:
    """``epoch/*`` scalars of one ``history.jsonl`` record."""
    return {"epoch/loss": record["loss"], "epoch/train_accuracy": record["train_accuracy"], "epoch/lr": record["lr"]}


#: ``metrics.json`` entries logged as ``eval/<name>``, when present and numeric.
EVAL_KEYS = ("accuracy", "macro_f1", "val_accuracy")


def eval_scalars(metrics: Mapping) -> dict[str, float]:
    """``eval/*`` scalars of a ``metrics.json`` dict (the entries of :data:`EVAL_KEYS` it has)."""
    return {f"{EVAL_PREFIX}{k}": float(metrics[k]) for k in EVAL_KEYS
            if isinstance(metrics.get(k), int | float) and not isinstance(metrics.get(k), bool)
            and math.isfinite(metrics[k])}


def run_hparams(config: Mapping) -> dict[str, Any]:
    """The hyper-parameters shown in the HPARAMS dashboard, from a run's ``config.json`` dict."""
    train = config.get("train") or {}
    learner = config.get("learner") or {}
    out = {"label": config.get("label"), "method": config.get("method"),
           "dataset": (config.get("dataset") or {}).get("name"), "shots": config.get("shots"),
           "seed": config.get("seed"), "backbone": (config.get("backbone") or {}).get("name")}
    for key in ("epochs", "batch_size", "lr", "augment", "precision"):
        if train.get(key) is not None and config.get("method") not in ("zeroshot", "linear-probe"):
            out[key] = train[key]
    for key in ("n_ctx", "csc", "class_token_position", "ctx_init"):
        if key in learner:
            out[key] = learner[key]
    return out


def log_final(tracker: Tracker, metrics: Mapping, step: int, config: Mapping | None = None) -> None:
    """The ``eval/*`` scalars at ``step`` and, with ``config``, the hparams entry; then flush."""
    scalars = eval_scalars(metrics)
    tracker.log_scalars(scalars, step)
    if config is not None and scalars:
        tracker.log_hparams(run_hparams(config), scalars)
    tracker.flush()


def eval_only_tracker(run_dir: str | Path) -> TensorBoardTracker:
    """The tracker of a run that trains no prompt (zero-shot, linear probe): a fresh log directory."""
    import_summary_writer()
    remove_event_files(run_dir)
    return TensorBoardTracker(log_dir(run_dir))


__all__ = ["EVAL_KEYS", "INSTALL_HINT", "LOG_DIR", "NullTracker", "TensorBoardTracker", "Tracker", "epoch_scalars",
           "eval_only_tracker", "eval_scalars", "event_files", "import_summary_writer", "keep_completed_steps",
           "log_dir", "log_final", "open_run_tracker", "remove_event_files", "require_tensorboard", "run_hparams",
           "step_scalars"]
