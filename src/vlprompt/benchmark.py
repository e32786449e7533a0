"""The few-shot benchmark runner: the CoOp paper's grid (datasets × methods × shots × seeds) as run folders.

Layout under ``RUNS_DIR``: ``<dataset>/<method>/<shots>shots/seed<k>/`` for the learned methods and the linear
probe, ``<dataset>/zeroshot/`` (once per dataset) for zero-shot CLIP. A run whose folder already holds
``metrics.json`` is finished and skipped, so re-running the same command resumes an interrupted benchmark (and a
larger grid extends a smaller one). ``RUNS_DIR/benchmark.json`` records the settings the runs were made with; a
resume with different settings is refused rather than mixing two recipes in one table. Image features of the test
and few-shot sets are reused across the grid by the feature cache (its keys are the records, not the run). At the
end the report (:func:`vlprompt.reports.write_report`) is written into ``RUNS_DIR``.

Methods: ``coop`` (unified context, M=16, class token at the end unless told otherwise), ``coop-csc``
(class-specific context), ``zeroshot`` (the dataset's hand-crafted template), ``linear-probe``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vlprompt import __version__
from vlprompt._io import atomic_write_json
from vlprompt.engine.config import TrainConfig
from vlprompt.errors import ArtifactError, ConfigError, VLPromptError

_logger = logging.getLogger(__name__)

METHODS = ("coop", "coop-csc", "zeroshot", "linear-probe")
SETTINGS_FILE = "benchmark.json"


def fewshot_benchmarks() -> list[str]:
    """The 11 few-shot benchmarks of the paper (every built-in dataset except the ImageNet variants used for DG)."""
    from vlprompt.data import IMAGENET_FAMILY, list_datasets

    return [d for d in list_datasets() if d not in IMAGENET_FAMILY[1:]]


def _split(value: str | list | tuple) -> list[str]:
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    return [s.strip() for s in items if s.strip()]


def parse_datasets(value: str | list[str]) -> list[str]:
    """``all`` or a comma-separated list of benchmark names (official names accepted) and custom specs.

    Raises:
        DataError: an unknown benchmark name (with close matches).
        ConfigError: an empty list.
    """
    from vlprompt.data import get_benchmark
    from vlprompt.data.load import CUSTOM_PREFIXES

    names = _split(value)
    if names == ["all"]:
        return fewshot_benchmarks()
    if not names:
        raise ConfigError("--datasets is empty; pass e.g. 'oxford_pets,dtd' or 'all' (the 11 few-shot benchmarks).")
    return [n if n.startswith(CUSTOM_PREFIXES) else get_benchmark(n).name for n in names]


def parse_ints(value: str | list[int], flag: str) -> list[int]:
    """``"1,2,4"`` → ``[1, 2, 4]`` (order kept, duplicates dropped)."""
    try:
        out = [int(v) for v in _split(value)]
    except ValueError as e:
        raise ConfigError(f"{flag} '{value}' must be comma-separated integers, e.g. 1,2,4,8,16.") from e
    if not out:
        raise ConfigError(f"{flag} is empty; pass comma-separated integers, e.g. 1,2,4,8,16.")
    return list(dict.fromkeys(out))


def dataset_dirname(dataset: str) -> str:
    """Folder name of a dataset under ``RUNS_DIR``: the benchmark name, or the custom data's last path component."""
    base = os.path.basename(dataset.split(":", 1)[-1].rstrip("/\\")) or "dataset"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", base)


