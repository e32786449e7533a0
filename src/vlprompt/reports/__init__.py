"""Reports: aggregate run folders (never logs) into tables, few-shot curves, base-to-new results and
domain-generalization / cross-dataset tables.

Typical use: ``write_report(runs_dir)`` or ``vlprompt report RUNS_DIR``. The pieces are public too:
:func:`collect_runs` → :func:`aggregate` → :func:`write_tables` / :func:`plot_fewshot_curves`.
"""

from vlprompt.reports.plots import plot_fewshot_curves
from vlprompt.reports.render import render_markdown, write_tables
from vlprompt.reports.report import write_report
from vlprompt.reports.results import RunRecord, RunScan, collect_runs, read_run, scan_runs
from vlprompt.reports.tables import BaseNewRow, Row, TransferRow, aggregate, base_to_new, missing_from_average, transfer

__all__ = [
    "BaseNewRow",
    "Row",
    "RunRecord",
    "RunScan",
    "TransferRow",
    "aggregate",
    "base_to_new",
    "collect_runs",
    "missing_from_average",
    "plot_fewshot_curves",
    "read_run",
    "render_markdown",
    "scan_runs",
    "transfer",
    "write_report",
    "write_tables",
]
