"""Domain generalization (ImageNet → V2, Sketch, A, R) and cross-dataset transfer (ImageNet → other benchmarks)
through the grid, on tiny trees in the official layouts: the prompt trained once on ImageNet is evaluated on each
target's own classes; xd in the same runs folder reuses dg's ImageNet runs; the report's DG and XD tables hold the
metrics files' numbers."""

from __future__ import annotations

import json

import pytest
from grid_helpers import FAST_MICRO, accuracy, benchmark, dry_run_folders, finished, read
from grid_layouts import single_thread, write_dtd4, write_imagenet_family, write_split_benchmark

from vlprompt.data import load_dataset

DG = ["imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"]
XD = ["dtd", "oxford_pets"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    yield from single_thread()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("transfer_data")
    write_imagenet_family(root)
    write_dtd4(root)
    write_split_benchmark(root, "oxford_pets", seed=3)
    return root


def _argv(protocol, data, runs, methods, *extra):
    return ["--protocol", protocol, "--shots", "2", "--seeds", "1", "--methods", methods, "--root", str(data),
            "--out", str(runs), *FAST_MICRO, *extra]


@pytest.fixture(scope="module")
def dg(data, tmp_path_factory):
    from vlprompt.cli.main import main

    runs = tmp_path_factory.mktemp("transfer") / "runs"
    assert main(["benchmark", *_argv("dg", data, runs, "coop,zeroshot"), "--no-report"]) == 0
    return runs


def _coop(runs):
    return runs / "imagenet" / "coop" / "2shots" / "seed1"


def test_dg_layout_and_each_targets_own_classes(dg, data, capsys, tmp_path):
    coop = _coop(dg)
    expected = {coop, dg / "imagenet" / "zeroshot"} | {coop / f"eval_{t}" for t in DG} | {dg / t / "zeroshot"
                                                                                          for t in DG}
    assert finished(dg) == expected
    for t in DG:
        cfg = read(coop / f"eval_{t}")
        assert cfg["source_dataset"] == "imagenet" and cfg["dataset"]["name"] == t
        assert cfg["dataset"]["classnames"] == load_dataset(t, str(data)).classnames  # A and R: their own subsets
        assert cfg["label"] == read(coop)["label"]
    fresh = tmp_path / "fresh"
    code, out, _ = benchmark(capsys, *_argv("dg", data, fresh, "coop,zeroshot"), "--dry-run")
    assert code == 0 and not fresh.exists()
    assert dry_run_folders(out) == {fresh / p.relative_to(dg) for p in expected}
    assert all(f"eval {t} " in out for t in DG)


def test_default_targets_and_refusals(capsys, tmp_path):
    code, out, _ = benchmark(capsys, "--protocol", "xd", "--seeds", "1", "--methods", "coop", "--out",
                             str(tmp_path / "r"), "--dry-run")
    assert code == 0 and not (tmp_path / "r").exists()
    targets = ["caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "fgvc_aircraft", "sun397",
               "dtd", "eurosat", "ucf101"]  # the CoCoOp paper's 10 cross-dataset targets (its Table 2)
    (line,) = [ln for ln in out.splitlines() if ln.startswith("run ")]
    assert [seg.split()[1] for seg in line.split(" | ")[1:]] == targets
    assert "imagenet  coop  shots 16  seed 1  epochs 50 batch 32" in line  # ImageNet: 50 epochs at every shot count
    code, out, _ = benchmark(capsys, "--protocol", "dg", "--seeds", "1", "--methods", "coop", "--out",
                             str(tmp_path / "d"), "--dry-run")
    (line,) = [ln for ln in out.splitlines() if ln.startswith("run ")]
    assert [seg.split()[1] for seg in line.split(" | ")[1:]] == DG  # CoOp:COCOOP.md "Domain Generalization"
    code, _, err = benchmark(capsys, "--protocol", "dg", "--methods", "coop,coop-csc", "--out", str(tmp_path),
                             "--dry-run")
    assert code == 2 and "coop-csc cannot run the dg protocol" in err and "class-specific" in err
    code, _, err = benchmark(capsys, "--protocol", "xd", "--datasets", "imagenet,dtd", "--dry-run")
    assert code == 2 and "cannot be one of its targets" in err


def test_xd_reuses_the_imagenet_runs_and_the_report_has_both_tables(dg, data, capsys):
    trained = (_coop(dg) / "metrics.json").stat().st_mtime_ns
    code, out, _ = benchmark(capsys, *_argv("xd", data, dg, "coop,cocoop,zeroshot"), "--datasets", ",".join(XD))
    assert code == 0 and "3 runs: 3 ran, 0 already finished, 0 failed" in out
    assert (_coop(dg) / "metrics.json").stat().st_mtime_ns == trained  # trained once, for dg; xd only evaluates
    cocoop = dg / "imagenet" / "cocoop" / "2shots" / "seed1"
    assert read(cocoop)["train"]["batch_size"] == 1
    for t in XD:
        assert read(cocoop / f"eval_{t}")["source_dataset"] == "imagenet"
        assert (dg / t / "zeroshot" / "metrics.json").exists()

    report = json.loads((dg / "results.json").read_text())
    rows = {(r["kind"], r["label"]): r for r in report["transfer"]}
    coop_label, cocoop_label = read(_coop(dg))["label"], read(cocoop)["label"]
    dg_row, xd_row = rows[("dg", coop_label)], rows[("xd", coop_label)]
    assert dg_row["source_accuracy"] == pytest.approx(accuracy(_coop(dg)))
    assert dg_row["targets"] == pytest.approx({t: accuracy(_coop(dg) / f"eval_{t}") for t in DG})
    assert xd_row["targets"] == pytest.approx({t: accuracy(_coop(dg) / f"eval_{t}") for t in XD})
    assert xd_row["average"] == pytest.approx(sum(xd_row["targets"].values()) / len(XD))
    assert rows[("xd", cocoop_label)]["targets"] == pytest.approx({t: accuracy(cocoop / f"eval_{t}") for t in XD})
    assert ("dg", cocoop_label) not in rows  # cocoop ran xd only
    zs = rows[("dg", "Zero-shot CLIP")]
    assert zs["source_accuracy"] == pytest.approx(accuracy(dg / "imagenet" / "zeroshot"))
    assert zs["targets"] == pytest.approx({t: accuracy(dg / t / "zeroshot") for t in DG})
    assert len({round(v, 6) for r in report["transfer"] for v in r["targets"].values()}) > 2  # not all alike
    # a prompt evaluated on another dataset is no few-shot result there, and zero-shot on a dataset that is only a
    # target is the transfer tables' row: neither is in the per-dataset rows (nor in their average over datasets)
    assert {r["dataset"] for r in report["rows"]} == {"imagenet"}
    assert rows[("xd", "Zero-shot CLIP")]["targets"] == pytest.approx({t: accuracy(dg / t / "zeroshot") for t in XD})
    md = (dg / "results.md").read_text()
    assert "## imagenetv2" not in md and "## dtd" not in md and "## Average" not in md
    assert "## Domain generalization: imagenet → 4 target(s)" in md
    assert "## Cross-dataset transfer: imagenet → 2 target(s)" in md
    assert "| imagenet (source) | imagenetv2 | imagenet_sketch | imagenet_a | imagenet_r | average |" in md


def test_a_missing_target_fails_its_job_and_the_other_targets_still_run(data, capsys, tmp_path):
    runs = tmp_path / "runs"
    code, out, err = benchmark(capsys, *_argv("xd", data, runs, "coop"), "--datasets", "eurosat,dtd", "--no-report")
    assert code == 1 and "1 runs: 0 ran, 0 already finished, 1 failed" in out
    assert "eval eurosat" in err and "eurosat" in err.split("eval eurosat", 1)[1]
    assert finished(runs) == {_coop(runs), _coop(runs) / "eval_dtd"}  # trained, and the present target evaluated
