"""The base-to-new protocol (CoCoOp paper): each method trains on the base classes and the same prompt is tested on
the new ones; the report's H is 2·b·n/(b + n) of the two metrics files; an interrupted grid finishes only the
missing evaluation."""

from __future__ import annotations

import csv

import pytest
from grid_helpers import FAST_MICRO, accuracy, benchmark, dry_run_folders, finished, read
from grid_layouts import DTD4, single_thread, write_dtd4

METHODS = ["coop", "cocoop", "kgcoop", "zeroshot"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    yield from single_thread()


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    base = tmp_path_factory.mktemp("b2n")
    write_dtd4(base / "data")
    runs = base / "runs"
    argv = ["--protocol", "base2new", "--datasets", "dtd", "--shots", "2", "--seeds", "1", "--methods",
            ",".join(METHODS), "--root", str(base / "data"), "--out", str(runs), *FAST_MICRO]
    return runs, argv


@pytest.fixture(scope="module")
def ran(grid):
    from vlprompt.cli.main import main

    runs, argv = grid
    assert main(["benchmark", *argv]) == 0
    return runs


def _folder(runs, method):
    return runs / "base2new" / "dtd" / (method if method == "zeroshot" else f"{method}/2shots/seed1")


def test_layout_and_the_class_split(ran, grid, capsys, tmp_path):
    runs, argv = grid
    expected = {f for m in METHODS for f in (_folder(runs, m), _folder(runs, m) / "eval_new")}
    assert finished(runs) == expected
    for m in METHODS:
        train, new = read(_folder(runs, m)), read(_folder(runs, m) / "eval_new")
        assert train["subsample"] == "base" and train["dataset"]["classnames"] == DTD4[:3]  # the first ⌈6/2⌉
        assert new["subsample"] == "new" and new["dataset"]["classnames"] == DTD4[3:]
        assert new["label"] == train["label"] and new["shots"] == train["shots"] and new["seed"] == train["seed"]
    assert read(_folder(runs, "cocoop"))["train"]["batch_size"] == 1  # CoCoOp's own recipe
    fresh = tmp_path / "fresh"
    code, out, _ = benchmark(capsys, *[str(fresh) if a == str(runs) else a for a in argv], "--dry-run")
    assert code == 0 and not fresh.exists()
    assert dry_run_folders(out) == {fresh / p.relative_to(runs) for p in expected}
    assert all("classes base" in line for line in out.splitlines()[:-1])


def test_report_h_is_the_harmonic_mean_of_the_metrics_files(ran):
    with open(ran / "base_to_new.csv", newline="") as f:
        rows = {r["label"]: r for r in csv.DictReader(f)}
    assert len(rows) == len(METHODS)
    values = set()
    for m in METHODS:
        b, n = accuracy(_folder(ran, m)), accuracy(_folder(ran, m) / "eval_new")
        row = rows[read(_folder(ran, m))["label"]]
        assert float(row["base"]) == pytest.approx(b) and float(row["new"]) == pytest.approx(n)
        assert float(row["h"]) == pytest.approx(2 * b * n / (b + n) if b + n else 0.0)
        values.add((b, n))
    md = (ran / "results.md").read_text()
    assert "## Base-to-new generalization" in md and "| dtd | CoCoOp" in md
    assert len(values) > 1  # not all alike


def test_an_interrupted_grid_finishes_only_the_missing_evaluation(ran, grid, capsys):
    runs, argv = grid
    before = {p: (p / "metrics.json").stat().st_mtime_ns for p in finished(runs)}
    victim = _folder(runs, "kgcoop") / "eval_new"
    (victim / "metrics.json").unlink()
    code, out, _ = benchmark(capsys, *argv, "--no-report")
    assert code == 0 and "4 runs: 1 ran, 3 already finished, 0 failed" in out
    after = {p: (p / "metrics.json").stat().st_mtime_ns for p in finished(runs)}
    assert set(after) == set(before) and [p for p in after if after[p] != before[p]] == [victim]


def test_methods_that_cannot_transfer_are_refused(grid, capsys):
    runs, argv = grid
    for method, why in (("coop-csc", "class-specific context"), ("linear-probe", "linear probe")):
        changed = [method if a == ",".join(METHODS) else a for a in argv]
        code, _, err = benchmark(capsys, *changed)
        assert code == 2 and f"--methods {method} cannot run the base2new protocol" in err and why in err
