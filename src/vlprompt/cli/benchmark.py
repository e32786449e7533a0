"""``vlprompt benchmark``: the accuracy grid — run a grid (datasets × methods × shots × seeds) of one of the four
protocols of the field and write the report. (``vlprompt bench`` is the speed suite.)"""

from __future__ import annotations

import argparse
import sys

from vlprompt.cli.common import add_backbone_args, add_train_args, train_config
from vlprompt.types import CLASS_TOKEN_POSITIONS

DESCRIPTION = (
    "Run a protocol of the field as one run folder per dataset × method × shot count × seed. fewshot (CoOp paper): "
    "RUNS_DIR/<dataset>/<method>/<K>shots/seed<k> (zero-shot once per dataset: RUNS_DIR/<dataset>/zeroshot). "
    "base2new (CoCoOp paper): train on the base classes, RUNS_DIR/base2new/<dataset>/<method>/<K>shots/seed<k>, "
    "then evaluate on the new ones into .../eval_new; the report gives base, new and H. dg (domain generalization): "
    "train on ImageNet (the few-shot ImageNet runs, shared), evaluate on ImageNetV2, -Sketch, -A, -R into "
    ".../seed<k>/eval_<target>. xd (cross-dataset transfer): the same with the 10 other benchmarks as targets. "
    "Every method trains with its own official recipe where no value is given. Finished runs (metrics.json present) "
    "are skipped, so re-running the same command resumes an interrupted grid; --dry-run lists the runs. Image "
    "features are cached and shared by all runs of a dataset. At the end the report (results.md, results.csv, "
    "fewshot_curves.png, results.json) is written into RUNS_DIR, as `vlprompt report RUNS_DIR` does. --executor slurm "
    "sends the unfinished runs to a SLURM cluster as one job array (submitit: pip install 'vlprompt[cluster]'), "
    "waits for them and writes the report; a killed job resumes from its saved training state when the same "
    "command is run again. (This is the accuracy grid; the per-step speed suite is `vlprompt bench`.)"
)


