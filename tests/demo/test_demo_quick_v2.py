"""`vlprompt demo --quick` (the default suite, v2) on micro-CLIP v2: few-shot rows, the four shifted sets of the
ImageNet-like source, a base-to-new table from the grid runner and the claim-by-claim section, all from real run
folders."""

from __future__ import annotations

import json

import pytest

from vlprompt.backbones import create_backbone
from vlprompt.backbones.microclip import SHIPPED_WEIGHTS_V2
from vlprompt.cli.main import main

pytestmark = pytest.mark.skipif(not SHIPPED_WEIGHTS_V2.exists(), reason="micro-CLIP v2 weights not shipped")


def test_demo_quick_v2_writes_every_protocol(tmp_path):
    out = tmp_path / "demo"
    argv = ["demo", "--quick", "--out", str(out), "--workers", "0", "--task-dir", str(tmp_path / "t")]  # no --suite
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    report = (out / "report.md").read_text()
    assert results["config"]["suite"] == "v2" and results["config"]["weights"] == "v2"
    assert results["config"]["protocol"] == "quick" and "Protocol **quick**: MAX_EPOCH 10" in report
    assert json.loads((out / "demo.json").read_text())["epochs"] == {"fewshot": 10, "base2new": 10}
    zs_cfg = json.loads((out / "runs" / "thermal" / "zeroshot" / "config.json").read_text())
    assert zs_cfg["backbone"]["pretrained"] == "v2" and zs_cfg["backbone"]["fingerprint"] == (
        create_backbone("microclip", "v2").fingerprint)
    assert results["config"]["tasks"] == ["thermal", "objects"] and results["config"]["shift_source"] == "objects"
    assert set(results["domain_shift"]["CoOp M=16"]) == {"objects_sketch", "objects_cartoon", "objects_hard",
                                                          "objects_v2"}
    b2n = results["base2new"]["coop"]["objects"]
    base_run = out / "runs" / "objects" / "base2new" / "objects" / "coop" / "4shots" / "seed1"  # bb418ae
    assert json.loads((base_run / "metrics.json").read_text())["accuracy"] == b2n["base"]
    assert json.loads((base_run / "eval_new" / "metrics.json").read_text())["accuracy"] == b2n["new"]
    assert b2n["H"] == pytest.approx(2 * b2n["base"] * b2n["new"] / (b2n["base"] + b2n["new"]))
    assert "## Base-to-new generalization" in report and "## Claims of the paper on this suite" in report
    from vlprompt.microclip.demo_report import render_report

    # the report renders the same from results.json read back (its shot keys are strings there)
    assert render_report(results, []).split("## All results")[0] == report.split("## All results")[0]
    zs = results["summary"]["tasks"]["Average"]["zero_shot"]
    assert f"| zero-shot average ≤ 85 | {zs:.1f} |" in report
