"""``vlprompt linear-probe``: the linear-probe baseline (logistic regression on frozen image features)."""

from __future__ import annotations

import argparse

from vlprompt.cli.common import (
    add_backbone_args,
    add_data_args,
    add_output_args,
    add_tracking_args,
    print_metrics,
    run_spec,
)
from vlprompt.cli.config_file import enable_config, linear_probe_record

DESCRIPTION = (
    "Fit the linear-probe baseline of the CoOp paper on the few-shot training images and evaluate it on the test "
    "split: unnormalised image features extracted with the test transform (from the feature cache), L-BFGS "
    "logistic regression (scikit-learn), C chosen on the few-shot val set by the coarse grid 1e6…1e-6 followed by "
    "the 8-step log-space search (the official lpclip protocol). Difference from the official probe: the few-shot "
    "train/val images are the SAME subsets CoOp uses for this dataset, --shots and --seed (recorded in "
    "config.json), whereas the official lpclip/linear_probe.py draws its own subsets with np.random.choice, so its "
    "numbers come from other images. Writes config.json, probe.safetensors + probe.json and metrics.json into --out."
)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``linear-probe`` command."""
    p = sub.add_parser("linear-probe", help="linear-probe baseline on frozen image features (official C search)",
                       description=DESCRIPTION)
    add_data_args(p)
    add_backbone_args(p)
    g = p.add_argument_group("linear probe")
    g.add_argument("--search-steps", type=int, default=8,
                   help="rounds of the log-space search on C after the coarse grid (official: 8)")
    g.add_argument("--max-iter", type=int, default=1000, help="L-BFGS iteration cap (official: 1000)")
    g.add_argument("--batch-size", dest="eval_batch_size", type=int, default=100,
                   help="feature-extraction batch size (default 100)")
    g.add_argument("--workers", type=int, default=0, help="data-loading worker processes (default 0)")
    add_tracking_args(p)
    add_output_args(p)
    p.set_defaults(func=run)
    enable_config(p, linear_probe_record)  # last: --config FILE (issue 17); every other argument must be added before it


def run(args: argparse.Namespace) -> int:
    """Run ``vlprompt linear-probe``."""
    from dataclasses import replace

    from vlprompt.engine.baselines import linear_probe_run
    from vlprompt.errors import ConfigError

    if args.eval_batch_size < 1:
        raise ConfigError(f"--batch-size must be ≥ 1, got {args.eval_batch_size}.")
    spec = run_spec(args)
    spec = replace(spec, train=replace(spec.train, eval_batch_size=args.eval_batch_size))  # RunSpec is frozen
    metrics = linear_probe_run(spec, progress=True, num_steps=args.search_steps, max_iter=args.max_iter)
    print_metrics(metrics, spec.out)
    print(f"C = {metrics['C']:.4g} (chosen on {metrics['selection']}; val accuracy {metrics['val_accuracy']:.2f}%)")
    return 0