@dataclass(frozen=True)
class BenchmarkConfig:
    """The grid and the settings shared by every run of a benchmark.

    Attributes:
        datasets: benchmark names or custom specs (``folder:PATH``, ``csv:PATH``, ``split:PATH.json``).
        shots: shots per class (positive).
        seeds: seeds (the paper: 1, 2, 3).
        methods: a subset of :data:`METHODS`.
        out: ``RUNS_DIR``.
        root: the ``$DATA`` folder of the benchmarks.
        backbone, pretrained, device: the backbone of every run.
        learner: CoOp options shared by ``coop`` and ``coop-csc`` (``n_ctx``, ``ctx_init``, ``class_token_position``).
        train: optimisation settings of the CoOp runs (``epochs=None``: the official count per shot number).
        cache_dir: feature cache folder (``None``: the default; ``""``: off, which defeats the reuse).
        fail_fast: stop at the first failed run instead of continuing with the rest of the grid.
        tensorboard: every run writes TensorBoard events into its own ``<run folder>/tensorboard/``, so
            ``tensorboard --logdir RUNS_DIR`` compares the grid (:mod:`vlprompt.engine.tracking`). Not a setting of
            the recipe: a grid can be resumed with or without it.
    """

    datasets: tuple[str, ...]
    shots: tuple[int, ...] = (1, 2, 4, 8, 16)
    seeds: tuple[int, ...] = (1, 2, 3)
    methods: tuple[str, ...] = METHODS
    out: str = "runs"
    root: str | None = None
    backbone: str = "RN50"
    pretrained: str | None = None
    device: str = "auto"
    learner: dict = field(default_factory=lambda: {"n_ctx": 16, "ctx_init": None, "class_token_position": "end"})
    train: TrainConfig = field(default_factory=TrainConfig)
    cache_dir: str | None = None
    fail_fast: bool = False
    tensorboard: bool = False

    def __post_init__(self) -> None:
        problems = []
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            problems.append(f"--methods {','.join(self.methods) or '(empty)'}: expected a comma-separated subset of "
                            f"{','.join(METHODS)}")
        if not self.datasets:
            problems.append("--datasets is empty")
        if any(s < 1 for s in self.shots) or (not self.shots and set(self.methods) - {"zeroshot"}):
            problems.append(f"--shots {list(self.shots)}: every shot count must be ≥ 1 (the few-shot protocol)")
        if not self.seeds:
            problems.append("--seeds is empty")
        dirs = [dataset_dirname(d) for d in self.datasets]
        if len(set(dirs)) != len(dirs):
            problems.append(f"--datasets {list(self.datasets)} give the same folder name twice ({dirs})")
        if problems:
            raise ConfigError("; ".join(problems) + ".")

    def settings(self) -> dict:
        """What must not change between the runs of one ``RUNS_DIR`` (recorded in ``benchmark.json``)."""
        train = {k: v for k, v in self.train.to_dict().items() if k not in ("num_workers", "eval_batch_size")}
        return {"backbone": self.backbone, "pretrained": self.pretrained, "learner": dict(self.learner), "train": train}


@dataclass(frozen=True)
class Job:
    """One run of the grid (``shots=None`` for zero-shot)."""

    dataset: str
    method: str
    shots: int | None
    seed: int
    out: Path

    @property
    def done(self) -> bool:
        """Whether the run folder holds a finished run (``metrics.json``)."""
        return (self.out / "metrics.json").exists()

    def __str__(self) -> str:
        return f"{dataset_dirname(self.dataset)}/{self.method}" + (
            f"/{self.shots}shots/seed{self.seed}" if self.shots is not None else "")


@dataclass
class BenchmarkSummary:
    """What :func:`run_benchmark` did: finished runs, skipped (already finished) runs, failures, the report."""

    jobs: list[Job]
    ran: list[Job] = field(default_factory=list)
    skipped: list[Job] = field(default_factory=list)
    failed: list[tuple[Job, str]] = field(default_factory=list)
    report: dict | None = None


def plan(cfg: BenchmarkConfig) -> list[Job]:
    """The grid in execution order: per dataset, zero-shot first, then each method × shots × seed."""
    jobs = []
    root = Path(cfg.out)
    for ds in cfg.datasets:
        base = root / dataset_dirname(ds)
        if "zeroshot" in cfg.methods:
            jobs.append(Job(ds, "zeroshot", None, cfg.seeds[0], base / "zeroshot"))
        for method in (m for m in cfg.methods if m != "zeroshot"):
            for shots in cfg.shots:
                for seed in cfg.seeds:
                    jobs.append(Job(ds, method, shots, seed, base / method / f"{shots}shots" / f"seed{seed}"))
    return jobs


def run_job(job: Job, cfg: BenchmarkConfig, backbone=None) -> dict:
    """Run one job into its folder (through :func:`vlprompt.engine.run.train_run`, ``zeroshot_run`` or
    :func:`vlprompt.engine.baselines.linear_probe_run`) and return its metrics; ``backbone`` reuses a built one."""
    from vlprompt.engine.run import RunSpec, train_run, zeroshot_run

    spec = RunSpec(dataset=job.dataset, out=str(job.out), root=cfg.root, shots=job.shots, seed=job.seed,
                   backbone=cfg.backbone, pretrained=cfg.pretrained, train=cfg.train, device=cfg.device,
                   cache_dir=cfg.cache_dir, tensorboard=cfg.tensorboard)
    if job.method == "zeroshot":
        return zeroshot_run(spec, [dataset_template(job.dataset, cfg.root)], backbone=backbone)
    if job.method == "linear-probe":
        from vlprompt.engine.baselines import linear_probe_run

        return linear_probe_run(spec, backbone=backbone)
    spec.method = "coop"
    spec.learner = {**cfg.learner, "csc": job.method == "coop-csc"}
    return train_run(spec, backbone=backbone)


