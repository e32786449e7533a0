"""``vlprompt benchmark --executor``: the grid sent to a cluster engine through submitit (the optional extra
``cluster``). The tests use submitit's local executor (``--executor submitit-local``: one subprocess per job, the
job function and its arguments pickled by submitit), the same code path as ``--executor slurm`` but for the cluster
name; ``--executor slurm`` itself runs end to end through submitit's SLURM executor with stand-ins for ``sbatch``,
``srun`` and ``sacct``, and the ``#SBATCH`` lines submitit writes from our options are pinned.

What must hold, as with the in-process loop: the same run folders with the same results; finished runs skipped when
the grid is planned (nothing submitted); a job killed mid-training (a real SIGKILL of its process) reported with its
error while the others finish, then resumed from its saved training state by the same command, ending where an
uninterrupted run ends.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from grid_helpers import FAST_MICRO, benchmark, finished, read
from grid_layouts import single_thread, write_dtd4
from safetensors.torch import load_file

from vlprompt.cli.main import main

submitit = pytest.importorskip("submitit")

#: Fields of metrics.json that measure the machine, not the run.
MACHINE = {"train_seconds", "eval_seconds", "peak_memory_mb"}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # the submitit subprocesses inherit the environment: one thread there too
    before = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    yield from single_thread()
    if before is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = before


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("executor") / "data"
    write_dtd4(root)
    return root


def _argv(data: Path, out: Path, *extra: str, methods: str = "coop,zeroshot", datasets: str = "dtd") -> list[str]:
    return ["--datasets", datasets, "--shots", "1", "--seeds", "1", "--methods", methods, "--root", str(data),
            "--out", str(out), *FAST_MICRO, *extra]


def _run_files(folder: Path) -> tuple[dict, dict, dict]:
    """A run folder's results: metrics (less the machine's timings), config (less its start time), prompt tensors."""
    metrics = {k: v for k, v in read(folder, "metrics.json").items() if k not in MACHINE}
    config = {k: v for k, v in read(folder).items() if k != "started"}
    weights = folder / "learner.safetensors"
    tensors = {k: v.tolist() for k, v in load_file(weights).items()} if weights.exists() else {}
    return metrics, config, tensors


def _submitted(runs: Path) -> list[Path]:
    """submitit's record of each submitted job (``<job id>_submitted.pkl``), which it writes at submission."""
    return sorted((runs / ".submitit").glob("*_submitted.pkl"))


@pytest.fixture(scope="module")
def both(data, tmp_path_factory):
    """The same grid with the in-process loop and with submitit's local executor."""
    base = tmp_path_factory.mktemp("both")
    assert main(["benchmark", *_argv(data, base / "local")]) == 0
    assert main(["benchmark", *_argv(data, base / "submitit", "--executor", "submitit-local")]) == 0
    return base / "local", base / "submitit"


def test_submitit_jobs_write_the_run_folders_of_the_local_loop(both):
    local, cluster = both
    runs = {p.relative_to(local) for p in finished(local)}
    assert runs == {Path("dtd/zeroshot"), Path("dtd/coop/1shots/seed1")}
    assert {p.relative_to(cluster) for p in finished(cluster)} == runs
    for rel in runs:
        assert _run_files(cluster / rel) == _run_files(local / rel), rel
    # each job ran in its own submitit process, which logged into RUNS_DIR/.submitit
    assert len(_submitted(cluster)) == 2 and list((cluster / ".submitit").glob("*_0_log.err"))
    # the report is written after the jobs, with the local loop's rows (the dot folder is not scanned): the same
    # accuracies, one row per method (on these 4-image classes micro-CLIP v2's one-epoch prompt and its zero-shot
    # prompt may score alike, so the rows are told apart by method, and the prompt by its tensors above)
    rows = {d: [{k: v for k, v in row.items() if not k.endswith(("seconds_mean", "memory_mb_max"))}
                for row in json.loads((d / "results.json").read_text())["rows"]] for d in (local, cluster)}
    assert rows[cluster] == rows[local] and len(rows[local]) == 2
    assert {row["method"] for row in rows[local]} == {"coop", "zeroshot"}
    assert _run_files(local / "dtd/coop/1shots/seed1")[2]  # CoOp saved a learned prompt


def test_a_rerun_submits_nothing_for_finished_runs(both, data, capsys):
    _, cluster = both
    before = _submitted(cluster)
    mtimes = {p: (p / "metrics.json").stat().st_mtime_ns for p in finished(cluster)}
    code, out, _ = benchmark(capsys, *_argv(data, cluster, "--executor", "submitit-local", "--no-report"))
    assert code == 0 and "2 runs: 0 ran, 2 already finished, 0 failed" in out
    assert _submitted(cluster) == before  # no job was submitted
    assert {p: (p / "metrics.json").stat().st_mtime_ns for p in finished(cluster)} == mtimes


