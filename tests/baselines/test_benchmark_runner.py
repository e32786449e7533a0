"""``vlprompt benchmark``: the grid as run folders, resume (only unfinished runs re-execute), the settings guard,
and the report's numbers recomputed by hand from the run folders, with the curves PNG."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from baseline_layouts import single_thread, write_split_benchmark

from vlprompt.benchmark import BenchmarkConfig, fewshot_benchmarks, parse_datasets, plan
from vlprompt.cli.main import main
from vlprompt.errors import ConfigError, DataError

DATASETS = ("dtd", "oxford_pets")
GRID = ["--datasets", ",".join(DATASETS), "--shots", "1,2", "--seeds", "1,2", "--epochs", "1", "--n-ctx", "2",
        "--augment", "none", "--backbone", "vlp-tiny-rn", "--pretrained", "random", "--device", "cpu"]
LABELS = {"coop": "CoOp M=2 end", "coop-csc": "CoOp M=2 end CSC", "linear-probe": "Linear probe"}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    yield from single_thread()


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    base = tmp_path_factory.mktemp("bench")
    for i, name in enumerate(DATASETS):
        write_split_benchmark(base / "data", name, seed=i)
    runs = base / "runs"
    argv = ["benchmark", *GRID, "--root", str(base / "data"), "--out", str(runs)]
    assert main(argv) == 0
    return runs, argv


def _metrics_files(runs: Path) -> list[Path]:
    return sorted(runs.rglob("metrics.json"))


def test_grid_layout(bench):
    runs, _ = bench
    found = {str(p.parent.relative_to(runs)) for p in _metrics_files(runs)}
    expected = {f"{d}/zeroshot" for d in DATASETS} | {
        f"{d}/{m}/{k}shots/seed{s}" for d in DATASETS for m in LABELS for k in (1, 2) for s in (1, 2)}
    assert found == expected  # 2 × (1 + 3 methods × 2 shots × 2 seeds) = 26 runs
    for rel in expected:
        cfg = json.loads((runs / rel / "config.json").read_text())
        method = rel.split("/")[1]
        assert cfg["label"] == LABELS.get(method, "Zero-shot CLIP")
        assert cfg["learner"].get("csc", False) == (method == "coop-csc")
        if method != "zeroshot":
            assert f"{cfg['shots']}shots/seed{cfg['seed']}" in rel and cfg["train"]["augment"] == "none"
    settings = json.loads((runs / "benchmark.json").read_text())["settings"]
    assert settings["backbone"] == "vlp-tiny-rn" and settings["train"]["epochs"] == 1


def test_report_numbers_equal_a_hand_computation(bench):
    runs, _ = bench
    cells: dict[tuple, list[float]] = {}
    for m in _metrics_files(runs):
        cfg = json.loads((m.parent / "config.json").read_text())
        cells.setdefault((cfg["label"], cfg["dataset"]["name"], cfg["shots"]), []).append(
            json.loads(m.read_text())["accuracy"])
    with open(runs / "results.csv", newline="") as f:
        rows = {(r["label"], r["dataset"], int(r["shots"]) if r["shots"] else None): r for r in csv.DictReader(f)}
    for (label, ds, shots), accs in cells.items():
        row = rows[(label, ds, shots)]
        assert float(row["accuracy_mean"]) == pytest.approx(np.mean(accs))
        assert float(row["accuracy_std"]) == pytest.approx(np.std(accs))  # population std over seeds
        assert int(row["n"]) == len(accs) == (1 if shots is None else 2)
    for label, shots in {(lab, s) for lab, _, s in cells}:  # the average over the two datasets
        expected = np.mean([np.mean(cells[(label, ds, shots)]) for ds in DATASETS])
        assert float(rows[(label, "Average", shots)]["accuracy_mean"]) == pytest.approx(expected)
    assert len({round(np.mean(a), 6) for a in cells.values()}) > 1  # the numbers are not all alike
    md = (runs / "results.md").read_text()
    assert "Linear probe" in md and "CoOp M=2 end CSC" in md and "Average" in md
    png = (runs / "fewshot_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_resume_reruns_only_unfinished_runs(bench, capsys):
    runs, argv = bench
    before = {p: p.stat().st_mtime_ns for p in _metrics_files(runs)}
    victim = runs / "oxford_pets" / "coop" / "2shots" / "seed1" / "metrics.json"
    victim.unlink()
    capsys.readouterr()
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "26 runs: 1 ran, 25 already finished, 0 failed" in out
    after = {p: p.stat().st_mtime_ns for p in _metrics_files(runs)}
    assert set(after) == set(before)
    assert [p for p in after if after[p] != before[p]] == [victim]

    assert main([*argv, "--dry-run"]) == 0
    assert "26 runs: 0 to run, 26 already finished" in capsys.readouterr().out


def test_other_settings_are_refused_in_the_same_runs_dir(bench, capsys):
    runs, argv = bench
    changed = list(argv)
    changed[changed.index("--epochs") + 1] = "3"
    assert main(changed) == 2
    err = capsys.readouterr().err
    assert "train.epochs: was 1, now 3" in err and "another --out" in err


def test_grid_arguments():
    assert fewshot_benchmarks() == ["imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers",
                                    "food101", "fgvc_aircraft", "sun397", "dtd", "eurosat", "ucf101"]
    assert parse_datasets("all") == fewshot_benchmarks()
    assert parse_datasets("OxfordPets, folder:/x/my data") == ["oxford_pets", "folder:/x/my data"]
    with pytest.raises(DataError, match="Did you mean"):
        parse_datasets("oxford_pet")
    # issue 13: every registered method runs in the grid; an unknown name is refused with the valid ones
    with pytest.raises(ConfigError, match="subset of cocoop,coop,coop-csc,ivlp,kgcoop,maple,promptsrc,vpt,clap,clip-adapter,lpplusplus,taskres,tip-adapter,tip-adapter-f,"
                                        "zeroshot,linear-probe"):
        BenchmarkConfig(datasets=("dtd",), methods=("coop", "cooop"))
    with pytest.raises(ConfigError, match="≥ 1"):
        BenchmarkConfig(datasets=("dtd",), shots=(0, 1))
    jobs = plan(BenchmarkConfig(datasets=("dtd",), shots=(1,), seeds=(1, 2), methods=("zeroshot", "coop"), out="R"))
    assert [str(j) for j in jobs] == ["dtd/zeroshot", "dtd/coop/1shots/seed1", "dtd/coop/1shots/seed2"]
    assert jobs[0].out == Path("R/dtd/zeroshot") and jobs[0].shots is None


def test_a_failed_run_does_not_stop_the_grid(bench, tmp_path, capsys):
    runs, argv = bench
    root = argv[argv.index("--root") + 1]
    capsys.readouterr()
    assert main(["benchmark", "--datasets", "eurosat,dtd", "--methods", "zeroshot", "--root", root, "--out",
                 str(tmp_path / "r"), "--backbone", "vlp-tiny-rn", "--pretrained", "random", "--device", "cpu", "--no-report"]) == 1
    captured = capsys.readouterr()
    assert "2 runs: 1 ran, 0 already finished, 1 failed" in captured.out
    assert "not started: dataset eurosat (1 run(s)): " in captured.err and "(1 not started: missing eurosat)" in captured.out
    assert (tmp_path / "r" / "dtd" / "zeroshot" / "metrics.json").exists()
    assert not (tmp_path / "r" / "results.md").exists()
