"""Reports from fake run folders: numbers equal a hand computation; averages, unfinished runs, base-to-new, PNG."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from vlprompt.reports import aggregate, base_to_new, collect_runs, scan_runs, write_report

DATASETS = ["caltech101", "dtd"]
BASE = {"CoOp M=16 end": {"caltech101": 85.0, "dtd": 50.0}, "Linear probe": {"caltech101": 70.0, "dtd": 40.0}}
ZERO_SHOT = {"caltech101": 86.25, "dtd": 42.5}
SEED_OFFSET = {1: -1.0, 2: 0.5, 3: 2.0}  # mean offset 0.5; population std sqrt(1.5) (sample std would be 1.5)
SHOTS = [1, 2, 4]


def write_run(folder: Path, *, label, method, dataset, shots, seed, acc, subsample=None, metrics=True, **extra):
    folder.mkdir(parents=True)
    config = {"label": label, "method": method, "dataset": {"name": dataset, "root": "/data"}, "shots": shots}
    config |= {"seed": seed, "backbone": {"name": "RN50", "pretrained": "openai"}}
    if subsample:
        config["subsample"] = subsample
    (folder / "config.json").write_text(json.dumps(config))
    if metrics:
        m = {"accuracy": acc, "macro_f1": acc - 1.0, "per_class_accuracy": [acc], "num_test": 100}
        m |= {"train_seconds": 10.0 * (shots or 0) + seed, "eval_seconds": 1.0, "peak_memory_mb": 100.0 + seed}
        (folder / "metrics.json").write_text(json.dumps(m | extra))


def coop_acc(label, dataset, shots, seed, subsample="all"):
    shift = {"all": 0.0, "base": 5.0, "new": -20.0}[subsample]
    return BASE[label][dataset] + 3 * math.log2(shots) + SEED_OFFSET[seed] + shift


def make_runs(root: Path) -> Path:
    """2 datasets × (zero-shot + 2 labels × 3 shots × 3 seeds, one cell missing) + base/new runs + junk."""
    for ds in DATASETS:
        write_run(root / ds / "zs", label="Zero-shot CLIP", method="zeroshot", dataset=ds, shots=None, seed=1,
                  acc=ZERO_SHOT[ds])  # fmt: skip
        for label, method in [("CoOp M=16 end", "coop"), ("Linear probe", "linear-probe")]:
            for shots in SHOTS:
                if label == "Linear probe" and ds == "dtd" and shots == 4:
                    continue  # missing cell: no average for Linear probe @ 4 shots
                for seed in SEED_OFFSET:
                    write_run(root / ds / method / f"shots{shots}" / f"seed{seed}", label=label, method=method,
                              dataset=ds, shots=shots, seed=seed, acc=coop_acc(label, ds, shots, seed))  # fmt: skip
        for sub in ("base", "new"):
            for seed in SEED_OFFSET:
                write_run(root / "b2n" / ds / sub / f"seed{seed}", label="CoOp M=16 end", method="coop", dataset=ds,
                          shots=4, seed=seed, acc=coop_acc("CoOp M=16 end", ds, 4, seed, sub), subsample=sub)  # fmt: skip
    # An unfinished run (no metrics.json), an unreadable one and a hidden folder: all skipped.
    write_run(root / "dtd" / "coop" / "shots8" / "seed1", label="CoOp M=16 end", method="coop", dataset="dtd",
              shots=8, seed=1, acc=0.0, metrics=False)  # fmt: skip
    bad = root / "broken"
    write_run(bad, label="x", method="coop", dataset="dtd", shots=1, seed=1, acc=1.0)
    (bad / "metrics.json").write_text("{not json")
    write_run(root / ".trash" / "r", label="Hidden", method="coop", dataset="dtd", shots=1, seed=1, acc=1.0)
    return root


@pytest.fixture
def runs(tmp_path) -> Path:
    return make_runs(tmp_path / "runs")


def _row(rows, label, dataset, shots, subsample="all"):
    (row,) = [r for r in rows if (r.label, r.dataset, r.shots, r.subsample) == (label, dataset, shots, subsample)]
    return row


def test_scan_counts_and_records(runs):
    scan = scan_runs(runs)
    n_fewshot = 2 * 2 * len(SHOTS) * 3 - 3  # 2 datasets × 2 labels × 3 shots × 3 seeds - the missing cell
    assert len(scan.records) == 2 + n_fewshot + 2 * 2 * 3
    assert len(scan.unfinished) == 1 and scan.unfinished[0].endswith("shots8/seed1")
    assert [Path(p).name for p, _ in scan.invalid] == ["broken"]
    assert all("Hidden" != r.label for r in scan.records)
    zs = [r for r in scan.records if r.method == "zeroshot"]
    assert {r.shots for r in zs} == {None} and {r.subsample for r in zs} == {"all"}
    assert collect_runs(runs) == scan.records


def test_aggregate_equals_hand_computation(runs):
    rows = aggregate(collect_runs(runs))
    for label in BASE:
        for ds in DATASETS:
            for shots in SHOTS:
                if label == "Linear probe" and ds == "dtd" and shots == 4:
                    continue
                r = _row(rows, label, ds, shots)
                # Hand computation: mean of offsets (-1, 0.5, 2) is 0.5; population std is sqrt(((-1.5)² + 0 + 1.5²)/3).
                assert r.accuracy_mean == pytest.approx(BASE[label][ds] + 3 * math.log2(shots) + 0.5)
                assert r.accuracy_std == pytest.approx(math.sqrt(1.5))
                assert r.n == 3 and r.seeds == [1, 2, 3]
                assert r.train_seconds_mean == pytest.approx(10.0 * shots + 2.0)
                assert r.peak_memory_mb_max == 103.0
                assert r.macro_f1_mean == pytest.approx(r.accuracy_mean - 1.0)
    coop_dtd_2 = _row(rows, "CoOp M=16 end", "dtd", 2)
    assert coop_dtd_2.accuracy_mean == pytest.approx(53.5)  # 50 + 3·1 + 0.5
    zs = _row(rows, "Zero-shot CLIP", "dtd", None)
    assert (zs.accuracy_mean, zs.accuracy_std, zs.n) == (42.5, 0.0, 1)


def test_average_over_datasets_only_where_complete(runs):
    rows = aggregate(collect_runs(runs))
    avg = _row(rows, "CoOp M=16 end", "Average", 2)
    assert avg.accuracy_mean == pytest.approx((85.0 + 50.0) / 2 + 3 + 0.5)
    assert avg.datasets == DATASETS and avg.n == 2 and avg.accuracy_std is None
    assert _row(rows, "Zero-shot CLIP", "Average", None).accuracy_mean == pytest.approx((86.25 + 42.5) / 2)
    assert _row(rows, "Linear probe", "Average", 2).accuracy_mean == pytest.approx(55.0 + 3 + 0.5)
    assert not [r for r in rows if r.label == "Linear probe" and r.is_average and r.shots == 4]


def test_base_to_new_harmonic_mean(runs):
    b2n = base_to_new(aggregate(collect_runs(runs)))
    by_ds = {r.dataset: r for r in b2n}
    assert set(by_ds) == {"caltech101", "dtd", "Average"}
    base, new = 85.0 + 6 + 0.5 + 5, 85.0 + 6 + 0.5 - 20  # caltech101 at 4 shots, seed-mean offset 0.5
    assert (by_ds["caltech101"].base, by_ds["caltech101"].new) == pytest.approx((base, new))
    assert by_ds["caltech101"].h == pytest.approx(2 * base * new / (base + new))
    avg_b, avg_n = (96.5 + 61.5) / 2, (71.5 + 36.5) / 2
    assert by_ds["Average"].h == pytest.approx(2 * avg_b * avg_n / (avg_b + avg_n))  # H of the averages


def test_write_report_files(runs, tmp_path):
    out = tmp_path / "report"
    summary = write_report(runs, out)
    assert summary["num_runs"] == len(collect_runs(runs)) and summary["num_unfinished"] == 1
    assert summary["num_invalid"] == 1
    md = (out / "results.md").read_text()
    assert md == summary["markdown"]
    assert "## caltech101" in md and "## dtd" in md and "## Average over 2 datasets" in md
    assert "| CoOp M=16 end | 2 | 53.50 ± 1.22 |" in md
    assert "| Zero-shot CLIP | 0 | 64.38 |" in md  # (86.25 + 42.5) / 2 in the average table
    assert "Linear probe, 4 shots: missing on dtd" in md
    assert "## Base-to-new" in md
    assert md.index("Zero-shot CLIP") < md.index("CoOp M=16 end")

    with open(out / "results.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    cell = [r for r in csv_rows if (r["label"], r["dataset"], r["shots"]) == ("Linear probe", "caltech101", "4")]
    assert float(cell[0]["accuracy_mean"]) == pytest.approx(76.5) and cell[0]["seeds"] == "1;2;3"
    assert float(cell[0]["accuracy_std"]) == pytest.approx(math.sqrt(1.5))
    assert len(csv_rows) == len(summary["rows"])

    saved = json.loads((out / "results.json").read_text())
    assert saved["rows"] == summary["rows"] and saved["base_to_new"] == summary["base_to_new"]
    assert (out / "base_to_new.csv").read_text().startswith("label,backbone,dataset,shots,base,new,h")

    png = (out / "fewshot_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    from PIL import Image

    with Image.open(out / "fewshot_curves.png") as im:
        assert im.size[0] > im.size[1] > 300  # 3 panels side by side (2 datasets + Average) over the legend


def test_duplicate_runs_keep_one(tmp_path, caplog):
    for name, acc in [("a", 50.0), ("b", 60.0)]:
        write_run(tmp_path / name, label="CoOp", method="coop", dataset="dtd", shots=1, seed=1, acc=acc)
    rows = aggregate(collect_runs(tmp_path))
    assert [r.accuracy_mean for r in rows] == [60.0] and rows[0].n == 1
    assert "duplicate run" in caplog.text


def test_backbones_are_not_mixed(tmp_path):
    for backbone, acc in [("RN50", 50.0), ("ViT-B/16", 70.0)]:
        for ds in DATASETS:
            folder = tmp_path / backbone.replace("/", "-") / ds
            write_run(folder, label="CoOp", method="coop", dataset=ds, shots=1, seed=1, acc=acc)
            cfg = json.loads((folder / "config.json").read_text())
            (folder / "config.json").write_text(json.dumps(cfg | {"backbone": {"name": backbone}}))
    rows = aggregate(collect_runs(tmp_path))
    assert sorted((r.backbone, r.dataset, r.accuracy_mean) for r in rows if r.is_average) == [
        ("RN50", "Average", 50.0),
        ("ViT-B/16", "Average", 70.0),
    ]
    summary = write_report(tmp_path, tmp_path / "out")
    assert "## dtd — ViT-B/16" in summary["markdown"] and "## dtd — RN50" in summary["markdown"]
