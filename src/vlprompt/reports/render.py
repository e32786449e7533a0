"""Render aggregated rows as markdown and CSV, and write ``results.md`` / ``results.csv``."""

from __future__ import annotations

import csv
import io
import os
from dataclasses import asdict
from itertools import groupby
from pathlib import Path

from vlprompt._io import atomic_write_text
from vlprompt.reports.tables import (
    BaseNewRow,
    Row,
    TransferRow,
    base_to_new,
    missing_from_average,
    sort_rows,
    target_order,
)

CSV_COLUMNS = [
    "label",
    "method",
    "backbone",
    "subsample",
    "dataset",
    "shots",
    "accuracy_mean",
    "accuracy_std",
    "macro_f1_mean",
    "n",
    "seeds",
    "datasets",
    "train_seconds_mean",
    "eval_seconds_mean",
    "peak_memory_mb_max",
]
BASE_NEW_COLUMNS = ["label", "backbone", "dataset", "shots", "base", "new", "h", "base_std", "new_std", "n"]
TRANSFER_COLUMNS = ["kind", "label", "backbone", "source", "shots", "source_accuracy", "target", "accuracy_mean",
                    "accuracy_std", "n"]
TRANSFER_TITLES = {"dg": "Domain generalization", "xd": "Cross-dataset transfer"}


