"""``write_report``: run folders in, tables + curves + ``results.json`` out."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from vlprompt._io import atomic_write_json
from vlprompt.errors import ArtifactError
from vlprompt.reports.plots import plot_fewshot_curves
from vlprompt.reports.render import render_markdown, write_tables
from vlprompt.reports.results import RunRecord, scan_runs
from vlprompt.reports.tables import Row, TransferRow, aggregate, base_to_new, transfer

logger = logging.getLogger(__name__)


def _split_transfer(records: list[RunRecord]) -> tuple[list[Row], list[TransferRow]]:
    """``(rows of the per-dataset tables, rows of the DG / cross-dataset tables)``.

    A prompt evaluated on another dataset is no few-shot result there: those runs only go to the transfer tables.
    So does zero-shot CLIP on a dataset that is only a transfer target (no prompt was trained on it, e.g. the
    ImageNet variants of ``--protocol dg``): it is the zero-shot row of the transfer tables, and would otherwise
    enter the few-shot average over datasets.
    """
    own = [r for r in records if not r.is_transfer]
    targets = {r.dataset for r in records if r.is_transfer}
    trained = {r.dataset for r in own if r.shots is not None and r.subsample == "all"}
    fewshot = [r for r in own if not (r.shots is None and r.subsample == "all" and r.dataset in targets - trained)]
    rows = aggregate(fewshot)
    return rows, transfer(rows if len(fewshot) == len(own) else aggregate(own), records)


def write_report(runs_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, *,
                 missing_datasets: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Aggregate every finished run under ``runs_dir`` and write the report into ``out_dir``.

    Writes ``results.md`` (one table per dataset, the average over datasets, base-to-new when present, the
    domain-generalization and cross-dataset tables when prompts were evaluated on other datasets),
    ``results.csv`` (every aggregated row of the runs tested on their own dataset), ``base_to_new.csv`` (when there
    are base/new pairs), ``transfer.csv`` (when there are transfer runs),
    ``fewshot_curves.png`` (Figure-3-style panels) and ``results.json`` (the aggregated rows and run counts).

    Args:
        runs_dir: folder searched recursively for run folders (``config.json`` + ``metrics.json``).
        out_dir: where to write; defaults to ``runs_dir``.
        missing_datasets: datasets whose runs were not started because their folder is missing → why (a grid's
            :attr:`~vlprompt.runs.jobs.BenchmarkSummary.missing`); named under the report's first line and in
            ``results.json`` (``"missing_datasets"``).

    Returns:
        ``{"num_runs", "num_unfinished", "num_invalid", "rows", "base_to_new", "transfer", "files", "markdown"}``; rows are
        plain dicts, ``files`` maps a kind to the path written.

    Raises:
        ArtifactError: if ``runs_dir`` is missing or holds no finished run.
    """
    scan = scan_runs(runs_dir)
    if not scan.records:
        raise ArtifactError(
            f"no finished runs under {str(runs_dir)!r} (a finished run folder holds config.json and metrics.json; "
            f"found {len(scan.unfinished)} unfinished and {len(scan.invalid)} unreadable). Point RUNS_DIR at the "
            "--out folder of train/benchmark runs, or wait for them to finish."
        )
    out = Path(out_dir if out_dir is not None else runs_dir)
    rows, moved = _split_transfer(scan.records)
    intro = [f"{len(scan.records)} finished runs read from `{runs_dir}`."]
    if scan.unfinished or scan.invalid:
        intro[0] += f" Skipped: {len(scan.unfinished)} unfinished, {len(scan.invalid)} unreadable."
    intro += [f"Not run: dataset `{name}` is missing: {why}" for name, why in (missing_datasets or {}).items()]
    intro.append("")
    files = write_tables(rows, out, intro, moved)
    png = plot_fewshot_curves(rows, out / "fewshot_curves.png")
    if png:
        files["curves"] = png
    files["json"] = str(out / "results.json")
    summary: dict[str, Any] = {
        "runs_dir": str(runs_dir),
        "num_runs": len(scan.records),
        "num_unfinished": len(scan.unfinished),
        "num_invalid": len(scan.invalid),
        "rows": [asdict(r) for r in rows],
        "base_to_new": [asdict(r) for r in base_to_new(rows)],
        "transfer": [asdict(r) for r in moved],
        "missing_datasets": dict(missing_datasets or {}),
    }
    atomic_write_json(files["json"], summary)
    logger.info("report written to %s (%d runs, %d rows)", out, len(scan.records), len(rows))
    return {**summary, "files": files, "markdown": render_markdown(rows, intro, moved)}