def _kill_when_training(run: Path, after_epoch: int, killed: list) -> None:
    """SIGKILL the process training into ``run`` once it has saved the state of ``after_epoch`` (the lock file
    names its pid)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = run / "train_state.json"
        lock = run / ".vlprompt.lock"
        try:
            epoch = json.loads(state.read_text())["epoch"] if state.exists() else 0
            pid = int(lock.read_text().strip() or 0) if lock.exists() else 0
        except (OSError, ValueError, KeyError):  # a file being replaced
            epoch, pid = 0, 0
        if epoch >= after_epoch and pid and not (run / "metrics.json").exists():
            os.kill(pid, signal.SIGKILL)
            killed.append(epoch)
            return
        time.sleep(0.005)


def test_a_killed_job_is_reported_the_others_finish_and_the_same_command_resumes_it(data, tmp_path, capsys):
    epochs = ["--epochs", "60"]
    argv = [*_argv(data, tmp_path / "cluster", "--executor", "submitit-local"), *epochs]
    coop = tmp_path / "cluster" / "dtd/coop/1shots/seed1"
    killed: list[int] = []
    killer = threading.Thread(target=_kill_when_training, args=(coop, 3, killed), daemon=True)
    killer.start()
    code, out, err = benchmark(capsys, *argv, "--no-report")
    killer.join()
    assert killed, "the training job finished before it could be killed"
    assert code == 1 and "2 runs: 1 ran, 0 already finished, 1 failed" in out
    assert "failed: dtd/coop/1shots/seed1: cluster job " in err and "did not finish" in err
    assert (tmp_path / "cluster/dtd/zeroshot/metrics.json").exists()  # the other job finished
    assert not (coop / "metrics.json").exists() and (coop / "train_state.json").exists()

    code, out, _ = benchmark(capsys, *argv, "--no-report")
    assert code == 0 and "2 runs: 1 ran, 1 already finished, 0 failed" in out
    config = read(coop)
    # it continued after the last epoch whose state was saved (at least the one seen before the kill)
    assert len(config["resumes"]) == 1 and killed[0] <= config["resumes"][0]["after_epoch"] < 60
    # an uninterrupted run of the same job (in this process) ends with the same prompt and metrics
    assert main(["benchmark", *_argv(data, tmp_path / "local"), *epochs, "--methods", "coop", "--no-report"]) == 0
    resumed, reference = _run_files(coop), _run_files(tmp_path / "local/dtd/coop/1shots/seed1")
    assert resumed[0] == reference[0] and resumed[2] == reference[2]
    assert {k: v for k, v in resumed[1].items() if k != "resumes"} == reference[1]


def test_a_failed_job_is_reported_with_its_error_and_the_others_finish(data, tmp_path, capsys):
    """One dataset is missing: found before anything is submitted (one warning naming its folder, as the local loop
    gives), its job is not submitted; the other job finishes in its submitit process."""
    code, out, err = benchmark(capsys, *_argv(data, tmp_path, "--executor", "submitit-local", "--no-report",
                                              methods="coop", datasets="dtd,oxford_pets"))
    assert code == 1 and "2 runs: 1 ran, 0 already finished, 1 failed" in out
    assert "(1 not started: missing oxford_pets)" in out
    assert (tmp_path / "dtd/coop/1shots/seed1/metrics.json").exists()
    assert not [line for line in err.splitlines() if line.startswith("failed: ")]
    lines = [line for line in err.splitlines() if str(data / "oxford_pets") in line]  # the error names the folder
    assert len(lines) == 1 and lines[0].startswith("not started: dataset oxford_pets (1 run(s)): ")
    assert not (tmp_path / "oxford_pets").exists()  # nothing was submitted for it


def test_a_crashed_job_is_summarised_from_its_remote_traceback(tmp_path):
    """A job that raises something else than a vlprompt error: submitit's FailedJobError carries the remote
    traceback; the summary keeps its exception line and points at the log."""
    from vlprompt.runs.executors import job_failure as _job_failure

    ex = submitit.AutoExecutor(folder=tmp_path, cluster="local")
    job = ex.submit(int, "not a number")
    with pytest.raises(submitit.core.utils.UncompletedJobError) as e:
        job.result()
    line = _job_failure(job, e.value)
    assert line.startswith(f"cluster job {job.job_id} did not finish: ValueError: invalid literal for int()")
    assert str(job.paths.stderr) in line and "\n" not in line


def test_missing_submitit_names_the_extra(data, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # `import submitit` raises ImportError
    for executor in ("slurm", "submitit-local"):
        code, out, err = benchmark(capsys, *_argv(data, tmp_path / "runs", "--executor", executor))
        assert code != 0 and f"--executor {executor} needs submitit" in err
        assert "pip install 'vlprompt[cluster]'" in err and not out
        assert not (tmp_path / "runs").exists()  # refused before anything was written
    code, _, _ = benchmark(capsys, *_argv(data, tmp_path / "runs", "--dry-run"))  # the local loop does not need it
    assert code == 0


def test_slurm_options_become_sbatch_lines(tmp_path, monkeypatch):
    """The --slurm-* options, through submitit's own SLURM executor, give these #SBATCH lines (an array of 10 runs
    with at most 4 at once)."""
    from submitit.slurm.slurm import _make_sbatch_string

    from vlprompt.runs.grid_run import ExecutorConfig

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")  # submitit's SLURM executor looks for srun

    opts = ExecutorConfig("slurm", partition="gpu", time_min=90, gpus_per_node=1, cpus_per_task=8,
                          array_parallelism=4)
    ex = submitit.AutoExecutor(folder=tmp_path, cluster="slurm")
    ex.update_parameters(**opts.parameters())
    text = _make_sbatch_string(command="true", folder=tmp_path, map_count=10, **ex._executor.parameters)
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=90", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --array=0-9%4"):
        assert line in text.splitlines(), line


def test_cluster_options_are_refused_with_the_local_executor(data, tmp_path, capsys):
    code, _, err = benchmark(capsys, *_argv(data, tmp_path, "--slurm-partition", "gpu", "--slurm-time-min", "60"))
    assert code != 0 and "--slurm-partition, --slurm-time-min only apply to a cluster executor" in err
    code, _, err = benchmark(capsys, *_argv(data, tmp_path, "--executor", "slurm", "--slurm-cpus-per-task", "0"))
    assert code != 0 and "--slurm-cpus-per-task 0: expected an integer ≥ 1" in err


#: A stand-in for SLURM's commands, enough for submitit's SLURM executor: ``sbatch`` keeps the script it is given
#: and starts every task of the array in the background (once submitit has moved the task's pickle to its job id,
#: which it does after sbatch answered) with the environment SLURM gives a task; ``srun`` drops its options and
#: runs the command; ``sacct`` knows no job (submitit then sees a job finish by its result file).
FAKE_SBATCH = r"""#!/bin/bash
script="$1"
cp "$script" "$FAKE_SLURM/sbatch_script.sh"
last=$(sed -n 's/^#SBATCH --array=0-\([0-9]*\)%.*/\1/p' "$script")
folder=$(tail -n 1 "$script" | awk '{print $NF}')
id=4242
for i in $(seq 0 "$last"); do
  (
    while [ ! -e "$folder/${id}_${i}_submitted.pkl" ]; do sleep 0.05; done
    SLURM_JOB_ID=$((id + 1 + i)) SLURM_ARRAY_JOB_ID=$id SLURM_ARRAY_TASK_ID=$i SLURM_NTASKS=1 \
      SLURM_JOB_NUM_NODES=1 SLURM_NODEID=0 SLURM_PROCID=0 SLURM_LOCALID=0 SLURM_JOB_NODELIST=node1 \
      bash "$script" >> "$FAKE_SLURM/task_$i.log" 2>&1
  ) > /dev/null 2>&1 &
