"""`vlprompt bench --quick`: the whole benchmark pipeline on tiny models (no timing assertions)."""

from __future__ import annotations

import json

import pytest

from vlprompt.cli.main import main


def test_bench_quick_writes_complete_report(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["bench", "--quick", "--out", str(out), "--backbones", "vlpbench-tiny-vit", "--classes", "6,12"]) == 0
    result = json.loads((out / "bench.json").read_text())
    env = result["environment"]
    assert env["threads"] >= 1 and env["torch"] and env["device"] == "cpu"
    rows = {(r["classes"], r["config"]): r for r in result["analysis"]["rows"]}
    # chunk (8 classes) is skipped where it would not split the classes, measured where it does.
    assert set(rows) == {(n, c) for n in (6, 12) for c in ("official", "truncate", "prefix", "cached")} | {(12, "chunk")}
    for (n, config), row in rows.items():
        assert row["step_s"] > 0 and row["peak_mb"] > 0, (n, config)
        assert row["seq_len"] == (77 if config == "official" else row["seq_len"]) and row["seq_len"] <= 77
        assert row["text_path"] == ("plain" if config in ("official", "truncate") else "shared-prefix")
        assert row["step_speedup"] > 0 and row["text_speedup"] > 0
    assert rows[(6, "official")]["step_speedup"] == pytest.approx(1.0)
    assert rows[(6, "prefix")]["seq_len"] < 77
    proj = result["analysis"]["projections"]["vlpbench-tiny-vit"]
    assert proj["steps"] == 200 * (4 * 6 // 8)  # official schedule: epochs × (shots·classes // batch)
    assert all(proj[v]["total_s"] > 0 for v in ("official", "online", "cached"))
    check = result["analysis"]["e2e_check"]
    assert check["measured"]["train_s"] > 0 and check["projected"]["total_s"] > 0 and check["ratio"] > 0
    assert len(result["analysis"]["targets"]) == 5
    md = (out / "bench.md").read_text()
    for heading in ("## Per training step", "## One-time costs", "## Projected", "## Projection check", "## Targets"):
        assert heading in md
    assert "vlprompt bench --quick" in md or "bench" in md
    assert "text-side speed-up" in capsys.readouterr().out


def test_bench_refuses_bad_options(tmp_path, capsys):
    assert main(["bench", "--quick", "--out", str(tmp_path), "--configs", "official,turbo"]) == 2
    assert "unknown ['turbo']" in capsys.readouterr().err
    assert main(["bench", "--quick", "--out", str(tmp_path), "--precision", "amp"]) == 2


def test_worker_subprocess_measures_one_configuration(tmp_path):
    """The subprocess path (fresh process, peak memory from the kernel) for one tiny configuration."""
    from vlprompt.speed.suite import BenchOptions, _measure, _spec

    opts = BenchOptions.quick_options(subprocess=True, memory_limit_gb=8)
    spec = _spec(opts, "step", "vlpbench-tiny-rn", 6, str(tmp_path / "configs"), config="prefix")
    res = _measure(spec, opts, tmp_path)
    assert res["oom"] is False and len(res["text_s"]) == opts.steps and res["peak_mb"] >= res["model_mb"] > 0
