"""The report's transfer tables from hand-made run records (no training): seeds aggregated as mean ± population std,
the source column from the runs on the source, the average only over a complete row, zero-shot CLIP's own runs as
a row, DG and cross-dataset targets in separate tables, and none of it in the few-shot rows."""

from __future__ import annotations

import json

import pytest

from vlprompt.reports import collect_runs, write_report
from vlprompt.reports.results import RunRecord
from vlprompt.reports.tables import aggregate, transfer


def _rec(dataset, acc, seed=1, label="CoOp M=16 end", shots=16, source=None, method="coop"):
    return RunRecord(path=f"{dataset}/{label}/{seed}/{source}", label=label, method=method, dataset=dataset,
                     shots=shots, seed=seed, subsample="all", backbone="RN50", accuracy=acc, source=source)


def test_transfer_rows_by_hand():
    records = [
        _rec("imagenet", 60.0, 1), _rec("imagenet", 64.0, 2),
        _rec("imagenetv2", 50.0, 1, source="imagenet"), _rec("imagenetv2", 54.0, 2, source="imagenet"),
        _rec("imagenet_r", 70.0, 1, source="imagenet"), _rec("imagenet_r", 80.0, 2, source="imagenet"),
        _rec("dtd", 40.0, 1, source="imagenet"),
        _rec("imagenet", 58.0, None, "Zero-shot CLIP", None, method="zeroshot"),
        _rec("imagenetv2", 51.0, None, "Zero-shot CLIP", None, method="zeroshot"),
    ]
    rows = aggregate(r for r in records if not r.is_transfer)
    out = {(r.kind, r.label): r for r in transfer(rows, records)}
    assert set(out) == {("dg", "CoOp M=16 end"), ("xd", "CoOp M=16 end"), ("dg", "Zero-shot CLIP")}
    dg = out[("dg", "CoOp M=16 end")]
    assert dg.source == "imagenet" and dg.source_accuracy == pytest.approx(62.0)
    assert list(dg.targets) == ["imagenetv2", "imagenet_r"]  # the papers' column order, not alphabetical
    assert dg.targets == pytest.approx({"imagenetv2": 52.0, "imagenet_r": 75.0})
    assert dg.target_std == pytest.approx({"imagenetv2": 2.0, "imagenet_r": 5.0})  # population std
    assert dg.average == pytest.approx(63.5) and dg.n == 2
    zs = out[("dg", "Zero-shot CLIP")]
    assert zs.source_accuracy == 58.0 and zs.targets == {"imagenetv2": 51.0}
    assert zs.average is None  # imagenet_r has no zero-shot run: no average over an incomplete row
    xd = out[("xd", "CoOp M=16 end")]
    assert xd.targets == {"dtd": 40.0} and xd.average == 40.0 and xd.n == 1


def test_write_report_keeps_transfer_out_of_the_few_shot_tables(tmp_path):
    def run(folder, dataset, acc, **extra):
        (tmp_path / folder).mkdir(parents=True)
        cfg = {"label": "CoOp M=16 end", "method": "coop", "dataset": {"name": dataset}, "shots": 16, "seed": 1,
               "backbone": {"name": "RN50"}, **extra}
        (tmp_path / folder / "config.json").write_text(json.dumps(cfg))
        (tmp_path / folder / "metrics.json").write_text(json.dumps({"accuracy": acc}))

    run("imagenet/coop/16shots/seed1", "imagenet", 60.0)
    run("imagenet/coop/16shots/seed1/eval_caltech101", "caltech101", 90.0, source_dataset="imagenet")
    run("caltech101/coop/16shots/seed1", "caltech101", 95.0)  # a few-shot run on the same target, same key
    assert {r.source for r in collect_runs(tmp_path)} == {None, "imagenet"}
    report = write_report(tmp_path)
    few = {(r["dataset"], r["accuracy_mean"]) for r in report["rows"] if r["dataset"] != "Average"}
    assert few == {("imagenet", 60.0), ("caltech101", 95.0)}  # the transfer result did not replace the few-shot one
    (xd,) = report["transfer"]
    assert xd["kind"] == "xd" and xd["targets"] == {"caltech101": 90.0} and xd["source_accuracy"] == 60.0
    assert (tmp_path / "transfer.csv").read_text().splitlines()[1].startswith("xd,CoOp M=16 end,RN50,imagenet,16,")