class _MethodsHelp(str):
    """The ``--methods`` help, completed from the method registry only when ``--help`` formats it (the registry
    imports torch, which building the parser for another command should not)."""

    def __mod__(self, params):
        from vlprompt.runs.grid import DEFAULT_METHODS, grid_methods

        return (f"comma-separated subset of {','.join(grid_methods())} (every registered prompt learner, the "
                f"coop-csc variant, every registered feature-space adapter and the baselines). Default: fewshot "
                f"{','.join(DEFAULT_METHODS)}; the other protocols every registered prompt learner and zeroshot "
                "(coop-csc and linear-probe cannot be evaluated on other classes, nor an adapter without new "
                "classes by base2new/xd). An adapter fits with its own recipe (the training flags here are the "
                "prompt learners'; --augment sets its views). coop-csc = class-specific context, zeroshot = the "
                "dataset's hand-crafted template")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``benchmark`` command."""
    from vlprompt.runs.grid import PROTOCOLS

    p = sub.add_parser("benchmark", help="the accuracy grid: run a protocol (fewshot, base2new, dg, xd; resumable) "
                                         "and write the report (the speed suite is `vlprompt bench`)",
                       description=DESCRIPTION)
    g = p.add_argument_group("grid")
    g.add_argument("--protocol", choices=PROTOCOLS, default="fewshot",
                   help="fewshot (default; CoOp paper), base2new (train on base classes, test on base and new; "
                        "CoCoOp paper), dg (ImageNet → V2, Sketch, A, R) or xd (ImageNet → the 10 other benchmarks)")
    g.add_argument("--datasets", default=None,
                   help="comma-separated benchmark names (see `vlprompt datasets list`) or custom specs, or 'all' "
                        "(the 11 few-shot benchmarks: ImageNet and the 10 others, not the ImageNet variants). "
                        "Required for fewshot and base2new; for dg and xd the evaluation targets (default, or 'all': the "
                        "protocol's own: the 4 ImageNet variants, the 10 benchmarks other than the source)")
    g.add_argument("--source", default="imagenet", help="dg and xd: the dataset prompts are trained on (default "
                                                        "imagenet)")
    g.add_argument("--shots", default=None, help="comma-separated shots per class (default 1,2,4,8,16 for fewshot, "
                                                 "16 for the others)")
    g.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (default 1,2,3)")
    g.add_argument("--methods", default=None, help=_MethodsHelp("comma-separated methods"))
    p.add_argument("--root", default=None, help="folder holding the benchmark datasets (the official $DATA)")
    p.add_argument("--out", default="runs", metavar="RUNS_DIR", help="where the run folders go (default ./runs)")
    p.add_argument("--cache-dir", default=None, help="feature cache folder (default: the user cache); '' disables it")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first failed run (default: go on, list "
                                                            "failures at the end)")
    p.add_argument("--dry-run", action="store_true",
                   help="list the planned runs (protocol, dataset, method, shots, seed, recipe, run folder and the "
                        "evaluation targets), marking those already finished, and stop without loading anything")
    p.add_argument("--no-report", dest="report", action="store_false", help="do not write the report at the end")
    ex = p.add_argument_group("executor", "Where the runs execute. The cluster options map to submitit's "
                                          "update_parameters; each left out keeps the cluster's default.")
    ex.add_argument("--executor", choices=["local", "slurm", "submitit-local"], default="local",
                    help="local (default): one run after another in this process; slurm: the unfinished runs as "
                         "one SLURM job array through submitit (pip install 'vlprompt[cluster]'), job files and "
                         "logs in RUNS_DIR/.submitit; submitit-local: the same through submitit's local executor "
                         "(one subprocess per run on this machine; for tests and debugging)")
    ex.add_argument("--slurm-partition", default=None, help="SLURM partition (slurm_partition)")
    ex.add_argument("--slurm-time-min", type=int, default=None, help="time limit of each job in minutes "
                                                                     "(timeout_min); a job that reaches it is "
                                                                     "requeued and resumes")
    ex.add_argument("--slurm-gpus-per-node", type=int, default=None, help="GPUs per job (gpus_per_node)")
    ex.add_argument("--slurm-cpus-per-task", type=int, default=None, help="CPUs per job (cpus_per_task)")
    ex.add_argument("--slurm-array-parallelism", type=int, default=None,
                    help="at most this many runs at once (slurm_array_parallelism; submitit's default 256)")
    add_backbone_args(p)
    lg = p.add_argument_group("prompt learners", "Options left out take each method's own defaults: coop M=16 "
                                                 "random init; cocoop and kgcoop M=4 from 'a photo of a'.")
    lg.add_argument("--n-ctx", type=int, default=None, help="number of context vectors M, randomly initialised "
                                                            "(coop default 16)")
    lg.add_argument("--ctx-init", default=None, help="initialise the context from these words (sets M)")
    lg.add_argument("--class-token-position", choices=CLASS_TOKEN_POSITIONS, default=None,
                    help="where the class name goes in the prompt (default end; coop and kgcoop)")
    lg.add_argument("--learner-opt", action="append", default=[], metavar="KEY=VALUE",
                    help="any other option of a method's config, repeatable, given to every method of the grid whose "
                         "config has it, e.g. depth_vision=4 for deep prompts on a backbone with 4 layers")
    add_train_args(p)
    p.set_defaults(func=run)


def _learner(args: argparse.Namespace) -> dict:
    """The learner options the user chose (as ``vlprompt train`` reads them: ``--n-ctx`` means random init)."""
    opts: dict = {}
    if args.n_ctx is not None:
        opts.update(n_ctx=args.n_ctx, ctx_init=None)
    if args.ctx_init is not None:
        opts["ctx_init"] = args.ctx_init
    if args.class_token_position is not None:
        opts["class_token_position"] = args.class_token_position
    opts.update(_learner_opts(getattr(args, "learner_opt", None) or []))
    return opts


def _learner_opts(items: list[str]) -> dict:
    """``--learner-opt KEY=VALUE`` items, each typed by the first registered prompt learner whose config has ``KEY``
    (the grid gives it only to the methods whose config has it: :func:`vlprompt.runs.jobs.run_job`)."""
    from vlprompt.cli.common import coerce_option
    from vlprompt.errors import ConfigError
    from vlprompt.prompts import get_prompt_learner_class, list_prompt_learners

    configs = [get_prompt_learner_class(m).config_class.__dataclass_fields__ for m in list_prompt_learners()]
    opts: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"--learner-opt '{item}' is not KEY=VALUE, e.g. --learner-opt depth_vision=4.")
        owner = next((f for f in configs if key in f), None)
        if owner is None:
            valid = sorted({k for f in configs for k in f})
            raise ConfigError(f"--learner-opt {key}: not an option of any registered prompt learner; valid: "
                              f"{', '.join(valid)}.")
        opts[key] = coerce_option(key, value, owner[key].default)
    return opts


def build_config(args: argparse.Namespace):
    """:class:`vlprompt.benchmark.BenchmarkConfig` from parsed arguments."""
    from vlprompt.benchmark import BenchmarkConfig, parse_datasets, parse_ints
    from vlprompt.errors import ConfigError

    if args.datasets is None and args.protocol in ("fewshot", "base2new"):
        raise ConfigError(f"--protocol {args.protocol} needs --datasets: comma-separated benchmark names, custom "
                          "specs, or 'all' (the 11 few-shot benchmarks).")
    if args.datasets is None or (args.protocol in ("dg", "xd") and args.datasets.strip() == "all"):
        datasets: tuple[str, ...] = ()  # dg/xd: the protocol's own targets
    else:
        datasets = tuple(parse_datasets(args.datasets))
    methods = None if args.methods is None else tuple(m.strip() for m in args.methods.split(",") if m.strip())
    return BenchmarkConfig(
        datasets=datasets, shots=None if args.shots is None else tuple(parse_ints(args.shots, "--shots")),
        seeds=tuple(parse_ints(args.seeds, "--seeds")), methods=methods, out=args.out, root=args.root,
        backbone=args.backbone, pretrained=args.pretrained, device=args.device, learner=_learner(args),
        train=train_config(args), cache_dir=args.cache_dir, fail_fast=args.fail_fast,
        tensorboard=args.tensorboard, protocol=args.protocol,
        source=args.source if args.protocol in ("dg", "xd") else "imagenet",
    )


def build_executor(args: argparse.Namespace):
    """:class:`vlprompt.runs.grid_run.ExecutorConfig` from parsed arguments."""
    from vlprompt.runs.grid_run import ExecutorConfig

    return ExecutorConfig(kind=args.executor, partition=args.slurm_partition, time_min=args.slurm_time_min,
                          gpus_per_node=args.slurm_gpus_per_node, cpus_per_task=args.slurm_cpus_per_task,
                          array_parallelism=args.slurm_array_parallelism,
                          poll_seconds=10.0 if args.executor == "slurm" else 1.0)


def _result_line(job, metrics: dict | None, error: str | None) -> str:
    if not metrics:
        return f"{job}: FAILED: {error}"
    line = f"{job}: accuracy {metrics['accuracy']:.2f}%"
    evaluations = metrics.get("evaluations") or {}
    return line + "".join(f", {name} {acc:.2f}%" for name, acc in evaluations.items())


def run(args: argparse.Namespace) -> int:
    """Run ``vlprompt benchmark``."""
    from tqdm.auto import tqdm

    from vlprompt.benchmark import describe, plan, run_benchmark

    cfg = build_config(args)
    executor = build_executor(args)
    if args.dry_run:
        jobs = plan(cfg)
        for job in jobs:
            print(describe(job, cfg))
        todo = sum(not j.done for j in jobs)
        print(f"{len(jobs)} runs: {todo} to run, {len(jobs) - todo} already finished")
        return 0

    def on_result(job, metrics, error):
        tqdm.write(_result_line(job, metrics, error), file=sys.stderr)

    summary = run_benchmark(cfg, progress=args.executor == "local", report=args.report, on_result=on_result,
                            executor=executor)
    missing = f" ({len(summary.not_started)} not started: missing {', '.join(summary.missing)})" if summary.missing else ""
    print(f"{len(summary.jobs)} runs: {len(summary.ran)} ran, {len(summary.skipped)} already finished, "
          f"{len(summary.failed)} failed{missing}")
    if summary.report:
        print(summary.report["markdown"])
        for kind, path in summary.report["files"].items():
            print(f"wrote {kind}: {path}", file=sys.stderr)
    for dataset, why in summary.missing.items():  # one line per missing dataset, not one per run
        runs = sum(j.dataset == dataset for j in summary.not_started)
        print(f"not started: dataset {dataset} ({runs} run(s)): {why}", file=sys.stderr)
    for job, error in summary.failed:
        if job not in summary.not_started:
            print(f"failed: {job}: {error}", file=sys.stderr)
    return 1 if summary.failed else 0
