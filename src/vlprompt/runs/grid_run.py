"""Execute a planned grid (:mod:`vlprompt.runs.grid`): each job through the engine's run functions, resumably.

A job whose run folder already holds ``metrics.json`` is not trained again, and each of its evaluations that is
finished is not repeated, so re-running the same command resumes an interrupted grid (a larger grid extends a
smaller one, and a ``dg``/``xd`` grid reuses the ImageNet runs of a few-shot grid in the same ``RUNS_DIR``).
``RUNS_DIR/benchmark.json`` records the settings the runs were made with; a resume with different settings is
refused rather than mixing two recipes in one table. Image features of the test and few-shot sets are reused
across the grid by the feature cache (its keys are the records, not the run). At the end the report
(:func:`vlprompt.reports.write_report`) is written into ``RUNS_DIR``.

Jobs run through :mod:`vlprompt.runs.jobs`; where they run (``--executor``) is :mod:`vlprompt.runs.executors`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from vlprompt import __version__
from vlprompt._io import atomic_write_json
from vlprompt.errors import ArtifactError, ConfigError, DataError
from vlprompt.runs.executors import (  # noqa: F401 (re-exported: the grid's public names stay importable here)
    EXECUTORS,
    ExecutorConfig,
    GridJob,
    require_submitit,
    run_here,
    run_pool,
    run_submitit,
)
from vlprompt.runs.grid import BenchmarkConfig, Job, plan
from vlprompt.runs.jobs import (  # noqa: F401
    BenchmarkSummary,
    dataset_template,
    describe,
    job_recipe,
    missing_datasets,
    run_job,
)

_logger = logging.getLogger(__name__)

SETTINGS_FILE = "benchmark.json"
#: Version of ``benchmark.json`` (absent: written before the grid knew protocols, see :func:`_legacy_settings`).
SETTINGS_FORMAT = 2


_LEGACY_LEARNER_DEFAULTS = {"n_ctx": 16, "ctx_init": None, "class_token_position": "end"}


def _legacy_settings(settings: dict) -> dict:
    """Settings of a ``benchmark.json`` without ``format`` as this version records them: the learner options that
    equal the old flag defaults were not chosen by the user (``--n-ctx N`` also sets ``ctx_init`` ``None``)."""
    learner = dict(settings.get("learner") or {})
    kept = {k: v for k, v in learner.items() if _LEGACY_LEARNER_DEFAULTS.get(k, object()) != v}
    if "n_ctx" in kept:
        kept.setdefault("ctx_init", None)
    return {**settings, "learner": kept}


def check_settings(cfg: BenchmarkConfig) -> None:
    """Record the settings in ``RUNS_DIR/benchmark.json``, or refuse when the folder was started with others."""
    path = Path(cfg.out) / SETTINGS_FILE
    want = cfg.settings()
    grids: dict = {}
    if path.exists():
        try:
            recorded = json.loads(path.read_text())
            have = recorded.get("settings", {})
            grids = dict(recorded.get("grids") or {})
        except (OSError, json.JSONDecodeError, AttributeError) as e:
            raise ArtifactError(f"'{path}' is not valid JSON ({e}); delete it to restart the benchmark bookkeeping.") from e
        if "format" not in recorded:
            have = _legacy_settings(have)
            grids.setdefault("fewshot", recorded.get("grid"))
        from vlprompt.backbones.microclip import LEGACY_DEFAULT_WEIGHTS, records_old_default

        if records_old_default(have.get("backbone"), have.get("pretrained")):
            have = {**have, "pretrained": LEGACY_DEFAULT_WEIGHTS}  # recorded while v1 was micro-CLIP's default
        diffs = _diff(have, want)
        if diffs:
            raise ConfigError(
                f"--out '{cfg.out}' holds a benchmark made with other settings ({'; '.join(diffs)}); resuming would "
                "mix two recipes in one table. Use the same flags, or another --out for the new settings.")
    path.parent.mkdir(parents=True, exist_ok=True)
    grids[cfg.protocol] = cfg.grid()
    atomic_write_json(path, {"format": SETTINGS_FORMAT, "vlprompt_version": __version__, "settings": want,
                             "grid": cfg.grid(), "protocol": cfg.protocol, "grids": grids})


def _diff(have: dict, want: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(have) | set(want)):
        a, b = have.get(key), want.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: was {a!r}, now {b!r}")
    return out


def set_aside_missing(summary: BenchmarkSummary, cfg: BenchmarkConfig) -> None:
    """Check each dataset of the unfinished jobs once before any runs (:func:`missing_datasets`): the jobs of a
    missing one are not started (``summary.not_started``, and ``failed`` with the dataset's message), with one
    warning per dataset instead of one failure per run; the other datasets' jobs run.

    Raises:
        DataError: a dataset is missing and ``cfg.fail_fast`` (nothing has run).
    """
    summary.missing = missing_datasets(summary.jobs, cfg.root)
    for dataset, why in summary.missing.items():
        if cfg.fail_fast:
            raise DataError(why)
        jobs = [j for j in summary.jobs if j.dataset == dataset and not j.done]
        summary.not_started += jobs
        summary.failed += [(j, why) for j in jobs]
        _logger.warning("dataset %s is missing, its %d unfinished run(s) are not started: %s", dataset, len(jobs), why)


def run_benchmark(
    cfg: BenchmarkConfig,
    *,
    progress: bool = True,
    report: bool = True,
    on_result: Callable[[Job, dict | None, str | None], None] | None = None,
    executor: ExecutorConfig | None = None,
) -> BenchmarkSummary:
    """Run every unfinished job of the grid, then write the report into ``cfg.out``.

    Args:
        cfg: the grid and its settings.
        progress: a progress bar over the grid (the runs themselves stay quiet).
        report: write the report at the end (when at least one run is finished).
        on_result: called after each job that ran, with ``(job, metrics, None)`` or ``(job, None, error message)``
            (a cluster executor: in the order the jobs finish).
        executor: where the jobs run (``None``: ``local``, in this process); see the module docstring.

    Returns:
        The :class:`BenchmarkSummary`; failed runs (a :class:`VLPromptError`; on a cluster also a job that crashed
        or was killed) are listed there and the grid goes on, unless ``cfg.fail_fast``. A missing dataset is found
        before anything runs (:func:`set_aside_missing`): its runs are not started, the others run.

    Raises:
        ConfigError: a cluster executor without submitit installed (before anything is submitted).
        DataError: a missing dataset with ``cfg.fail_fast``.
    """
    executor = executor or ExecutorConfig()
    if EXECUTORS[executor.kind] is not None:
        require_submitit(executor.kind)
    if cfg.tensorboard:  # once for the grid, not as a failure of every run
        from vlprompt.engine.tracking import require_tensorboard

        require_tensorboard()
    check_settings(cfg)
    summary = BenchmarkSummary(plan(cfg))
    set_aside_missing(summary, cfg)
    if EXECUTORS[executor.kind] is None:
        run_here(summary, cfg, progress, on_result)
    else:
        run_submitit(summary, cfg, executor, on_result)
    _logger.info("benchmark: %d ran, %d already finished, %d failed", len(summary.ran), len(summary.skipped),
                 len(summary.failed))
    if report and (summary.ran or summary.skipped):
        from vlprompt.reports import write_report

        summary.report = write_report(cfg.out, missing_datasets=summary.missing)
    return summary


def run_jobs(
    jobs: list[Job],
    cfg: BenchmarkConfig,
    *,
    workers: int = 0,
    progress: bool = True,
    desc: str = "runs",
    on_result: Callable[[Job, dict | None, str | None], None] | None = None,
) -> BenchmarkSummary:
    """Run the unfinished ``jobs`` (built by the caller, e.g. the demo's variants and folders) with ``cfg``'s
    settings, as :func:`run_benchmark` runs a planned grid but without its bookkeeping or report.

    Args:
        jobs: the jobs; finished ones (``job.done``) are skipped.
        cfg: the settings shared by the jobs (backbone, training, cache, ...); its grid fields are not used.
        workers: 0 runs the jobs in this process sharing one backbone (the ``local`` executor); ``N`` runs them in
            ``N`` single-threaded worker processes (spawned), each with its own backbone, in the order given.
        progress: a progress bar (``desc``).
        on_result: as for :func:`run_benchmark`.

    Returns:
        The :class:`BenchmarkSummary` (``failed``: the jobs that raised a :class:`VLPromptError`).
    """
    summary = BenchmarkSummary(list(jobs))
    set_aside_missing(summary, cfg)
    if workers <= 0:
        run_here(summary, cfg, progress, on_result, desc=desc)
    else:
        run_pool(summary, cfg, workers, progress, on_result, desc)
    return summary


__all__ = ["EXECUTORS", "SETTINGS_FILE", "BenchmarkSummary", "ExecutorConfig", "GridJob", "check_settings",
           "dataset_template", "describe", "job_recipe", "missing_datasets", "require_submitit", "run_benchmark", "run_job",
           "run_jobs", "set_aside_missing"]
