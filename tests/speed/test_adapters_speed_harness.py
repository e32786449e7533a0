"""``benchmarks/adapters_speed.py`` (issue 16's 1000-class adapter benchmark) works: its synthetic inputs have the
documented shapes and scale, and a run on a tiny problem with the in-script stand-in adapter (the real adapters
land from other branches) writes one row per adapter with its times, memory and accuracy."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "adapters_speed.py"


def _bench():
    spec = importlib.util.spec_from_file_location("adapters_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("adapters_speed", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_synthetic_inputs_have_the_documented_shapes_and_scale():
    data, test, test_labels = _bench().synthetic(classes=20, dim=64, shots=4, val_shots=2, test_per_class=3, views=5)
    assert data.train.shape == (80, 64) and data.views.shape == (5, 80, 64) and data.val.shape == (40, 64)
    assert test.shape == (60, 64) and torch.equal(test_labels, torch.arange(20).repeat_interleave(3))
    assert torch.allclose(data.text.norm(dim=-1), torch.ones(20))
    assert abs(data.train.norm(dim=-1).mean().item() - 10.0) < 0.5  # "norm about 10, as CLIP's raw features"
    assert torch.equal(data.train_labels, torch.arange(20).repeat_interleave(4))


def test_a_tiny_run_with_the_stand_in_writes_one_row_per_adapter(tmp_path):
    bench = _bench()
    argv = ["--out", str(tmp_path), "--stand-in", "--methods", bench.STAND_IN, "--classes", "10", "--shots", "2",
            "--dim", "16", "--val-shots", "1", "--test-per-class", "2", "--threads", "1"]
    assert bench.main(argv) == 0
    result = json.loads((tmp_path / "adapters_speed.json").read_text())
    [row] = result["rows"]
    assert row["method"] == bench.STAND_IN and row["views"] == 10 and row["threads"] == 1
    assert row["fit_s"] >= 0 and row["eval_s"] >= 0 and row["peak_rss_mb"] >= row["rss_inputs_mb"] > 0
    assert 0 <= row["accuracy"] <= 100 and row["target_s"] is None
    assert f"| {bench.STAND_IN} | 10 |" in (tmp_path / "adapters_speed.md").read_text()
    assert bench.TARGETS["tip-adapter"] == 10 and bench.TARGETS["clap"] == 60  # the targets


def test_an_adapter_over_the_timeout_is_reported_not_waited_for(tmp_path):
    bench = _bench()
    argv = ["--out", str(tmp_path), "--stand-in", "--methods", bench.STAND_IN, "--classes", "10", "--timeout", "0.2"]
    assert bench.main(argv) == 1
    [row] = json.loads((tmp_path / "adapters_speed.json").read_text())["rows"]
    assert row == {"method": bench.STAND_IN, "error": "not finished within --timeout 0.2 s"}
    assert "failed: not finished within --timeout 0.2 s" in (tmp_path / "adapters_speed.md").read_text()
