"""Read run folders (``config.json`` + ``metrics.json``, DESIGN.md §7) into flat records. Never reads logs."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlprompt.errors import ArtifactError

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class RunRecord:
    """One finished run, reduced to what reports need.

    Attributes:
        path: the run folder.
        label: display name of the method variant (``config["label"]``; falls back to ``method``, then the folder
            name), the key that tables and curves group by.
        method: ``config["method"]`` (``"coop"``, ``"zeroshot"``, ``"linear-probe"``, …), ``""`` if absent.
        dataset: ``config["dataset"]["name"]``.
        shots: shots per class; ``None`` for zero-shot (``null`` or ``0`` in the config).
        seed: ``config["seed"]`` (``None`` if absent).
        subsample: ``"all"``, ``"base"`` or ``"new"`` (base-to-new protocol); default ``"all"``.
        backbone: ``config["backbone"]["name"]`` (``""`` if absent), followed by ``" (random weights)"`` when
            ``config["backbone"]["pretrained"]`` is ``"random"``.
        accuracy: top-1 test accuracy, percent.
        macro_f1, train_seconds, eval_seconds, peak_memory_mb, num_test: from ``metrics.json`` when present.
        source: the dataset the evaluated prompt was trained on, for an evaluation of a prompt on another dataset
            (``vlprompt eval``: ``config["source_dataset"]``, e.g. ImageNet for a domain-generalization target);
            ``None`` for a run tested on its own training dataset (a base-to-new ``new`` evaluation included).
    """

    path: str
    label: str
    method: str
    dataset: str
    shots: int | None
    seed: int | None
    subsample: str
    backbone: str
    accuracy: float
    macro_f1: float | None = None
    train_seconds: float | None = None
    eval_seconds: float | None = None
    peak_memory_mb: float | None = None
    num_test: int | None = None
    source: str | None = None

    @property
    def is_transfer(self) -> bool:
        """Whether this run tests a prompt learned on another dataset (domain generalization, cross-dataset)."""
        return self.source is not None


@dataclass
class RunScan:
    """Everything found under a runs directory.

    Attributes:
        records: finished runs, sorted by path.
        unfinished: folders with ``config.json`` but no ``metrics.json`` (still running, or interrupted).
        invalid: ``(folder, reason)`` for folders whose files could not be used (unreadable JSON, missing keys,
            ``metrics.json`` without ``config.json``).
    """

    records: list[RunRecord] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)
    invalid: list[tuple[str, str]] = field(default_factory=list)


def _name(value: Any) -> str:
    """``{"name": x, ...}`` or a bare string -> the name."""
    if isinstance(value, dict):
        return str(value.get("name", ""))
    return "" if value is None else str(value)


#: What a report row shows after the backbone name of a run trained on ``--pretrained random`` weights.
RANDOM_MARK = " (random weights)"


def _backbone(value: Any) -> str:
    """The backbone name a report shows: marked when the weights were random (``--pretrained random``), so a
    chance-level result is never mistaken for a real-weights one."""
    name = _name(value)
    if isinstance(value, dict) and value.get("pretrained") == "random":
        return name + RANDOM_MARK
    return name


def _opt_float(metrics: dict, key: str) -> float | None:
    value = metrics.get(key)
    return None if value is None else float(value)


def read_run(folder: str | os.PathLike) -> RunRecord:
    """Read one finished run folder.

    Raises:
        ArtifactError: if a file is missing, is not valid JSON, or lacks ``dataset`` / ``accuracy``.
    """
    folder = Path(folder)
    try:
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        metrics = json.loads((folder / METRICS_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ArtifactError(f"run folder {folder}: cannot read its JSON files ({e}); re-run it or delete it.") from e
    if not isinstance(config, dict) or not isinstance(metrics, dict):
        raise ArtifactError(f"run folder {folder}: config.json and metrics.json must hold JSON objects.")
    dataset = _name(config.get("dataset"))
    if not dataset or metrics.get("accuracy") is None:
        raise ArtifactError(
            f"run folder {folder}: expected config.json with dataset.name and metrics.json with accuracy, "
            f"got dataset={config.get('dataset')!r}, accuracy={metrics.get('accuracy')!r}."
        )
    method = str(config.get("method") or "")
    shots = config.get("shots")
    seed = config.get("seed")
    source = config.get("source_dataset")
    return RunRecord(
        path=str(folder),
        label=str(config.get("label") or method or folder.name),
        method=method,
        dataset=dataset,
        shots=int(shots) if shots else None,  # null and 0 both mean zero-shot
        seed=None if seed is None else int(seed),
        subsample=str(config.get("subsample") or "all"),
        backbone=_backbone(config.get("backbone")),
        accuracy=float(metrics["accuracy"]),
        macro_f1=_opt_float(metrics, "macro_f1"),
        train_seconds=_opt_float(metrics, "train_seconds"),
        eval_seconds=_opt_float(metrics, "eval_seconds"),
        peak_memory_mb=_opt_float(metrics, "peak_memory_mb"),
        num_test=None if metrics.get("num_test") is None else int(metrics["num_test"]),
        source=str(source) if source and source != dataset else None,
    )


def scan_runs(runs_dir: str | os.PathLike) -> RunScan:
    """Find every run folder under ``runs_dir`` (recursively; hidden folders are skipped).

    A folder with both ``config.json`` and ``metrics.json`` is a finished run; one with only ``config.json`` is
    unfinished and skipped (counted, logged). Unreadable runs are skipped with a warning.

    Raises:
        ArtifactError: if ``runs_dir`` does not exist or is not a directory.
    """
    root = Path(runs_dir)
    if not root.is_dir():
        raise ArtifactError(
            f"runs directory {str(root)!r} does not exist or is not a directory; pass the folder that holds the "
            "run folders (the --out of train/benchmark runs)."
        )
    scan = RunScan()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files = set(filenames)
        if CONFIG_FILE in files and METRICS_FILE in files:
            try:
                scan.records.append(read_run(dirpath))
            except ArtifactError as e:
                logger.warning("skipping %s", e)
                scan.invalid.append((dirpath, str(e)))
        elif CONFIG_FILE in files:
            scan.unfinished.append(dirpath)
        elif METRICS_FILE in files:
            reason = "metrics.json without config.json"
            logger.warning("skipping %s: %s", dirpath, reason)
            scan.invalid.append((dirpath, reason))
    scan.records.sort(key=lambda r: r.path)
    if scan.unfinished:
        logger.info("skipping %d unfinished run folder(s) (no metrics.json): %s", len(scan.unfinished), scan.unfinished)
    logger.info("found %d finished run(s) under %s", len(scan.records), root)
    return scan


def collect_runs(runs_dir: str | os.PathLike) -> list[RunRecord]:
    """The finished runs under ``runs_dir`` (see :func:`scan_runs`), sorted by path."""
    return scan_runs(runs_dir).records