def dataset_template(dataset: str, root: str | None) -> str:
    """The hand-crafted zero-shot template of a benchmark (custom data: the template its loader reports)."""
    from vlprompt.data import get_templates, load_dataset
    from vlprompt.data.benchmarks import BENCHMARKS

    if dataset in BENCHMARKS:
        return get_templates("dataset", BENCHMARKS[dataset].template, dataset)[0]
    return load_dataset(dataset, root).template


def check_settings(cfg: BenchmarkConfig) -> None:
    """Record the settings in ``RUNS_DIR/benchmark.json``, or refuse when the folder was started with others."""
    import json

    path = Path(cfg.out) / SETTINGS_FILE
    want = cfg.settings()
    if path.exists():
        try:
            have = json.loads(path.read_text()).get("settings", {})
        except (OSError, json.JSONDecodeError, AttributeError) as e:
            raise ArtifactError(f"'{path}' is not valid JSON ({e}); delete it to restart the benchmark bookkeeping.") from e
        diffs = _diff(have, want)
        if diffs:
            raise ConfigError(
                f"--out '{cfg.out}' holds a benchmark made with other settings ({'; '.join(diffs)}); resuming would "
                "mix two recipes in one table. Use the same flags, or another --out for the new settings.")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"vlprompt_version": __version__, "settings": want,
                             "grid": {"datasets": list(cfg.datasets), "shots": list(cfg.shots),
                                      "seeds": list(cfg.seeds), "methods": list(cfg.methods)}})


def _diff(have: dict, want: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(have) | set(want)):
        a, b = have.get(key), want.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: was {a!r}, now {b!r}")
    return out


def _build_backbone(cfg: BenchmarkConfig):
    from vlprompt.backbones import create_backbone
    from vlprompt.engine.pipeline import check_precision, resolve_device

    device = resolve_device(cfg.device)
    check_precision(cfg.train.precision, device)
    return create_backbone(cfg.backbone, cfg.pretrained, device=device, precision=cfg.train.precision)


def run_benchmark(
    cfg: BenchmarkConfig,
    *,
    progress: bool = True,
    report: bool = True,
    on_result: Callable[[Job, dict | None, str | None], None] | None = None,
) -> BenchmarkSummary:
    """Run every unfinished job of the grid, then write the report into ``cfg.out``.

    Args:
        cfg: the grid and its settings.
        progress: a progress bar over the grid (the runs themselves stay quiet).
        report: write the report at the end (when at least one run is finished).
        on_result: called after each job that ran, with ``(job, metrics, None)`` or ``(job, None, error message)``.

    Returns:
        The :class:`BenchmarkSummary`; failed runs (a :class:`VLPromptError`, e.g. a missing dataset) are listed
        there and the grid goes on, unless ``cfg.fail_fast``.
    """
    from tqdm.auto import tqdm

    if cfg.tensorboard:  # once for the grid, not as a failure of every run
        from vlprompt.engine.tracking import require_tensorboard

        require_tensorboard()
    check_settings(cfg)
    summary = BenchmarkSummary(plan(cfg))
    backbone = None  # built at the first job that runs, then shared by the whole grid (it stays frozen)
    bar = tqdm(summary.jobs, desc="benchmark", unit="run", disable=not progress)
    for job in bar:
        if job.done:
            summary.skipped.append(job)
            continue
        bar.set_postfix_str(str(job))
        if backbone is None:  # a backbone that cannot be built fails the whole grid: let the error through
            backbone = _build_backbone(cfg)
        try:
            metrics = run_job(job, cfg, backbone)
        except VLPromptError as e:
            summary.failed.append((job, str(e)))
            if on_result:
                on_result(job, None, str(e))
            else:
                _logger.warning("%s failed: %s", job, e)
            if cfg.fail_fast:
                break
            continue
        summary.ran.append(job)
        if on_result:
            on_result(job, metrics, None)
    bar.close()
    _logger.info("benchmark: %d ran, %d already finished, %d failed", len(summary.ran), len(summary.skipped),
                 len(summary.failed))
    if report and (summary.ran or summary.skipped):
        from vlprompt.reports import write_report

        summary.report = write_report(cfg.out)
    return summary


__all__ = ["METHODS", "BenchmarkConfig", "BenchmarkSummary", "Job", "check_settings", "dataset_dirname",
           "fewshot_benchmarks", "parse_datasets", "parse_ints", "plan", "run_benchmark", "run_job"]