done
echo "Submitted batch job $id"
"""
FAKE_SRUN = r"""#!/bin/bash
while [[ "$1" == --* ]]; do case "$1" in --output|--error) shift 2;; *) shift;; esac; done
exec "$@"
"""
FAKE_SACCT = "#!/bin/sh\necho 'JobID|State|NodeList'\n"


def test_slurm_executor_through_stand_in_slurm_commands(both, data, tmp_path, monkeypatch, capsys):
    """``--executor slurm`` end to end, with submitit's real SLURM executor and stand-ins for sbatch/srun/sacct: the
    grid goes out as one job array with our #SBATCH options, each task runs its run as a SLURM task, the run folders
    hold the local loop's results, and a re-run submits nothing."""
    local, _ = both
    fake = tmp_path / "slurm"
    fake.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("srun", FAKE_SRUN), ("sacct", FAKE_SACCT)):
        (fake / name).write_text(text)
        (fake / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM", str(fake))
    runs = tmp_path / "runs"
    argv = _argv(data, runs, "--executor", "slurm", "--slurm-partition", "gpu", "--slurm-time-min", "30",
                 "--slurm-cpus-per-task", "1", "--slurm-array-parallelism", "2")
    code, out, err = benchmark(capsys, *argv)
    assert code == 0 and "2 runs: 2 ran, 0 already finished, 0 failed" in out, err
    script = (fake / "sbatch_script.sh").read_text().splitlines()
    for line in ("#SBATCH --array=0-1%2", "#SBATCH --partition=gpu", "#SBATCH --time=30", "#SBATCH --cpus-per-task=1",
                 "#SBATCH --job-name=vlprompt-fewshot"):
        assert line in script, line
    assert {p.relative_to(runs) for p in finished(runs)} == {p.relative_to(local) for p in finished(local)}
    for folder in finished(local):
        assert _run_files(runs / folder.relative_to(local)) == _run_files(folder), folder
    # each task unpickled its job under SLURM's array ids (submitit's own record of the job id it ran as)
    assert sorted(p.name for p in (runs / ".submitit").glob("4242_*_result.pkl")) == ["4242_0_0_result.pkl",
                                                                                       "4242_1_0_result.pkl"]
    (fake / "sbatch_script.sh").unlink()
    code, out, _ = benchmark(capsys, *argv, "--no-report")
    assert code == 0 and "2 runs: 0 ran, 2 already finished, 0 failed" in out
    assert not (fake / "sbatch_script.sh").exists()  # sbatch was not called
