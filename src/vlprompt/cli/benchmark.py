"""``vlprompt benchmark``: run the few-shot grid (datasets × methods × shots × seeds) and write the report."""

from __future__ import annotations

import argparse
import sys

from vlprompt.cli.common import add_backbone_args, add_train_args, train_config

DESCRIPTION = (
    "Run the CoOp paper's few-shot protocol: every dataset × method × shot count × seed as its own run folder "
    "RUNS_DIR/<dataset>/<method>/<K>shots/seed<k> (zero-shot once per dataset: RUNS_DIR/<dataset>/zeroshot). "
    "Finished runs (metrics.json present) are skipped, so re-running the same command resumes an interrupted "
    "benchmark. Image features are cached and shared by all runs of a dataset. At the end the report (results.md, "
    "results.csv, fewshot_curves.png, results.json) is written into RUNS_DIR, as `vlprompt report RUNS_DIR` does."
)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``benchmark`` command."""
    from vlprompt.benchmark import METHODS

    p = sub.add_parser("benchmark", help="run the few-shot grid (resumable) and write the report",
                       description=DESCRIPTION)
    g = p.add_argument_group("grid")
    g.add_argument("--datasets", required=True,
                   help="comma-separated benchmark names (see `vlprompt datasets list`) or custom specs, or 'all' "
                        "(the 11 few-shot benchmarks: ImageNet and the 10 others, not the ImageNet variants)")
    g.add_argument("--shots", default="1,2,4,8,16", help="comma-separated shots per class (default 1,2,4,8,16)")
    g.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (default 1,2,3)")
    g.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma-separated subset of {','.join(METHODS)} (default: all). coop = unified context, "
                        "coop-csc = class-specific context, zeroshot = the dataset's hand-crafted template")
    p.add_argument("--root", default=None, help="folder holding the benchmark datasets (the official $DATA)")
    p.add_argument("--out", default="runs", metavar="RUNS_DIR", help="where the run folders go (default ./runs)")
    p.add_argument("--cache-dir", default=None, help="feature cache folder (default: the user cache); '' disables it")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first failed run (default: go on, list "
                                                            "failures at the end)")
    p.add_argument("--dry-run", action="store_true", help="list the runs that would execute or be skipped, and stop")
    p.add_argument("--no-report", dest="report", action="store_false", help="do not write the report at the end")
    add_backbone_args(p)
    lg = p.add_argument_group("CoOp (coop and coop-csc)")
    lg.add_argument("--n-ctx", type=int, default=16, help="number of context vectors M (default 16)")
    lg.add_argument("--ctx-init", default=None, help="initialise the context from these words (sets M)")
    lg.add_argument("--class-token-position", choices=["end", "middle", "front"], default="end",
                    help="where the class name goes in the prompt (default end)")
    add_train_args(p)
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace):
    """:class:`vlprompt.benchmark.BenchmarkConfig` from parsed arguments."""
    from vlprompt.benchmark import BenchmarkConfig, parse_datasets, parse_ints

    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    return BenchmarkConfig(
        datasets=tuple(parse_datasets(args.datasets)), shots=tuple(parse_ints(args.shots, "--shots")),
        seeds=tuple(parse_ints(args.seeds, "--seeds")), methods=methods, out=args.out, root=args.root,
        backbone=args.backbone, pretrained=args.pretrained, device=args.device,
        learner={"n_ctx": args.n_ctx, "ctx_init": args.ctx_init, "class_token_position": args.class_token_position},
        train=train_config(args), cache_dir=args.cache_dir, fail_fast=args.fail_fast,
        tensorboard=args.tensorboard,
    )


def run(args: argparse.Namespace) -> int:
    """Run ``vlprompt benchmark``."""
    from tqdm.auto import tqdm

    from vlprompt.benchmark import plan, run_benchmark

    cfg = build_config(args)
    if args.dry_run:
        jobs = plan(cfg)
        for job in jobs:
            print(f"{'skip' if job.done else 'run '}  {job}")
        todo = sum(not j.done for j in jobs)
        print(f"{len(jobs)} runs: {todo} to run, {len(jobs) - todo} already finished")
        return 0

    def on_result(job, metrics, error):
        msg = f"{job}: accuracy {metrics['accuracy']:.2f}%" if metrics else f"{job}: FAILED: {error}"
        tqdm.write(msg, file=sys.stderr)

    summary = run_benchmark(cfg, progress=True, report=args.report, on_result=on_result)
    print(f"{len(summary.jobs)} runs: {len(summary.ran)} ran, {len(summary.skipped)} already finished, "
          f"{len(summary.failed)} failed")
    if summary.report:
        print(summary.report["markdown"])
        for kind, path in summary.report["files"].items():
            print(f"wrote {kind}: {path}", file=sys.stderr)
    for job, error in summary.failed:
        print(f"failed: {job}: {error}", file=sys.stderr)
    return 1 if summary.failed else 0
