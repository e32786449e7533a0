"""``vlprompt train``: learn a prompt and write a run folder."""

from __future__ import annotations

import argparse

from vlprompt.cli.common import (
    add_backbone_args,
    add_data_args,
    add_learner_args,
    add_output_args,
    add_train_args,
    print_metrics,
    run_spec,
)
from vlprompt.cli.config_file import enable_config, train_record


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``train`` command."""
    p = sub.add_parser("train", help="learn a CoOp prompt or fit a feature-space adapter (few-shot) and evaluate "
                                     "it on the test split",
                       description="Learn a prompt for a frozen CLIP and evaluate the last-epoch model on the test "
                                   "split. Writes config.json, history.jsonl, learner.json/.safetensors and "
                                   "metrics.json into --out. With a feature-space adapter as --method (tip-adapter, "
                                   "clip-adapter, …) the adapter is fitted on cached image features (the image "
                                   "encoder never runs during the fit) and saved as adapter.json/.safetensors; its "
                                   "options are --learner-opt KEY=VALUE, --augment sets its number of augmented "
                                   "views (default: its recipe's; none: the test-transform features).")
    add_data_args(p)
    add_backbone_args(p)
    add_learner_args(p)
    add_train_args(p)
    add_output_args(p)
    p.set_defaults(func=run)
    enable_config(p, _record)  # last: --config FILE (issue 17); every other argument must be added before it


def _record(record: dict, reading) -> set[str]:
    """:func:`~vlprompt.cli.config_file.train_record`, and a feature-space adapter's recorded run: its ``learner``
    is the adapter's full config (method options, checked against its config when merged); ``adapter`` records what
    the run resolved (views, recipe) and is resolved again."""
    from vlprompt.adapters import is_adapter

    if "evaluated_from" in record or not is_adapter(str(record.get("method"))):
        return train_record(record, reading)
    reading.learner.update(record.get("learner") or {})
    return {"learner", "adapter"}


def run(args: argparse.Namespace) -> int:
    """Run ``vlprompt train`` (a feature-space adapter as ``--method``: :func:`vlprompt.runs.adapter_run.adapter_run`)."""
    from vlprompt.adapters import is_adapter

    spec = run_spec(args)
    if is_adapter(spec.method):
        from vlprompt.runs.adapter_run import adapter_run

        metrics = adapter_run(spec, progress=True)
    else:
        from vlprompt.engine.run import train_run

        metrics = train_run(spec, progress=True)
    print_metrics(metrics, spec.out)
    return 0
