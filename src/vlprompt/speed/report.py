"""Turn raw benchmark measurements into per-step ratios, a projected full run, the end-to-end check, the issue's
targets, and a markdown report."""

from __future__ import annotations

import math
from statistics import median

EXACT_ONLINE = ("truncate", "prefix", "chunk")
LABELS = {
    "official": "(a) official: image encoder + full 77-token text fwd/bwd",
    "truncate": "(b1) + EOS truncation",
    "prefix": "(b2) + shared prefix",
    "chunk": "(b3) + class chunks with checkpointing",
    "cached": "(c) cached:K (image side = feature lookup) + (b2)",
}


def _times(sample: dict) -> dict:
    """Minimum wall-clock times (the least disturbed by other load), the median step, and the same minima in CPU
    time of the process (all its threads; much less sensitive to other processes than wall time)."""
    out: dict = {"samples": len(sample.get("text_s", []))}
    for kind in ("", "_cpu"):
        image, text = sample.get(f"image{kind}_s", []), sample.get(f"text{kind}_s", [])
        steps = [i + t for i, t in zip(image, text, strict=False)]
        out[f"image{kind}_s"] = min(image) if image else None
        out[f"text{kind}_s"] = min(text) if text else None
        out[f"step{kind}_s"] = min(steps) if steps else None
    steps = [i + t for i, t in zip(sample.get("image_s", []), sample.get("text_s", []), strict=False)]
    out["step_median_s"] = median(steps) if steps else None
    return out


def _rows(steps: list[dict], interleaved: list[dict]) -> dict[tuple, dict]:
    """One row per (backbone, classes, configuration): peak memory from the configuration alone in a fresh process;
    times from the interleaved timing pass (from the memory pass where the timing pass has none)."""
    groups: dict[tuple, list[dict]] = {}
    for s in steps:
        groups.setdefault((s["backbone"], s["classes"], s["config"]), []).append(s)
    timed = {(m["backbone"], m["classes"], c): smp for m in interleaved for c, smp in m.get("samples", {}).items()}
    rows = {}
    for key, ms in groups.items():
        peaks = [m["peak_mb"] for m in ms if m.get("peak_mb") is not None]
        alone = _times({k: [x for m in ms for x in m.get(k, [])] for k in ("image_s", "text_s", "image_cpu_s",
                                                                            "text_cpu_s")})
        smp = timed.get(key)
        inter = _times(smp) if smp else None
        use = inter if inter and inter["samples"] else alone
        rows[key] = {
            **use, "timing": "interleaved" if use is inter else "alone", "alone_step_s": alone["step_s"],
            "peak_mb": max(peaks) if peaks else None,
            "model_mb": next((m["model_mb"] for m in ms if m.get("model_mb") is not None), None),
            "oom": any(m.get("oom") for m in ms), "error": next((m["error"] for m in ms if m.get("error")), None),
            "seq_len": next((m["seq_len"] for m in ms if "seq_len" in m), None),
            "text_path": next((m["text_path"] for m in ms if "text_path" in m), None),
            "load": [m.get("load_before") for m in ms], "extrapolated": False,
        }
        if rows[key]["step_s"] is None:
            rows[key]["text_s"] = rows[key]["text_cpu_s"] = None  # an OOM step's image side is not a step time
    return rows


def _extrapolate(rows: dict[tuple, dict]) -> None:
    """Fill in configurations that ran out of memory from the same configuration at the smallest class count
    (the text side is linear in the class count; the image side does not depend on it)."""
    for (bb, n, config), row in rows.items():
        if row["text_s"] is not None:
            continue
        smaller = [m for (b2, m, c2), r in rows.items() if b2 == bb and c2 == config and m < n and r["text_s"]]
        if not smaller:
            continue
        base = min(smaller)
        ref = rows[(bb, base, config)]
        scale = n / base
        row["image_s"] = row["image_s"] if row["image_s"] is not None else ref["image_s"]
        row["text_s"] = ref["text_s"] * scale
        row["step_s"] = row["image_s"] + row["text_s"]
        if ref.get("text_cpu_s") is not None:
            row["image_cpu_s"] = row["image_cpu_s"] if row.get("image_cpu_s") is not None else ref["image_cpu_s"]
            row["text_cpu_s"] = ref["text_cpu_s"] * scale
            row["step_cpu_s"] = row["image_cpu_s"] + row["text_cpu_s"]
        if ref["peak_mb"] is not None and ref["model_mb"] is not None:
            row["peak_estimate_mb"] = ref["model_mb"] + (ref["peak_mb"] - ref["model_mb"]) * scale
        row["extrapolated"] = True


def _onetime(onetime: list[dict], backbone: str) -> dict | None:
    ms = [m for m in onetime if m.get("backbone") == backbone and "encode_per_image_s" in m]
    if not ms:
        return None
    keys = [k for k in ms[0] if k.endswith("_s")]
    return {k: min(m[k] for m in ms) for k in keys}


