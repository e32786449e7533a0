"""Execute a planned grid (:mod:`vlprompt.runs.grid`): each job through the engine's run functions, resumably.

A job whose run folder already holds ``metrics.json`` is not trained again, and each of its evaluations that is
finished is not repeated, so re-running the same command resumes an interrupted grid (a larger grid extends a
smaller one, and a ``dg``/``xd`` grid reuses the ImageNet runs of a few-shot grid in the same ``RUNS_DIR``).
``RUNS_DIR/benchmark.json`` records the settings the runs were made with; a resume with different settings is
refused rather than mixing two recipes in one table. Image features of the test and few-shot sets are reused
across the grid by the feature cache (its keys are the records, not the run). At the end the report
(:func:`vlprompt.reports.write_report`) is written into ``RUNS_DIR``.

**Executors** (:class:`ExecutorConfig`, ``--executor``). ``local`` (the default) runs the jobs one after another in
this process, sharing one backbone. ``slurm`` sends the unfinished jobs to a SLURM cluster through submitit (the
optional extra ``pip install 'vlprompt[cluster]'``) as one job array (``executor.map_array``), waits for them and
then writes the report; ``submitit-local`` is the same code path with submitit's local executor (one subprocess per
job on this machine), the test and debug mode. Each cluster job calls :class:`GridJob`, i.e. :func:`run_job`, the
function the local loop calls, so resuming is the same: finished runs are skipped when the grid is planned (nothing
is submitted for them), and a job that was killed (time limit, preemption, ``scancel``) leaves its run folder with
the saved training state, from which it continues when the same command submits it again. On a time-out or
preemption submitit also requeues the job itself (:meth:`GridJob.checkpoint`), which resumes the same way. submitit
keeps its job files and logs in ``RUNS_DIR/.submitit`` (a dot folder, which the report does not scan).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlprompt import __version__
from vlprompt._io import atomic_write_json
from vlprompt.errors import ArtifactError, ConfigError, VLPromptError
from vlprompt.runs.grid import BASELINES, BenchmarkConfig, Evaluation, Job, dataset_dirname, learner_of, plan

_logger = logging.getLogger(__name__)

SETTINGS_FILE = "benchmark.json"
#: Version of ``benchmark.json`` (absent: written before the grid knew protocols, see :func:`_legacy_settings`).
SETTINGS_FORMAT = 2
#: ``--executor`` choices → submitit's cluster name (``None``: the in-process loop, no submitit).
EXECUTORS: dict[str, str | None] = {"local": None, "slurm": "slurm", "submitit-local": "local"}
#: Where submitit keeps its job files and logs, under ``RUNS_DIR``.
SUBMITIT_DIR = ".submitit"
CLUSTER_INSTALL_HINT = "pip install 'vlprompt[cluster]'"


#: :class:`ExecutorConfig` attribute → its command-line flag (for the error messages).
_FLAGS = {"partition": "--slurm-partition", "time_min": "--slurm-time-min", "gpus_per_node": "--slurm-gpus-per-node",
          "cpus_per_task": "--slurm-cpus-per-task", "array_parallelism": "--slurm-array-parallelism"}


@dataclass(frozen=True)
class ExecutorConfig:
    """Where the jobs of a grid run (``--executor`` and the ``--slurm-*`` flags; not part of the recipe).

    Attributes:
        kind: ``local`` (in this process, one job after another), ``slurm`` (a SLURM job array through submitit) or
            ``submitit-local`` (submitit's local executor: one subprocess per job; the test/debug mode).
        partition: SLURM partition (submitit ``slurm_partition``).
        time_min: time limit of each job in minutes (submitit ``timeout_min``).
        gpus_per_node: GPUs of each job (submitit ``gpus_per_node``).
        cpus_per_task: CPUs of each job (submitit ``cpus_per_task``).
        array_parallelism: at most this many jobs of the array at once (submitit ``slurm_array_parallelism``).
        folder: submitit's folder (``None``: ``RUNS_DIR/.submitit``).
        poll_seconds: how often the finished jobs are collected while waiting.
    """

    kind: str = "local"
    partition: str | None = None
    time_min: int | None = None
    gpus_per_node: int | None = None
    cpus_per_task: int | None = None
    array_parallelism: int | None = None
    folder: str | None = None
    poll_seconds: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in EXECUTORS:
            raise ConfigError(f"--executor '{self.kind}': expected one of {', '.join(EXECUTORS)}.")
        given = [flag for name, flag in _FLAGS.items() if getattr(self, name) is not None]
        if self.kind == "local" and given:
            raise ConfigError(f"{', '.join(given)} only apply to a cluster executor; add --executor slurm (or "
                              "submitit-local), or drop them.")
        for name in ("time_min", "gpus_per_node", "cpus_per_task", "array_parallelism"):
            value = getattr(self, name)
            least = 0 if name == "gpus_per_node" else 1
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise ConfigError(f"{_FLAGS[name]} {value!r}: expected an integer ≥ {least}.")

    def parameters(self) -> dict[str, Any]:
        """submitit ``update_parameters`` keywords of the options that were given (``slurm_*`` are ignored by
        submitit's local executor)."""
        out = {"slurm_partition": self.partition, "timeout_min": self.time_min, "gpus_per_node": self.gpus_per_node,
               "cpus_per_task": self.cpus_per_task, "slurm_array_parallelism": self.array_parallelism}
        return {k: v for k, v in out.items() if v is not None}


@dataclass
class BenchmarkSummary:
    """What :func:`run_benchmark` did: finished runs, skipped (already finished) runs, failures, the report."""

    jobs: list[Job]
    ran: list[Job] = field(default_factory=list)
    skipped: list[Job] = field(default_factory=list)
    failed: list[tuple[Job, str]] = field(default_factory=list)
    report: dict | None = None


def job_recipe(job: Job, cfg: BenchmarkConfig) -> dict | None:
    """``{"epochs", "batch_size"}`` a learned job will train with (the user's values, else its method's recipe, by
    :func:`vlprompt.engine.recipe.resolve_train_config`); ``None`` for the baselines. Custom data is resolved as a
    dataset that is not ImageNet (its name is known only once it is loaded)."""
    if job.method in BASELINES:
        return None
    from vlprompt.data.benchmarks import BENCHMARKS
    from vlprompt.engine.recipe import resolve_train_config

    name = job.dataset if job.dataset in BENCHMARKS else None
    train = resolve_train_config(cfg.train, learner_of(job.method)[0], job.shots, name)
    return {"epochs": train.epochs, "batch_size": train.batch_size}


def describe(job: Job, cfg: BenchmarkConfig) -> str:
    """One line of ``--dry-run``: status, protocol, dataset, method, shots, seed, classes (base-to-new), recipe, run
    folder, then each evaluation target and its folder."""
    recipe = job_recipe(job, cfg)
    parts = ["skip" if job.done else "run ", job.protocol, dataset_dirname(job.dataset), job.method,
             f"shots {job.shots if job.shots is not None else 0}", f"seed {job.seed}"]
    if job.subsample != "all":
        parts.append(f"classes {job.subsample}")
    if recipe:
        parts.append(f"epochs {recipe['epochs']} batch {recipe['batch_size']}")
    line = "  ".join(parts) + f"  → {job.out}"
    for e in job.evaluations:
        line += f"  | eval {e.name}{' (done)' if e.done else ''} → {e.out}"
    return line


def _spec(cfg: BenchmarkConfig, dataset: str, out: Path, shots: int | None, seed: int, subsample: str, **extra):
    """A fresh :class:`~vlprompt.engine.run.RunSpec` of one run (``extra``: ``method``, ``learner``, ``label``)."""
    from vlprompt.engine.run import RunSpec

    return RunSpec(dataset=dataset, out=str(out), root=cfg.root, shots=shots, seed=seed, subsample=subsample,
                   backbone=cfg.backbone, pretrained=cfg.pretrained, train=cfg.train, device=cfg.device,
                   cache_dir=cfg.cache_dir, tensorboard=cfg.tensorboard,
                   state_every_seconds=cfg.state_every_seconds, **extra)


def _labelled(job: Job) -> dict:
    return {} if job.label is None else {"label": job.label}


def _zeroshot(cfg: BenchmarkConfig, job: Job, dataset: str, out: Path, subsample: str, backbone) -> dict:
    from vlprompt.engine.run import zeroshot_run

    spec = _spec(cfg, dataset, out, None, job.seed, subsample, **_labelled(job))
    templates = list(job.templates) if job.templates else [dataset_template(dataset, cfg.root)]
    return zeroshot_run(spec, templates, backbone=backbone)


def _train(job: Job, cfg: BenchmarkConfig, backbone) -> dict:
    """The job's own run: zero-shot, the linear probe, or a prompt trained with its method's recipe."""
    if job.method == "zeroshot":
        return _zeroshot(cfg, job, job.dataset, job.out, job.subsample, backbone)
    if job.method == "linear-probe":
        from vlprompt.engine.baselines import linear_probe_run

        return linear_probe_run(_spec(cfg, job.dataset, job.out, job.shots, job.seed, job.subsample,
                                      **_labelled(job)), backbone=backbone)
    from vlprompt.engine.run import train_run

    # the registered learner and the variant's options (coop-csc: csc), the user's, then the job's own; epochs and
    # batch size the user left unset are filled from the method's own recipe by train_run (resolve_train_config)
    method, opts = learner_of(job.method)
    spec = _spec(cfg, job.dataset, job.out, job.shots, job.seed, job.subsample, method=method,
                 learner={**opts, **cfg.learner, **job.learner}, **_labelled(job))
    return train_run(spec, backbone=backbone)


def _evaluate(job: Job, ev: Evaluation, cfg: BenchmarkConfig, backbone) -> dict:
    """One evaluation of the job's prompt (zero-shot: zero-shot CLIP itself) on ``ev``'s classes or dataset."""
    if job.method == "zeroshot":
        return _zeroshot(cfg, job, ev.dataset, ev.out, ev.subsample, backbone)
    from vlprompt.engine.run import eval_run

    # the prompt is rebuilt from the run folder for the target's class names (PromptClassifier.load)
    return eval_run(str(job.out), _spec(cfg, ev.dataset, ev.out, None, job.seed, ev.subsample))


def run_job(job: Job, cfg: BenchmarkConfig, backbone=None) -> dict:
    """Run one job into its folder (through :func:`vlprompt.engine.run.train_run`, ``zeroshot_run`` or
    :func:`vlprompt.engine.baselines.linear_probe_run`), then each of its unfinished evaluations (``eval_run``);
    ``backbone`` reuses a built one.

    Returns:
        The job's own metrics; with evaluations, plus ``"evaluations"``: ``{name: accuracy}`` of every evaluation.

    Raises:
        VLPromptError: the run failed (its evaluations are not attempted), or some evaluation failed: the others
            were still run, and the message names every failed target.
    """
    if job.trained:  # an interrupted grid: the run finished, some evaluation did not
        metrics = json.loads((job.out / "metrics.json").read_text(encoding="utf-8"))
    else:
        metrics = _train(job, cfg, backbone)
    if not job.evaluations:
        return metrics
    accuracies, failures = {}, []
    for ev in job.evaluations:
        if ev.done:
            accuracies[ev.name] = json.loads((ev.out / "metrics.json").read_text(encoding="utf-8"))["accuracy"]
            continue
        try:  # one missing target must not cost the others
            accuracies[ev.name] = _evaluate(job, ev, cfg, backbone)["accuracy"]
        except VLPromptError as e:
            failures.append((ev, e))
    if failures:
        raise VLPromptError("; ".join(f"eval {ev.name} ({ev.out}): {e}" for ev, e in failures)) from failures[0][1]
    return {**metrics, "evaluations": accuracies}


def dataset_template(dataset: str, root: str | None) -> str:
    """The hand-crafted zero-shot template of a benchmark (custom data: the template its loader reports)."""
    from vlprompt.data import get_templates, load_dataset
    from vlprompt.data.benchmarks import BENCHMARKS

    if dataset in BENCHMARKS:
        return get_templates("dataset", BENCHMARKS[dataset].template, dataset)[0]
    return load_dataset(dataset, root).template


#: The learner options the benchmark command recorded before the grid knew protocols, whatever the user passed
#: (its flags had these defaults; CoOp's defaults, the only learner of those grids).
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
        The :class:`BenchmarkSummary`; failed runs (a :class:`VLPromptError`, e.g. a missing dataset; on a cluster
        also a job that crashed or was killed) are listed there and the grid goes on, unless ``cfg.fail_fast``.

    Raises:
        ConfigError: a cluster executor without submitit installed (before anything is submitted).
    """
    executor = executor or ExecutorConfig()
    if EXECUTORS[executor.kind] is not None:
        require_submitit(executor.kind)
    if cfg.tensorboard:  # once for the grid, not as a failure of every run
        from vlprompt.engine.tracking import require_tensorboard

        require_tensorboard()
    check_settings(cfg)
    summary = BenchmarkSummary(plan(cfg))
    if EXECUTORS[executor.kind] is None:
        _run_here(summary, cfg, progress, on_result)
    else:
        _run_submitit(summary, cfg, executor, on_result)
    _logger.info("benchmark: %d ran, %d already finished, %d failed", len(summary.ran), len(summary.skipped),
                 len(summary.failed))
    if report and (summary.ran or summary.skipped):
        from vlprompt.reports import write_report

        summary.report = write_report(cfg.out)
    return summary


def _record(summary: BenchmarkSummary, job: Job, metrics: dict | None, error: str | None,
            on_result: Callable[[Job, dict | None, str | None], None] | None) -> None:
    """File one finished job in the summary and tell ``on_result`` (else log a failure)."""
    if error is None:
        summary.ran.append(job)
    else:
        summary.failed.append((job, error))
        if not on_result:
            _logger.warning("%s failed: %s", job, error)
    if on_result:
        on_result(job, metrics, error)


def _run_here(summary: BenchmarkSummary, cfg: BenchmarkConfig, progress: bool,
              on_result: Callable[[Job, dict | None, str | None], None] | None, desc: str | None = None) -> None:
    """The ``local`` executor: every unfinished job in this process, in plan order, sharing one backbone."""
    from tqdm.auto import tqdm

    backbone = None  # built at the first job that runs, then shared by the whole grid (it stays frozen)
    bar = tqdm(summary.jobs, desc=desc or f"benchmark ({cfg.protocol})", unit="run", disable=not progress)
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
            _record(summary, job, None, str(e), on_result)
            if cfg.fail_fast:
                break
            continue
        _record(summary, job, metrics, None, on_result)
    bar.close()


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
    if workers <= 0:
        _run_here(summary, cfg, progress, on_result, desc=desc)
    else:
        _run_pool(summary, cfg, workers, progress, on_result, desc)
    return summary


#: The backbone of each worker process of :func:`run_jobs`, built at its first job.
_PROCESS_BACKBONES: dict[tuple, Any] = {}


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)  # N single-threaded workers use N cores better than one N-threaded process
    logging.getLogger("vlprompt").setLevel(logging.ERROR)


def _pool_job(job: Job, cfg: BenchmarkConfig) -> tuple[dict | None, str | None]:
    """One job in a worker process of :func:`run_jobs`: :func:`run_job` on the process's own backbone."""
    key = (cfg.backbone, cfg.pretrained, cfg.device, cfg.train.precision)
    if key not in _PROCESS_BACKBONES:
        _PROCESS_BACKBONES[key] = _build_backbone(cfg)
    try:
        return run_job(job, cfg, _PROCESS_BACKBONES[key]), None
    except VLPromptError as e:
        return None, str(e)


def _run_pool(summary: BenchmarkSummary, cfg: BenchmarkConfig, workers: int, progress: bool,
              on_result: Callable[[Job, dict | None, str | None], None] | None, desc: str) -> None:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tqdm.auto import tqdm

    todo = [job for job in summary.jobs if not job.done]
    summary.skipped.extend(job for job in summary.jobs if job.done)
    results: dict[int, tuple[dict | None, str | None]] = {}
    with tqdm(total=len(todo), desc=desc, unit="run", disable=not progress) as bar, \
            ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_worker_init) as pool:
        futures = {pool.submit(_pool_job, job, cfg): i for i, job in enumerate(todo)}
        for fut in as_completed(futures):
            i = futures[fut]
            results[i] = fut.result()
            _tell(results[i], todo[i], on_result)
            bar.update()
    for i in sorted(results):
        if results[i][1] is None:
            summary.ran.append(todo[i])
        else:
            summary.failed.append((todo[i], results[i][1]))


class GridJob:
    """What each cluster job runs: :func:`run_job` on a freshly built backbone, as the local loop runs it.

    submitit pickles the callable and its arguments into its folder and the job unpickles them: a module-level
    class whose arguments are the job's :class:`~vlprompt.runs.grid.Job` and the grid's
    :class:`~vlprompt.runs.grid.BenchmarkConfig` (frozen dataclasses). The result is ``(metrics, None)`` or
    ``(None, error message)`` for a :class:`VLPromptError`, so that an expected failure (a missing dataset) reads as
    in the local loop; any other exception fails the submitit job and is reported from its log.
    """

    def __call__(self, job: Job, cfg: BenchmarkConfig) -> tuple[dict | None, str | None]:
        """Run ``job`` (resuming its run folder if it holds an unfinished run of the same configuration)."""
        try:
            return run_job(job, cfg, _build_backbone(cfg)), None
        except VLPromptError as e:
            return None, str(e)

    def checkpoint(self, job: Job, cfg: BenchmarkConfig):
        """Called by submitit when the job times out or is preempted: requeue the same call, which resumes from the
        training state the run folder saved after its last epoch (nothing else needs saving)."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, job, cfg)


def require_submitit(kind: str = "slurm"):
    """The ``submitit`` module, or a :class:`ConfigError` naming the extra that installs it."""
    try:
        import submitit
    except ImportError as e:
        raise ConfigError(f"--executor {kind} needs submitit, which is not installed ({e}); install the extra with: "
                          f"{CLUSTER_INSTALL_HINT}, or run with --executor local.") from e
    return submitit


def _job_failure(sjob, error: Exception) -> str:
    """One line for a submitit job that did not return: the last line of the remote traceback and its logs."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip() and not set(ln.strip()) <= {"-"}]
    # FailedJobError: "Job (task=0) failed during processing with trace:", the traceback, "You can check full
    # logs ..."; the exception line is the last one before that hint
    hint = next((i for i, ln in enumerate(lines) if ln.startswith("You can check full logs")), len(lines))
    cause = lines[hint - 1] if hint else type(error).__name__
    return f"cluster job {sjob.job_id} did not finish: {cause} (logs: {sjob.paths.stderr})"


def _run_submitit(summary: BenchmarkSummary, cfg: BenchmarkConfig, executor: ExecutorConfig,
                  on_result: Callable[[Job, dict | None, str | None], None] | None) -> None:
    """A cluster executor: the unfinished jobs as one submitit job array, each :class:`GridJob`; wait for all."""
    submitit = require_submitit(executor.kind)
    todo = [job for job in summary.jobs if not job.done]
    summary.skipped.extend(job for job in summary.jobs if job.done)
    if not todo:  # nothing to submit
        return
    folder = Path(executor.folder) if executor.folder else Path(cfg.out) / SUBMITIT_DIR
    ex = submitit.AutoExecutor(folder=folder, cluster=EXECUTORS[executor.kind])
    ex.update_parameters(name=f"vlprompt-{cfg.protocol}", **executor.parameters())
    sjobs = ex.map_array(GridJob(), todo, [cfg] * len(todo))
    _logger.info("submitted %d run(s) to %s as job array %s (logs in %s)", len(todo), executor.kind,
                 sjobs[0].job_id.split("_")[0], folder)
    pending = dict(zip(range(len(todo)), sjobs, strict=True))
    results: dict[int, tuple[dict | None, str | None]] = {}
    try:
        while pending:
            for i in [i for i, sj in pending.items() if sj.done()]:
                sj = pending.pop(i)
                try:
                    results[i] = sj.result()
                except submitit.core.utils.UncompletedJobError as e:  # crashed, killed, out of requeues
                    results[i] = (None, _job_failure(sj, e))
                _tell(results[i], todo[i], on_result)
                if cfg.fail_fast and results[i][1] is not None:
                    for other in pending.values():
                        other.cancel(check=False)
                    pending.clear()
                    break
            if pending:
                time.sleep(executor.poll_seconds)
    except KeyboardInterrupt:
        _logger.warning("stopped waiting: the submitted jobs keep running (cancel them with `scancel %s`); "
                        "re-running the same command later skips the finished runs", sjobs[0].job_id.split("_")[0])
        raise
    for i in sorted(results):  # the summary in plan order, whatever order the jobs finished in
        error = results[i][1]
        if error is None:
            summary.ran.append(todo[i])
        else:
            summary.failed.append((todo[i], error))


def _tell(result: tuple[dict | None, str | None], job: Job,
          on_result: Callable[[Job, dict | None, str | None], None] | None) -> None:
    """Tell ``on_result`` (else log a failure) as soon as a cluster job has finished; the summary is filled in plan
    order at the end."""
    if on_result:
        on_result(job, *result)
    elif result[1] is not None:
        _logger.warning("%s failed: %s", job, result[1])


__all__ = ["EXECUTORS", "SETTINGS_FILE", "BenchmarkSummary", "ExecutorConfig", "GridJob", "check_settings",
           "dataset_template", "describe", "job_recipe", "require_submitit", "run_benchmark", "run_job", "run_jobs"]
