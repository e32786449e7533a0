"""``benchmarks/deep_prompts_speed.py`` (issue 15's deep-prompt step benchmark) measures what it says.

At tiny size (a 3 + 3 block random ViT CLIP, depth 3, 12 classes), its exactness check must find the official
computation really full-length (every class's 77 positions through the text tower in one call, the plain path) and
vlprompt really accelerated (shared prefix, shorter sequences, fewer positions), with equal logits at init and after
one SGD step and equal gradients of every learned tensor (fp32 tolerance). The projection of the official side to
1000 classes is a least-squares line, and a class count whose projected memory passes the cap is not run.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "deep_prompts_speed.py"
CLASSES = 12


def _bench():
    spec = importlib.util.spec_from_file_location("deep_prompts_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("deep_prompts_speed", module)
    spec.loader.exec_module(module)
    return module


def _args(bench, method: str, **over) -> argparse.Namespace:
    base = {"backbone": bench.TINY, "method": method, "classes": CLASSES, "batch": 4, "seed": 1, "depth": 3,
            "half_tokens": False, "text_chunk": 128, "chunk_from": 500, "stand_in": True}
    return argparse.Namespace(**{**base, **over})


@pytest.mark.parametrize("method", ["maple", "promptsrc"])
def test_exactness_check_official_full_length_vlprompt_accelerated_and_equal(method):
    bench = _bench()
    report = bench.exactness(_args(bench, method))
    # the official side: plain path, every class's full 77-token prompt, one call
    assert report["official_text_path"] == "plain"
    assert report["official_counts"]["text_longest"] == 77
    assert report["official_counts"]["text_positions"] == CLASSES * 77
    n_v = bench.METHODS[method]["n_ctx_vision"]
    frozen = 4 * 5 if bench.METHODS[method]["src_terms"] else 0  # PromptSRC's frozen image tower, every step
    assert report["official_counts"]["vision_positions"] == 4 * (1 + 4 + n_v) + frozen  # B × (cls + 2×2 patches + n_v)
    for side, r in report["sides"].items():
        assert r["text_path"] == "shared-prefix"
        assert r["text_chunk"] == (None if side == "vlprompt" else CLASSES // 4)
        assert r["counts"]["text_longest"] < 20 and r["counts"]["text_positions"] < CLASSES * 77 / 5
        assert r["counts"]["vision_positions"] == report["official_counts"]["vision_positions"]
        assert r["same_parameters"] and set(r["grad_max_abs_diff"]) == {"ctx", "deep_text", "deep_vision"}
        assert r["logits_init_max_abs_diff"] <= 1e-5 * max(1.0, report["logits_max_abs"])
        assert r["logits_after_step_max_abs_diff"] <= 1e-5 * max(1.0, report["logits_max_abs"])
        for name, diff in r["grad_max_abs_diff"].items():
            assert diff <= 1e-5 * max(1.0, r["grad_max_abs"][name]), name
            assert r["grad_max_abs"][name] > 1e-3, name  # a real gradient, not two zeros agreeing


def test_the_check_detects_different_parameters():
    """A vlprompt side built from another seed (different tokens) is reported as different: the check can fail."""
    bench = _bench()
    build = bench.build

    def other_seed(bb, method, classes, side, a):
        return build(bb, method, classes, side, argparse.Namespace(**{**vars(a), "seed": a.seed + (side != "official")}))

    bench.build = other_seed
    try:
        report = bench.exactness(_args(bench, "maple"))
    finally:
        bench.build = build
    assert report["sides"]["vlprompt"]["logits_init_max_abs_diff"] > 1e-3


def test_projection_is_the_least_squares_line():
    bench = _bench()
    assert bench.linear_fit([1, 2, 3], [5, 8, 11]) == pytest.approx((2.0, 3.0))
    rows = [{"classes": c, "wall_s_min": 1 + 0.5 * c, "cpu_s_min": 0.4 * c, "peak_rss_mb": 1000 + 30 * c,
             "rss_built_mb": 900} for c in (25, 50, 100)]
    proj = bench.projection(rows + [{"classes": 200, "skipped": "x"}], 1000)
    assert proj["projected"] and proj["from_classes"] == [25, 50, 100]
    assert proj["wall_s_min"] == pytest.approx(501) and proj["peak_rss_mb"] == pytest.approx(31000)
    assert proj["peak_rss_mb_per_class"] == pytest.approx(30)
    assert bench.projection(rows[:1], 1000) is None  # one point is not a line


def test_a_class_count_projected_over_the_cap_is_not_run(monkeypatch):
    bench = _bench()
    ran = []

    def fake_child(a, job, **over):
        ran.append(over["classes"])
        return {"method": over["method"], "side": "official", "classes": over["classes"], "wall_s_min": 1.0,
                "peak_rss_mb": 1000 + 30 * over["classes"]}

    monkeypatch.setattr(bench, "run_child", fake_child)
    a = argparse.Namespace(official_classes="25,50,100,200", mem_cap_gb=6.0)
    rows = bench.official_rows(a, "maple")
    assert ran == [25, 50, 100]  # 200 would need 7.0 GB
    assert rows[-1] == {"method": "maple", "side": "official", "classes": 200,
                        "skipped": "projected peak 6.8 GB > the 6.0 GB cap"}


def test_the_table_labels_the_projection_and_compares_with_it():
    bench = _bench()
    row = {"classes": 100, "wall_s_min": 10.0, "cpu_s_min": 16.0, "peak_rss_mb": 3000.0, "rss_built_mb": 1000.0,
           "load_avg_1min": [2.0, 2.5], "counts": {"text_positions": 7700}}
    proj = {"classes": 1000, "from_classes": [25, 50, 100], "projected": True, "wall_s_min": 100.0,
            "cpu_s_min": 160.0, "peak_rss_mb": 21000.0, "rss_built_mb": 1000.0}
    fast = {**row, "classes": 1000, "wall_s_min": 20.0, "cpu_s_min": 32.0, "peak_rss_mb": 2000.0, "text_chunk": 128}
    result = {"options": {"backbone": "ViT-B-16", "batch": 4, "threads": 2, "steps": 2, "mem_cap_gb": 6.0,
                          "project_to": 1000}, "torch": "x", "machine": "m", "command": "c", "uptime_start": "u",
              "uptime_end": "v", "methods": {"maple": {"learner": "L", "official": [row, {"classes": 200, "skipped": "s"}],
                                                      "official_projection": proj, "vlprompt": [fast]}}}
    text = bench.render(result)
    assert "| official (**projected**, linear fit over [25, 50, 100]) | 1000 | 100.0 | 160.0 | 21000 | 20000 |" in text
    assert "| vlprompt (text_chunk 128) | 1000 | 20.00 | 32.00 | 2000 | 1000 | 7700 | 2.0→2.5 | 5.0× (5.0× CPU) | " \
           "0.10 (0.05 step) |" in text
    assert "| official (measured) | 200 | s |" in text


def test_the_no_grad_logits_check_compares_full_length_with_vlprompt():
    bench = _bench()
    report = bench.logits_check(_args(bench, "promptsrc", classes=150))  # the official side in 2 chunks of 100
    assert report["classes"] == 150 and report["logits_max_abs"] > 0.1
    assert report["logits_init_max_abs_diff"] <= 1e-5 * max(1.0, report["logits_max_abs"])
