"""Where the jobs of a grid run.

``local`` (the default) runs the jobs one after another in
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

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlprompt.errors import ConfigError, VLPromptError
from vlprompt.runs.grid import BenchmarkConfig, Job
from vlprompt.runs.jobs import Backbones, BenchmarkSummary, run_job

_logger = logging.getLogger(__name__)

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


def record(summary: BenchmarkSummary, job: Job, metrics: dict | None, error: str | None,
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


def run_here(summary: BenchmarkSummary, cfg: BenchmarkConfig, progress: bool,
              on_result: Callable[[Job, dict | None, str | None], None] | None, desc: str | None = None) -> None:
    """The ``local`` executor: every unfinished job in this process, in plan order, sharing one backbone."""
    from tqdm.auto import tqdm

    backbones = Backbones()  # each built at the first job that needs it, then shared by the whole grid (frozen)
    backbone = None
    bar = tqdm(summary.runnable(), desc=desc or f"benchmark ({cfg.protocol})", unit="run", disable=not progress)
    for job in bar:
        if job.done:
            summary.skipped.append(job)
            continue
        bar.set_postfix_str(str(job))
        if backbone is None:  # a backbone that cannot be built fails the whole grid: let the error through
            backbone = backbones.get(cfg)
        try:
            metrics = run_job(job, cfg, backbone, backbones=backbones)
        except VLPromptError as e:
            record(summary, job, None, str(e), on_result)
            if cfg.fail_fast:
                break
            continue
        record(summary, job, metrics, None, on_result)
    bar.close()


#: The backbones of a worker process of :func:`run_pool`, shared by the jobs it runs.
_PROCESS_BACKBONES = Backbones()


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)  # N single-threaded workers use N cores better than one N-threaded process
    logging.getLogger("vlprompt").setLevel(logging.ERROR)


def _pool_job(job: Job, cfg: BenchmarkConfig) -> tuple[dict | None, str | None]:
    """One job in a worker process of :func:`run_jobs`: :func:`run_job` on the process's own backbone."""
    try:
        return run_job(job, cfg, _PROCESS_BACKBONES.get(cfg), backbones=_PROCESS_BACKBONES), None
    except VLPromptError as e:
        return None, str(e)


def run_pool(summary: BenchmarkSummary, cfg: BenchmarkConfig, workers: int, progress: bool,
              on_result: Callable[[Job, dict | None, str | None], None] | None, desc: str) -> None:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tqdm.auto import tqdm

    todo = [job for job in summary.runnable() if not job.done]
    summary.skipped.extend(job for job in summary.runnable() if job.done)
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
            backbones = Backbones()  # one cluster job, one process: its evaluations share these
            return run_job(job, cfg, backbones.get(cfg), backbones=backbones), None
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


def job_failure(sjob, error: Exception) -> str:
    """One line for a submitit job that did not return: the last line of the remote traceback and its logs."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip() and not set(ln.strip()) <= {"-"}]
    # FailedJobError: "Job (task=0) failed during processing with trace:", the traceback, "You can check full
    # logs ..."; the exception line is the last one before that hint
    hint = next((i for i, ln in enumerate(lines) if ln.startswith("You can check full logs")), len(lines))
    cause = lines[hint - 1] if hint else type(error).__name__
    return f"cluster job {sjob.job_id} did not finish: {cause} (logs: {sjob.paths.stderr})"


def run_submitit(summary: BenchmarkSummary, cfg: BenchmarkConfig, executor: ExecutorConfig,
                  on_result: Callable[[Job, dict | None, str | None], None] | None) -> None:
    """A cluster executor: the unfinished jobs as one submitit job array, each :class:`GridJob`; wait for all."""
    submitit = require_submitit(executor.kind)
    todo = [job for job in summary.runnable() if not job.done]
    summary.skipped.extend(job for job in summary.runnable() if job.done)
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
                    results[i] = (None, job_failure(sj, e))
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


__all__ = ["CLUSTER_INSTALL_HINT", "EXECUTORS", "SUBMITIT_DIR", "ExecutorConfig", "GridJob", "job_failure", "record",
           "require_submitit", "run_here", "run_pool", "run_submitit"]
