"""``vlprompt migrate``: re-bind a run folder written by vlprompt 0.1.0 to the exact weights fingerprint."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``migrate`` command."""
    p = sub.add_parser(
        "migrate", help="re-bind a vlprompt 0.1.0 run folder to the exact weights fingerprint",
        description="vlprompt 0.1.0 identified backbone weights by a fingerprint that depended on the thread count "
                    "of the process that computed it. Such run folders still load (the old fingerprint is verified "
                    "under every thread count at each load); this command verifies it once and rewrites "
                    "learner.json and the learner.safetensors header with the exact, thread-independent "
                    "fingerprint (same tensors; atomic writes), so later loads skip the verification.")
    p.add_argument("--run", required=True, help="training run folder (holds learner.json + learner.safetensors)")
    p.add_argument("--pretrained", default=None, help="where the backbone weights are now, if they moved")
    p.add_argument("--force", action="store_true",
                   help="re-bind even when the old fingerprint cannot be verified (a run trained on a CPU of "
                        "another kind); only for weights you know to be the ones it was trained on")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``vlprompt migrate``."""
    from vlprompt.engine.checkpoint import migrate_learner

    print(f"{args.run}: weights fingerprint {migrate_learner(args.run, pretrained=args.pretrained, force=args.force)}")
    return 0