def _projection(opts: dict, rows: dict, one: dict, bb: str) -> dict | None:
    n = opts["proj_classes"]
    need = {c: rows.get((bb, n, c)) for c in ("official", "prefix", "cached")}
    if one is None or any(r is None or r["step_s"] is None for r in need.values()):
        return None
    b, k = opts["batch"], opts["k"]
    n_train = opts["shots"] * n
    steps = opts["epochs"] * (n_train // b if n_train >= b else 1)
    enc, lt, le = one["encode_per_image_s"], one["load_train_per_image_s"], one["load_test_per_image_s"]
    ours_eval = (opts["proj_test"] + opts["proj_val"]) * (le + enc) + one["text_eval_prefix_s"]
    out = {
        "steps": steps, "n_train": n_train,
        "official": {"train_s": steps * (need["official"]["step_s"] + b * lt),
                     "eval_s": math.ceil(opts["proj_test"] / opts["eval_batch"]) * one["text_eval_official_s"]
                     + opts["proj_test"] * (le + enc)},
        "online": {"train_s": steps * (need["prefix"]["step_s"] + b * lt), "eval_s": ours_eval},
        "cached": {"train_s": k * n_train * (lt + enc) + steps * need["cached"]["step_s"], "eval_s": ours_eval},
    }
    for v in ("official", "online", "cached"):
        out[v]["total_s"] = out[v]["train_s"] + out[v]["eval_s"]
        out[v]["speedup"] = out["official"]["total_s"] / out[v]["total_s"]
    return out


def _e2e_check(opts: dict, rows: dict, onetime: list[dict], e2e: dict | None) -> dict | None:
    if not e2e or "train_s" not in e2e:
        return None
    one = _onetime(onetime, e2e["backbone"])
    row = rows.get((e2e["backbone"], e2e["classes"], "cached"))
    if one is None or row is None or row["step_s"] is None:
        return None
    from vlprompt.engine.recipe import steps_per_epoch

    spe = steps_per_epoch(e2e["n_train"], opts["batch"])  # Dassl's drop_last rule, as the trainer uses
    enc = one["encode_per_image_s"]
    train = e2e["k"] * e2e["n_train"] * (one["load_train_per_image_s"] + enc) + e2e["epochs"] * spe * row["step_s"]
    ev = (e2e["n_test"] + e2e["n_val"]) * (one["load_test_per_image_s"] + enc) + one["text_eval_prefix_s"]
    return {"projected": {"train_s": train, "eval_s": ev, "total_s": train + ev},
            "measured": {"train_s": e2e["train_s"], "eval_s": e2e["eval_s"], "total_s": e2e["train_s"] + e2e["eval_s"],
                         "wall_s": e2e["wall_s"]},
            "ratio": (e2e["train_s"] + e2e["eval_s"]) / (train + ev)}


def _get(rows: dict, bb: str, n: int, config: str, key: str):
    row = rows.get((bb, n, config))
    return None if row is None else row.get(key)


def _best(rows: dict, bb: str, n: int, key: str, pick):
    """The best value of ``key`` over the exact online configurations."""
    values = [v for c in EXACT_ONLINE if (v := _get(rows, bb, n, c, key)) is not None]
    return pick(values) if values else None


def _target(bb: str, name: str, value, goal: float, higher: bool = True) -> dict:
    met = None if value is None else (value >= goal if higher else value <= goal)
    return {"backbone": bb, "target": name, "value": value, "goal": goal, "higher": higher, "met": met}


def analyse(result: dict) -> dict:
    """Aggregated rows, ratios against (a), projections, the end-to-end check and the issue's targets."""
    opts = result["options"]
    rows = _rows(result["steps"], result.get("interleaved", []))
    _extrapolate(rows)
    limit_mb = opts["memory_limit_gb"] * 1024 if opts.get("memory_limit_gb") else None
    for (bb, n, _config), row in rows.items():
        base = rows.get((bb, n, "official"))
        if base and base["step_s"] and row["step_s"]:
            row["step_speedup"] = base["step_s"] / row["step_s"]
            row["text_speedup"] = base["text_s"] / row["text_s"]
        if base and base.get("step_cpu_s") and row.get("step_cpu_s"):
            row["step_speedup_cpu"] = base["step_cpu_s"] / row["step_cpu_s"]
            row["text_speedup_cpu"] = base["text_cpu_s"] / row["text_cpu_s"]
        base_peak = base and (base.get("peak_estimate_mb") if base["oom"] else base["peak_mb"])
        if base_peak and row["peak_mb"] and not row["oom"]:
            row["memory_ratio"] = row["peak_mb"] / base_peak
            if base["oom"] and limit_mb:
                row["memory_ratio_bound"] = row["peak_mb"] / limit_mb  # (a) needs more than the limit
    projections = {bb: _projection(opts, rows, _onetime(result["onetime"], bb), bb) for bb in opts["backbones"]}
    targets = []
    small, large = min(opts["classes"]), max(opts["classes"])
    for bb in opts["backbones"]:
        proj = projections.get(bb)
        targets += [
            _target(bb, f"text-side speed-up at {small} classes (truncation + shared prefix)",
                    _get(rows, bb, small, "prefix", "text_speedup"), 5.0),
            _target(bb, f"whole-step speed-up at {small} classes (exact, online augmentation)",
                    _best(rows, bb, small, "step_speedup", max), 1.5),
            _target(bb, f"whole-step speed-up at {large} classes (exact, online augmentation)",
                    _best(rows, bb, large, "step_speedup", max), 4.0),
            _target(bb, f"projected {opts['shots']}-shot {opts['proj_classes']}-class train + eval, cached:{opts['k']}",
                    proj and proj["cached"]["speedup"], 10.0),
            _target(bb, f"peak memory at {large} classes vs (a) (exact configurations)",
                    _best(rows, bb, large, "memory_ratio", min), 1 / 3, higher=False),
        ]
    rows_out = [{"backbone": k[0], "classes": k[1], "config": k[2], **v} for k, v in rows.items()]
    return {"rows": rows_out, "projections": projections, "e2e_check": _e2e_check(opts, rows, result["onetime"],
            result.get("e2e")), "targets": targets}
