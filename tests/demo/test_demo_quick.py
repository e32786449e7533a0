"""`vlprompt demo --quick --suite v1` produces all three output files from real run folders (world v1 on
micro-CLIP v1, from the repository: the v2 default has test_demo_quick_v2.py)."""

from __future__ import annotations

import json

import pytest

from vlprompt.backbones.microclip import WEIGHTS_V1
from vlprompt.cli.main import main

pytestmark = pytest.mark.skipif(not WEIGHTS_V1.exists(), reason="micro-CLIP v1 weights not in this checkout")
ARGV = ["demo", "--quick", "--suite", "v1", "--workers", "0"]


def test_demo_quick_writes_report_results_and_curves(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main([*ARGV, "--out", str(out), "--task-dir", str(tmp_path / "tasks")]) == 0
    report = (out / "report.md").read_text()
    results = json.loads((out / "results.json").read_text())
    assert (out / "fewshot_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert results["config"]["tasks"] == ["sizes", "shapes"] and results["config"]["seeds"] == [1]
    # suite v1 runs on the v1 weights (the model pretrained on world v1), recorded by name in every run folder
    assert results["config"]["suite"] == "v1" and results["config"]["weights"] == "v1"
    zs_cfg = json.loads((out / "runs" / "sizes" / "zeroshot" / "config.json").read_text())
    assert zs_cfg["backbone"]["name"] == "microclip" and zs_cfg["backbone"]["pretrained"] == "v1"
    # every task has zero-shot, three CoOp variants and the linear probe at both shot counts
    labels = {(r["dataset"], r["label"], r["shots"]) for r in results["rows"]}
    for task in ("sizes", "shapes"):
        assert (task, "Zero-shot CLIP", None) in labels
        for k in (1, 4):
            for label in ("CoOp M=16", "CoOp M=4 'a photo of a'", "CoOp CSC M=16", "Linear probe"):
                assert (task, label, k) in labels
    # issue 16: the feature-space adapters run on the same subsets (quick: Tip-Adapter), in their own table
    for task in ("sizes", "shapes"):
        for k in (1, 4):
            run = out / "runs" / task / "tip-adapter" / f"{k}shots" / "seed1"
            cfg = json.loads((run / "config.json").read_text())
            assert cfg["method"] == "tip-adapter" and (task, "Tip-Adapter", k) in labels
            probe = json.loads((out / "runs" / task / "linear_probe" / f"{k}shots" / "seed1" / "config.json").read_text())
            assert cfg["fewshot"] == probe["fewshot"]  # the same training images as the linear probe (and CoOp)
    table = results["adapters"]
    assert set(table) == {"Zero-shot CLIP", "Linear probe", "CoOp (best variant)", "Tip-Adapter"}
    tip = [r["accuracy_mean"] for r in results["rows"] if r["label"] == "Tip-Adapter" and r["shots"] == 4]
    assert table["Tip-Adapter"]["4"] == pytest.approx(sum(tip) / len(tip)) and "## Feature-space adapters" in report
    assert set(results["domain_shift"]) == {"Zero-shot CLIP", "CoOp M=16", "CoOp M=4 'a photo of a'", "CoOp CSC M=16"}
    # the domain-shift numbers are evaluations run by the grid runner: one run folder per prompt and target, made
    # from the prompt's own folder (eval_run), and zero-shot CLIP's own run on each target
    for target, cell in results["domain_shift"]["CoOp M=16"].items():
        ev = out / "runs" / "shapes" / "coop0" / "4shots" / "seed1" / f"eval_{target}"
        assert json.loads((ev / "metrics.json").read_text())["accuracy"] == cell["mean"]
        assert json.loads((ev / "config.json").read_text())["evaluated_from"].endswith("coop0/4shots/seed1")
    for target, cell in results["domain_shift"]["Zero-shot CLIP"].items():
        assert json.loads((out / "runs" / target / "zeroshot" / "metrics.json").read_text())["accuracy"] == cell["mean"]
    # the commentary is generated from the numbers it shows
    zs = results["summary"]["tasks"]["sizes"]["zero_shot"]
    assert f"zero-shot {zs:.1f}" in report and "## Domain shift" in report
    # re-running resumes: nothing is retrained, the same numbers come out
    assert main([*ARGV, "--out", str(out), "--task-dir", str(tmp_path / "tasks")]) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["rows"] == results["rows"]
