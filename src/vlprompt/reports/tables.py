"""Aggregate runs over seeds (mean ± population std, as the official ``parse_test_res.py``) and over datasets."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from vlprompt.eval.metrics import harmonic_mean
from vlprompt.reports.results import RunRecord

logger = logging.getLogger(__name__)

AVERAGE = "Average"


@dataclass
class Row:
    """One aggregated cell: a label on a dataset at a shot count (or the average over datasets).

    Attributes:
        label, method, backbone, subsample: as in :class:`RunRecord` (``method`` is the first run's).
        dataset: the dataset name, or ``"Average"`` for the mean over ``datasets``.
        shots: shots per class, ``None`` for zero-shot.
        accuracy_mean: mean top-1 accuracy (percent) over seeds (over datasets for an average row).
        accuracy_std: population std (``np.std``, ddof 0) over seeds; ``None`` for average rows.
        macro_f1_mean: mean macro-F1 (percent), ``None`` if any run lacks it.
        n: number of seeds (datasets for an average row).
        seeds: the seeds aggregated (per-dataset rows).
        datasets: ``[dataset]``, or the datasets an average row covers.
        train_seconds_mean, eval_seconds_mean: mean cost per run (mean of the datasets' means for averages).
        peak_memory_mb_max: the largest peak memory of any run aggregated.
    """

    label: str
    method: str
    backbone: str
    subsample: str
    dataset: str
    shots: int | None
    accuracy_mean: float
    accuracy_std: float | None
    macro_f1_mean: float | None
    n: int
    seeds: list[int | None] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    train_seconds_mean: float | None = None
    eval_seconds_mean: float | None = None
    peak_memory_mb_max: float | None = None

    @property
    def is_average(self) -> bool:
        """Whether this row averages over datasets."""
        return self.dataset == AVERAGE


@dataclass
class BaseNewRow:
    """Base-to-new result of one label on one dataset (or the average): H = 2·base·new / (base + new).

    ``h`` is computed from the mean base and mean new accuracies (as the CoCoOp paper computes its averages).
    """

    label: str
    backbone: str
    dataset: str
    shots: int | None
    base: float
    new: float
    h: float
    base_std: float | None
    new_std: float | None
    n: int


def _mean(values: Iterable[float | None]) -> float | None:
    values = list(values)
    return None if not values or any(v is None for v in values) else float(np.mean(values))


def _max(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def label_order(labels: Iterable[str], zero_shot_labels: set[str]) -> list[str]:
    """Zero-shot labels first, then the others; each group alphabetical."""
    return sorted(set(labels), key=lambda lab: (lab not in zero_shot_labels, lab))


def _dedupe(records: Iterable[RunRecord]) -> list[RunRecord]:
    """Keep one run per (backbone, subsample, label, dataset, shots, seed): the last one given, with a warning."""
    kept: dict[tuple, RunRecord] = {}
    for r in records:
        key = (r.backbone, r.subsample, r.label, r.dataset, r.shots, r.seed)
        if key in kept:
            logger.warning(
                "duplicate run for %s %s shots=%s seed=%s: using %s, ignoring %s (delete or relabel one of them)",
                r.label,
                r.dataset,
                r.shots,
                r.seed,
                r.path,
                kept[key].path,
            )
        kept[key] = r
    return list(kept.values())


def aggregate(records: Iterable[RunRecord]) -> list[Row]:
    """Aggregate runs into rows: per (backbone, subsample, label, dataset, shots) over seeds, then averages.

    The average over datasets of a (label, shots) is added only where that label×shots exists on **every**
    dataset present for the same backbone and subsample, and only when there are at least two datasets;
    :func:`missing_from_average` lists what was left out. Rows are ordered by backbone, subsample, dataset (the
    average last), label (zero-shot first) and shots.
    """
    groups: dict[tuple, list[RunRecord]] = defaultdict(list)
    for r in _dedupe(records):
        groups[(r.backbone, r.subsample, r.dataset, r.label, r.shots)].append(r)
    rows: list[Row] = []
    for (backbone, subsample, dataset, label, shots), runs in groups.items():
        accs = np.array([r.accuracy for r in runs], dtype=np.float64)
        rows.append(
            Row(
                label=label,
                method=runs[0].method,
                backbone=backbone,
                subsample=subsample,
                dataset=dataset,
                shots=shots,
                accuracy_mean=float(np.mean(accs)),
                accuracy_std=float(np.std(accs)),  # population std (ddof=0), as parse_test_res.py
                macro_f1_mean=_mean(r.macro_f1 for r in runs),
                n=len(runs),
                seeds=sorted((r.seed for r in runs), key=lambda s: (s is None, s or 0)),
                datasets=[dataset],
                train_seconds_mean=_mean(r.train_seconds for r in runs),
                eval_seconds_mean=_mean(r.eval_seconds for r in runs),
                peak_memory_mb_max=_max(r.peak_memory_mb for r in runs),
            )
        )
    rows += _averages(rows)
    return sort_rows(rows)


def _averages(rows: list[Row]) -> list[Row]:
    by_group: dict[tuple, list[Row]] = defaultdict(list)
    for row in rows:
        by_group[(row.backbone, row.subsample)].append(row)
    out = []
    for (backbone, subsample), group in by_group.items():
        datasets = sorted({r.dataset for r in group})
        if len(datasets) < 2:
            continue
        cells: dict[tuple, list[Row]] = defaultdict(list)
        for r in group:
            cells[(r.label, r.shots)].append(r)
        for (label, shots), cell in cells.items():
            if len(cell) != len(datasets):
                continue
            cell.sort(key=lambda r: r.dataset)
            out.append(
                Row(
                    label=label,
                    method=cell[0].method,
                    backbone=backbone,
                    subsample=subsample,
                    dataset=AVERAGE,
                    shots=shots,
                    accuracy_mean=float(np.mean([r.accuracy_mean for r in cell])),
                    accuracy_std=None,
                    macro_f1_mean=_mean(r.macro_f1_mean for r in cell),
                    n=len(cell),
                    datasets=datasets,
                    train_seconds_mean=_mean(r.train_seconds_mean for r in cell),
                    eval_seconds_mean=_mean(r.eval_seconds_mean for r in cell),
                    peak_memory_mb_max=_max(r.peak_memory_mb_max for r in cell),
                )
            )
    return out


def sort_rows(rows: list[Row]) -> list[Row]:
    """Order rows by backbone, subsample, dataset (average last), label (zero-shot first), shots."""
    zero = {r.label for r in rows if r.shots is None}
    order = {lab: i for i, lab in enumerate(label_order((r.label for r in rows), zero))}
    return sorted(
        rows,
        key=lambda r: (r.backbone, r.subsample, r.is_average, r.dataset, order[r.label], r.shots or 0),
    )


def missing_from_average(rows: list[Row]) -> list[tuple[str, str, str, int | None, list[str]]]:
    """``(backbone, subsample, label, shots, missing datasets)`` for every cell left out of the average."""
    present: dict[tuple, set[str]] = defaultdict(set)
    all_datasets: dict[tuple, set[str]] = defaultdict(set)
    for r in rows:
        if not r.is_average:
            present[(r.backbone, r.subsample, r.label, r.shots)].add(r.dataset)
            all_datasets[(r.backbone, r.subsample)].add(r.dataset)
    out = []
    for (backbone, subsample, label, shots), have in present.items():
        want = all_datasets[(backbone, subsample)]
        if len(want) >= 2 and have != want:
            out.append((backbone, subsample, label, shots, sorted(want - have)))
    return sorted(out, key=lambda t: (t[0], t[1], t[2], t[3] or 0))


def base_to_new(rows: list[Row]) -> list[BaseNewRow]:
    """Pair ``subsample="base"`` and ``"new"`` rows of the same label, dataset and shots; H = harmonic mean.

    Average rows pair the base and new averages when both exist over the same datasets.
    """
    base = {(r.backbone, r.label, r.dataset, r.shots): r for r in rows if r.subsample == "base"}
    new = {(r.backbone, r.label, r.dataset, r.shots): r for r in rows if r.subsample == "new"}
    out = []
    for key, b in base.items():
        n = new.get(key)
        if n is None or b.datasets != n.datasets:
            continue
        out.append(
            BaseNewRow(
                label=b.label,
                backbone=b.backbone,
                dataset=b.dataset,
                shots=b.shots,
                base=b.accuracy_mean,
                new=n.accuracy_mean,
                h=harmonic_mean(b.accuracy_mean, n.accuracy_mean),
                base_std=b.accuracy_std,
                new_std=n.accuracy_std,
                n=min(b.n, n.n),
            )
        )
    zero = {r.label for r in out if r.shots is None}
    order = {lab: i for i, lab in enumerate(label_order((r.label for r in out), zero))}
    return sorted(out, key=lambda r: (r.backbone, r.dataset == AVERAGE, r.dataset, order[r.label], r.shots or 0))


#: The domain-generalization targets (ImageNet's variants), in the papers' column order; any other target of a
#: prompt evaluated away from its training dataset is cross-dataset transfer.
DG_TARGETS = ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")


def target_order(targets: Iterable[str]) -> list[str]:
    """Transfer targets in the papers' column order: the ImageNet variants as :data:`DG_TARGETS`, then the others
    alphabetically."""
    return sorted(set(targets), key=lambda d: (d not in DG_TARGETS, DG_TARGETS.index(d) if d in DG_TARGETS else 0, d))


@dataclass
class TransferRow:
    """One method variant's prompt learned on ``source`` and evaluated on other datasets (a DG or XD table row).

    Attributes:
        kind: ``"dg"`` (targets among :data:`DG_TARGETS`) or ``"xd"`` (cross-dataset: any other target).
        label, backbone, shots: as in :class:`Row` (zero-shot CLIP rows: ``shots`` ``None``, its own runs on each
            dataset).
        source: the training dataset; ``source_accuracy``: mean test accuracy over seeds of the runs on it
            (``None`` if they are not in the runs folder).
        targets: ``{target: mean accuracy over seeds}``; ``target_std``: the population std over seeds.
        average: mean of the target means, when every target of the table is present (else ``None``).
        n: the fewest seeds of any target.
    """

    kind: str
    label: str
    backbone: str
    source: str
    shots: int | None
    source_accuracy: float | None
    targets: dict[str, float]
    target_std: dict[str, float | None]
    average: float | None
    n: int


def transfer(rows: list[Row], records: Iterable[RunRecord]) -> list[TransferRow]:
    """The domain-generalization and cross-dataset rows: transfer ``records`` (:attr:`RunRecord.is_transfer`)
    aggregated over seeds per (backbone, source, kind), with each label's accuracy on the source from ``rows``
    (:func:`aggregate` of the in-domain runs), plus zero-shot CLIP's own runs on the source and the targets."""
    groups: dict[tuple, list[RunRecord]] = defaultdict(list)
    for r in records:
        if r.is_transfer:
            groups[(r.backbone, r.source, "dg" if r.dataset in DG_TARGETS else "xd")].append(r)
    own = {(r.backbone, r.label, r.dataset, r.shots): r for r in rows if r.subsample == "all" and not r.is_average}
    out: list[TransferRow] = []
    for (backbone, source, kind), group in sorted(groups.items()):
        cells = [r for r in aggregate(group) if not r.is_average]
        targets = target_order({r.dataset for r in cells})
        by_key: dict[tuple, dict[str, Row]] = defaultdict(dict)
        for r in cells:
            by_key[(r.label, r.shots)][r.dataset] = r
        for (b, label, dataset, shots), r in own.items():  # zero-shot CLIP: its own runs on the targets
            if b == backbone and shots is None and dataset in targets:
                by_key[(label, None)][dataset] = r
        for (label, shots), per_target in by_key.items():
            src = own.get((backbone, label, source, shots))
            means = {t: per_target[t].accuracy_mean for t in targets if t in per_target}
            out.append(TransferRow(
                kind=kind, label=label, backbone=backbone, source=source, shots=shots,
                source_accuracy=None if src is None else src.accuracy_mean, targets=means,
                target_std={t: per_target[t].accuracy_std for t in means},
                average=float(np.mean(list(means.values()))) if len(means) == len(targets) else None,
                n=min(per_target[t].n for t in means)))
    zero = {r.label for r in out if r.shots is None}
    order = {lab: i for i, lab in enumerate(label_order((r.label for r in out), zero))}
    return sorted(out, key=lambda r: (r.backbone, r.source, r.kind, order[r.label], r.shots or 0))