def _num(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _acc(mean: float, std: float | None, n: int) -> str:
    """``mean ± std``; just the mean for a single run or an average over datasets (no std)."""
    return f"{mean:.2f}" if std is None or n < 2 else f"{mean:.2f} ± {std:.2f}"


def _shots(shots: int | None) -> str:
    """0 = zero-shot; a negative count (the official ``NUM_SHOTS=-1``) = the full training set."""
    return "0" if shots is None else ("all" if shots < 0 else str(shots))


def _table(rows: list[Row]) -> list[str]:
    average = rows[0].is_average
    lines = [
        f"| method | shots | accuracy (%) | macro-F1 (%) | {'datasets' if average else 'seeds'} | train s | peak MB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.label} | {_shots(r.shots)} | {_acc(r.accuracy_mean, r.accuracy_std, r.n)} | {_num(r.macro_f1_mean)} | {r.n} "
            f"| {_num(r.train_seconds_mean, 1)} | {_num(r.peak_memory_mb_max, 0)} |"
        )
    return lines


def _base_new_table(b2n: list[BaseNewRow], multi_backbone: bool) -> list[str]:
    lines = [
        "| dataset | method | shots | base (%) | new (%) | H (%) | n |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in b2n:
        name = f"{r.dataset} ({r.backbone})" if multi_backbone else r.dataset
        lines.append(
            f"| {name} | {r.label} | {_shots(r.shots)} | {_acc(r.base, r.base_std, r.n)} "
            f"| {_acc(r.new, r.new_std, r.n)} | {_num(r.h)} | {r.n} |"
        )
    return lines


def _transfer_tables(rows: list[TransferRow], multi_backbone: bool) -> list[str]:
    """One table per (backbone, source, kind): the source's accuracy, each target's, and their average."""
    lines: list[str] = []
    for (backbone, source, kind), group in groupby(rows, key=lambda r: (r.backbone, r.source, r.kind)):
        group = list(group)
        targets = target_order({t for r in group for t in r.targets})
        suffix = f" — {backbone}" if multi_backbone else ""
        lines += [f"## {TRANSFER_TITLES[kind]}: {source} → {len(targets)} target(s){suffix}", "",
                  f"The prompt learned on {source} (source), evaluated as it is on each target's classes; zero-shot "
                  "CLIP: its own runs on each dataset. Mean ± std over seeds; average over the targets.", "",
                  f"| method | shots | {source} (source) | " + " | ".join(targets) + " | average |",
                  "|---|---:|---:|" + "---:|" * (len(targets) + 1)]
        for r in group:
            cells = [_acc(r.targets[t], r.target_std.get(t), r.n) if t in r.targets else "–" for t in targets]
            lines.append(f"| {r.label} | {_shots(r.shots)} | {_num(r.source_accuracy)} | " + " | ".join(cells)
                         + f" | {_num(r.average)} |")
        lines.append("")
    return lines


def render_markdown(rows: list[Row], intro: list[str] | None = None,
                    transfer: list[TransferRow] | None = None) -> str:
    """The report as markdown: one table per dataset (few-shot, ``subsample="all"``), the average, base-to-new,
    and the domain-generalization / cross-dataset tables.

    Args:
        rows: output of :func:`vlprompt.reports.tables.aggregate`.
        intro: lines placed under the title (e.g. how many runs were read).
        transfer: output of :func:`vlprompt.reports.tables.transfer` (none: no transfer tables).
    """
    rows = sort_rows(rows)
    backbones = sorted({r.backbone for r in rows})
    multi = len(backbones) > 1
    lines = ["# Results", ""]
    lines += list(intro or [])
    lines += [
        "Top-1 accuracy in percent: mean ± std over seeds (population std, as the official `parse_test_res.py`). "
        "Shots 0 = zero-shot. Costs are per run: mean train seconds and the largest peak memory.",
        "",
    ]
    if not multi and backbones and backbones[0]:
        lines += [f"Backbone: {backbones[0]}", ""]
    fewshot = [r for r in rows if r.subsample == "all"]
    for (backbone, dataset), group in groupby(fewshot, key=lambda r: (r.backbone, r.dataset)):
        group = list(group)
        suffix = f" — {backbone}" if multi else ""
        if group[0].is_average:
            datasets = group[0].datasets
            lines += [f"## Average over {len(datasets)} datasets{suffix}", "", f"Datasets: {', '.join(datasets)}.", ""]
        else:
            lines += [f"## {dataset}{suffix}", ""]
        lines += _table(group) + [""]
    missing = [m for m in missing_from_average(rows) if m[1] == "all"]
    if missing:
        lines += ["Left out of the average (the average needs every dataset):", ""]
        for backbone, _, label, shots, absent in missing:
            where = f" ({backbone})" if multi else ""
            lines.append(f"- {label}{where}, {_shots(shots)} shots: missing on {', '.join(absent)}")
        lines.append("")
    b2n = base_to_new(rows)
    if b2n:
        lines += [
            "## Base-to-new generalization",
            "",
            "H = 2·base·new / (base + new), computed from the mean base and new accuracies "
            "(the Average row uses the dataset averages, as the CoCoOp paper). n = seeds (datasets for Average).",
            "",
        ]
        lines += _base_new_table(b2n, multi) + [""]
    if transfer:
        lines += _transfer_tables(transfer, multi)
    return "\n".join(lines)


def _csv(columns: list[str], dicts: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for d in dicts:
        writer.writerow({k: ("" if d.get(k) is None else d[k]) for k in columns})
    return buf.getvalue()


def rows_to_csv(rows: list[Row]) -> str:
    """All rows (every subsample, averages included) as CSV; lists are joined with ``;``."""
    dicts = []
    for r in sort_rows(rows):
        d = asdict(r)
        d["seeds"] = ";".join("" if s is None else str(s) for s in r.seeds)
        d["datasets"] = ";".join(r.datasets)
        dicts.append(d)
    return _csv(CSV_COLUMNS, dicts)


def transfer_to_csv(rows: list[TransferRow]) -> str:
    """The transfer rows as CSV, one line per (row, target)."""
    dicts = [{"kind": r.kind, "label": r.label, "backbone": r.backbone, "source": r.source, "shots": r.shots,
              "source_accuracy": r.source_accuracy, "target": t, "accuracy_mean": acc,
              "accuracy_std": r.target_std.get(t), "n": r.n} for r in rows for t, acc in r.targets.items()]
    return _csv(TRANSFER_COLUMNS, dicts)


def write_tables(rows: list[Row], out_dir: str | os.PathLike, intro: list[str] | None = None,
                 transfer: list[TransferRow] | None = None) -> dict[str, str]:
    """Write ``results.md`` and ``results.csv`` (and ``base_to_new.csv`` when there are base/new pairs,
    ``transfer.csv`` when there are domain-generalization or cross-dataset rows).

    Returns:
        ``{"markdown": path, "csv": path[, "base_to_new_csv": path][, "transfer_csv": path]}``.
    """
    out = Path(out_dir)
    files = {"markdown": str(out / "results.md"), "csv": str(out / "results.csv")}
    atomic_write_text(files["markdown"], render_markdown(rows, intro, transfer))
    atomic_write_text(files["csv"], rows_to_csv(rows))
    b2n = base_to_new(rows)
    if b2n:
        files["base_to_new_csv"] = str(out / "base_to_new.csv")
        atomic_write_text(files["base_to_new_csv"], _csv(BASE_NEW_COLUMNS, [asdict(r) for r in b2n]))
    if transfer:
        files["transfer_csv"] = str(out / "transfer.csv")
        atomic_write_text(files["transfer_csv"], transfer_to_csv(transfer))
    return files
