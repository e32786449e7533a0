"""A grid over a dataset whose folder is missing: the folder is checked once per dataset before any run starts, so
the grid gives one line naming the folder and the fix (not one failure per run of that dataset), the other
datasets' runs still run, and the summary line, the exit code and the report say which dataset was not run and why.
"""

from __future__ import annotations

import json
import logging

import pytest
from grid_helpers import FAST, benchmark, finished
from grid_layouts import single_thread, write_dtd4, write_split_benchmark

import vlprompt.data
from vlprompt.data import check_dataset, load_dataset
from vlprompt.errors import DataError
from vlprompt.runs.grid import BenchmarkConfig, Job
from vlprompt.runs.grid_run import run_jobs


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    yield from single_thread()


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "data"
    write_dtd4(root)  # dtd is there, oxford_pets is not
    return root


def _argv(data, out, *extra):
    return ["--datasets", "oxford_pets,dtd", "--methods", "zeroshot,coop", "--shots", "1", "--seeds", "1,2",
            "--root", str(data), "--out", str(out), *FAST, *extra]


def test_a_missing_dataset_is_one_line_and_the_others_run(data, tmp_path, capsys, caplog, monkeypatch):
    checked = []
    real = vlprompt.data.check_dataset
    monkeypatch.setattr(vlprompt.data, "check_dataset", lambda spec, root=None: (checked.append(spec), real(spec, root)))
    runs = tmp_path / "runs"
    with caplog.at_level(logging.WARNING, logger="vlprompt.runs"):
        code, out, err = benchmark(capsys, *_argv(data, runs))
    assert checked == ["oxford_pets", "dtd"]  # once per dataset, not once per run
    assert code == 1
    # 3 runs per dataset (zero-shot, coop seed 1 and 2): dtd's ran, oxford_pets' were not started
    assert "6 runs: 3 ran, 0 already finished, 3 failed (3 not started: missing oxford_pets)" in out
    folder = str(data / "oxford_pets")
    lines = [line for line in err.splitlines() if folder in line]
    assert lines == [f"not started: dataset oxford_pets (3 run(s)): OxfordPets: expected dataset folder {folder!r}, "
                     "which does not exist. Lay out $DATA/oxford_pets/ as the official CoOp instructions say: "
                     + vlprompt.data.BENCHMARKS["oxford_pets"].source]
    assert not [line for line in err.splitlines() if line.startswith("failed: ")]
    warnings = [r for r in caplog.records if "oxford_pets" in r.getMessage()]
    assert len(warnings) == 1 and folder in warnings[0].getMessage()
    assert finished(runs) == {runs / "dtd/zeroshot", runs / "dtd/coop/1shots/seed1", runs / "dtd/coop/1shots/seed2"}
    assert not (runs / "oxford_pets").exists()
    report = json.loads((runs / "results.json").read_text())
    assert list(report["missing_datasets"]) == ["oxford_pets"] and folder in report["missing_datasets"]["oxford_pets"]
    assert f"Not run: dataset `oxford_pets` is missing: OxfordPets: expected dataset folder {folder!r}" in (
        runs / "results.md").read_text()

    # the folder appears: the same command runs what was not started, and only that
    write_split_benchmark(data, "oxford_pets")
    code, out, err = benchmark(capsys, *_argv(data, runs))
    assert code == 0 and "6 runs: 3 ran, 3 already finished, 0 failed" in out and "not started" not in err
    assert json.loads((runs / "results.json").read_text())["missing_datasets"] == {}


def test_fail_fast_stops_before_any_run(data, tmp_path, capsys):
    runs = tmp_path / "runs"
    code, out, err = benchmark(capsys, *_argv(data, runs), "--fail-fast")
    lines = err.strip().splitlines()
    assert code == 2 and lines[-1].startswith("vlprompt benchmark: error: OxfordPets: expected dataset folder ")
    assert str(data / "oxford_pets") in lines[-1] and not finished(runs)


def test_the_check_gives_the_loaders_own_error(tmp_path):
    """check_dataset refuses a missing folder with the message load_dataset gives, for a benchmark and for each
    custom spec, and reads nothing of a dataset that is there."""
    for spec in ("oxford_pets", f"folder:{tmp_path / 'nope'}", f"csv:{tmp_path / 'nope.csv'}",
                 f"split:{tmp_path / 'nope.json'}"):
        with pytest.raises(DataError) as loaded:
            load_dataset(spec, str(tmp_path))
        with pytest.raises(DataError) as checked:
            check_dataset(spec, str(tmp_path))
        assert str(checked.value) == str(loaded.value) and str(tmp_path) in str(checked.value)
    with pytest.raises(DataError, match="a data root is required"):
        check_dataset("dtd", None)
    write_dtd4(tmp_path / "d", sizes=(1, 1, 1))
    (tmp_path / "d/dtd/split_zhou_DescribableTextures.json").write_text("not json")  # not read by the check
    check_dataset("dtd", str(tmp_path / "d"))


def test_run_jobs_sets_a_missing_custom_dataset_aside(tmp_path):
    """The Python API: the summary says which dataset is missing and why; its jobs are failed without starting."""
    spec = f"folder:{tmp_path / 'gone'}"
    jobs = [Job(spec, "zeroshot", None, 1, tmp_path / "r" / "zs"), Job(spec, "coop", 1, 1, tmp_path / "r" / "c")]
    summary = run_jobs(jobs, BenchmarkConfig(datasets=("dtd",), out=str(tmp_path / "r"), backbone="vlp-tiny-rn",
                                             pretrained="random", device="cpu"), progress=False)
    assert summary.missing == {spec: f"image folder {str(tmp_path / 'gone')!r} does not exist; folder:PATH needs "
                                     "PATH/<class>/<image> files"}
    assert summary.not_started == jobs and [j for j, _ in summary.failed] == jobs and not summary.ran
    assert not (tmp_path / "r").exists()
