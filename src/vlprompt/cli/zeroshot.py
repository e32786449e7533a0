"""``vlprompt zeroshot``: zero-shot CLIP with hand-crafted templates."""

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
from vlprompt.cli.config_file import enable_config, zeroshot_record


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``zeroshot`` command."""
    p = sub.add_parser("zeroshot", help="zero-shot CLIP with a hand-crafted template or an ensemble",
                       description="Classify the test split with text features of hand-written prompts.")
    add_data_args(p, shots=False)
    add_backbone_args(p)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--template", default=None, help="one template with {} for the class name, e.g. 'a photo of a {}.'")
    g.add_argument("--templates", default=None,
                   help="dataset (the dataset's own template; default), ensemble7, ensemble80, or a FILE with one "
                        "template per line")
    add_tracking_args(p)
    add_output_args(p)
    p.set_defaults(func=run)
    enable_config(p, zeroshot_record)  # last: --config FILE (issue 17); every other argument must be added before it


def run(args: argparse.Namespace) -> int:
    """Run ``vlprompt zeroshot``."""
    from vlprompt.engine.pipeline import prepare_data
    from vlprompt.engine.run import zeroshot_run

    spec = run_spec(args)
    if args.template:
        templates = [args.template]
    else:
        from vlprompt.data.templates import get_templates

        data = prepare_data(spec.dataset, spec.root, None, spec.seed, classnames_file=spec.classnames_file,
                            allow_outside_root=spec.allow_outside_root)
        templates = get_templates(args.templates or "dataset", data.splits.template, dataset=data.splits.name)
    metrics = zeroshot_run(spec, templates, progress=True)
    print_metrics(metrics, spec.out)
    return 0
