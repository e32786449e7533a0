"""``vlprompt report RUNS_DIR [--out DIR]``: aggregate run folders into tables and few-shot curves."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``report`` command."""
    p = subparsers.add_parser(
        "report",
        help="aggregate run folders into tables (mean ± std over seeds) and few-shot curves",
        description=(
            "Read every finished run folder under RUNS_DIR (config.json + metrics.json; logs are never read) and "
            "write results.md, results.csv, results.json and fewshot_curves.png (plus base_to_new.csv for "
            "base/new runs, and transfer.csv with the domain-generalization and cross-dataset tables for prompts "
            "evaluated on another dataset). The markdown is printed on stdout, the written paths on stderr."
        ),
    )
    p.add_argument("runs_dir", metavar="RUNS_DIR", help="folder searched recursively for run folders")
    p.add_argument("--out", metavar="DIR", default=None, help="where to write the report (default: RUNS_DIR)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the report and print its markdown; the library raises ArtifactError for a bad RUNS_DIR."""
    from vlprompt.reports import write_report

    summary = write_report(args.runs_dir, args.out)
    print(summary["markdown"])
    for kind, path in summary["files"].items():
        print(f"wrote {kind}: {path}", file=sys.stderr)  # stdout stays pure markdown
    return 0
