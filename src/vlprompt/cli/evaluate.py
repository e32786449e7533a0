"""``vlprompt eval``: evaluate a trained prompt on a dataset (e.g. domain generalization targets)."""

from __future__ import annotations

import argparse
import os
import re

from vlprompt.cli.common import add_data_args, print_metrics, run_spec


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``eval`` command."""
    p = sub.add_parser("eval", help="evaluate a trained prompt on a dataset's test split",
                       description="Evaluate the prompt of a training run on the test split of --dataset, with that "
                                   "dataset's class names (unified context transfers; class-specific does not).")
    p.add_argument("--run", required=True, help="training run folder")
    add_data_args(p, shots=False)
    p.add_argument("--pretrained", default=None, help="where the backbone weights are now, if they moved")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--out", default=None, help="output folder (default RUN/eval_<dataset>)")
    p.add_argument("--overwrite", action="store_true", help="replace a finished evaluation in --out")
    p.add_argument("--cache-dir", default=None, help="feature cache folder; '' disables caching")
    p.set_defaults(func=run, label=None, backbone=None)


def run(args: argparse.Namespace) -> int:
    """Run ``vlprompt eval``."""
    from vlprompt.engine.run import eval_run

    if args.out is None:
        # benchmark name, or the last path component of folder:/csv:/split: data
        base = os.path.basename(args.dataset.split(":", 1)[-1].rstrip("/")) or "dataset"
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", base)
        args.out = os.path.join(args.run, f"eval_{safe}")
    spec = run_spec(args)
    metrics = eval_run(args.run, spec, progress=True)
    print_metrics(metrics, spec.out)
    return 0
