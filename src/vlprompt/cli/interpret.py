"""``vlprompt interpret``: the nearest vocabulary words of each learned context vector."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``interpret`` command."""
    p = sub.add_parser(
        "interpret", help="nearest vocabulary words of each learned context vector",
        description="For each learned context vector of a training run, list the --top-k nearest entries of the "
                    "backbone's token embedding table by Euclidean distance (the CoOp paper's method) and by cosine "
                    "similarity, as readable words. Class-specific context is shown class by class. The backbone "
                    "is the one recorded in the run's learner.json.")
    p.add_argument("--run", required=True, help="training run folder (holds learner.json + learner.safetensors)")
    p.add_argument("--top-k", type=int, default=3, help="words per context vector and metric (default 3)")
    p.add_argument("--pretrained", default=None, help="where the backbone weights are now, if they moved")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``vlprompt interpret``."""
    from vlprompt.engine.pipeline import resolve_device
    from vlprompt.interpret import format_table, interpret_run

    interp = interpret_run(args.run, args.top_k, device=resolve_device(args.device), pretrained=args.pretrained)
    print(json.dumps(interp.to_dict(), indent=1) if args.json else format_table(interp))
    return 0
