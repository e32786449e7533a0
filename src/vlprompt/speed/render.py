"""Markdown report of a benchmark result (``bench.md``)."""

from __future__ import annotations

from vlprompt.speed.report import LABELS


def _f(x, digits: int = 2, suffix: str = "") -> str:
    return "–" if x is None else f"{x:.{digits}f}{suffix}"


def _t(seconds) -> str:
    if seconds is None:
        return "–"
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.2f} s"


def _mb(row: dict) -> str:
    if row.get("oom"):
        est = row.get("peak_estimate_mb")
        return "OOM" + (f" (est. {est / 1024:.1f} GiB)" if est else "")
    return "–" if row.get("peak_mb") is None else f"{row['peak_mb'] / 1024:.2f} GiB"


def _ratio(row: dict, key: str, digits: int = 1) -> str:
    value = row.get(key)
    return "–" if value is None else f"{value:.{digits}f}×"


def render_markdown(result: dict) -> str:
    """Environment, per-step table, one-time costs, projection, end-to-end check and targets, as markdown."""
    lines = [*_environment(result), *_per_step(result), *_onetime(result), *_projection(result),
             *_e2e_check(result), *_targets(result)]
    return "\n".join(lines) + "\n"


def _environment(result: dict) -> list[str]:
    """The title, the command, the machine and how the numbers were measured."""
    opts, env = result["options"], result["environment"]
    return [
        "# vlprompt speed benchmark",
        "",
        f"Command: `{result.get('command') or 'vlprompt bench'}`",
        "",
        f"Device: {env['device']} — {env['cpu']} ({env['cpu_count']} logical CPUs), torch {env['torch']}, "
        f"open_clip {env['open_clip']}, {env['threads']} torch threads, precision {env['precision']}. "
        f"Load average (1 min) at start {env['load_start'][0]:.1f}, at end {env.get('load_end', [0])[0]:.1f} "
        f"(other processes share the machine: absolute times are noisy, ratios from one run are what counts). "
        f"Benchmark wall time {_t(env.get('bench_seconds'))}.",
        "",
        f"Random weights (open_clip `create_model(name)`, no download), M = {opts['n_ctx']}, batch {opts['batch']}, "
        f"K = {opts['k']}, chunk = {opts['chunk']} classes. Times: the minimum over {opts['rounds']} steps per "
        "configuration, all configurations of one backbone and class count alternating step by step in one process "
        "(so they see the same machine load), after warm-up. Peak memory: each configuration alone in "
        f"{'a fresh process' if opts['subprocess'] else 'the benchmark process (not isolated: --in-process)'}, the "
        "peak resident set during warm-up and step (model weights included). Text s = logits, loss, backward and "
        "SGD update (the text encoder dominates); image s = image encoder, or the feature lookup for cached:K. "
        "CPU s: CPU time of the process (both threads) for the same step — far less sensitive than wall time to "
        "other processes on the machine, so its ratios are the more stable ones on a shared CPU.",
    ]


def _per_step(result: dict) -> list[str]:
    """The per-training-step table, one row per backbone, class count and configuration (in :data:`LABELS` order)."""
    opts, an = result["options"], result["analysis"]
    lines = [
        "",
        "## Per training step",
        "",
        "| backbone | classes | configuration | tokens | image s | text s | step s | text speed-up | step speed-up "
        "| step CPU s | text / step speed-up, CPU time | peak memory | memory vs (a) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = {c: i for i, c in enumerate(LABELS)}
    rows = sorted(an["rows"], key=lambda r: (opts["backbones"].index(r["backbone"]) if r["backbone"] in
                                               opts["backbones"] else 99, r["classes"], order.get(r["config"], 99)))
    for r in rows:
        est = " (extrapolated)" if r.get("extrapolated") else " (timed alone)" if r.get("timing") == "alone" else ""
        mem = _ratio(r, "memory_ratio", 2)
        if r.get("memory_ratio_bound") is not None:
            mem += f" (≤ {r['memory_ratio_bound']:.2f}× of the limit)"
        lines.append(
            f"| {r['backbone']} | {r['classes']} | {LABELS.get(r['config'], r['config'])}{est} | {r.get('seq_len') or '–'} "
            f"| {_f(r['image_s'])} | {_f(r['text_s'])} | {_f(r['step_s'])} | {_ratio(r, 'text_speedup')} "
            f"| {_ratio(r, 'step_speedup')} | {_f(r.get('step_cpu_s'))} "
            f"| {_ratio(r, 'text_speedup_cpu')} / {_ratio(r, 'step_speedup_cpu')} | {_mb(r)} | {mem} |")
    if any(r.get("extrapolated") for r in rows):
        lines += ["", f"OOM: ran out of memory under the {opts.get('memory_limit_gb')} GiB limit. Extrapolated rows: the "
                  "text time is the same configuration at the smallest class count scaled linearly in the class "
                  "count (the image side is measured); their memory ratios use the same linear estimate of the "
                  "peak (`est.`) — and the bound against the limit, which (a) exceeded."]
    return lines


def _onetime(result: dict) -> list[str]:
    """One-time costs per unit, one row per backbone (the minimum over its measurements)."""
    opts = result["options"]
    lines = ["", "## One-time costs (per unit; minimum of the measurements before and after the steps)", "",
             "| backbone | encode 1 image | load + augment 1 image | load 1 test image | text features, "
             f"{opts['proj_classes']} classes (official, 77 tokens) | same, vlprompt |", "|---|---|---|---|---|---|"]
    seen = set()
    for m in result["onetime"]:
        if m.get("backbone") in seen or "encode_per_image_s" not in m:
            continue
        seen.add(m["backbone"])
        one = {k: min(x[k] for x in result["onetime"] if x.get("backbone") == m["backbone"] and k in x)
               for k in m if k.endswith("_s")}
        lines.append(f"| {m['backbone']} | {_f(one['encode_per_image_s'] * 1e3, 1)} ms "
                     f"| {_f(one['load_train_per_image_s'] * 1e3, 1)} ms | {_f(one['load_test_per_image_s'] * 1e3, 1)} ms "
                     f"| {_t(one['text_eval_official_s'])} | {_t(one['text_eval_prefix_s'])} |")
    return lines


def _projection(result: dict) -> list[str]:
    """The projected official-schedule run of each backbone, official vs vlprompt's pipelines."""
    opts, an = result["options"], result["analysis"]
    lines = ["", f"## Projected {opts['shots']}-shot, {opts['proj_classes']}-class run under the official schedule",
             "", f"{opts['epochs']} epochs × {opts['shots'] * opts['proj_classes'] // opts['batch']} steps; evaluation "
             f"on {opts['proj_test']} test images (vlprompt also encodes {opts['proj_val']} few-shot val images). "
             "Official: image encoder every step and the full text encoder for every test batch; vlprompt: test "
             "features once (cached on disk for every later run), text features once. Image loading is included.",
             "", "| backbone | pipeline | train | eval | total | speed-up vs (a) |", "|---|---|---|---|---|---|"]
    names = {"official": "(a) official", "online": "vlprompt exact, online augmentation",
             "cached": f"vlprompt cached:{opts['k']}"}
    for bb, proj in an["projections"].items():
        if not proj:
            continue
        for v, label in names.items():
            p = proj[v]
            lines.append(f"| {bb} | {label} | {_t(p['train_s'])} | {_t(p['eval_s'])} | {_t(p['total_s'])} "
                         f"| {p['speedup']:.1f}× |")
    return lines


def _e2e_check(result: dict) -> list[str]:
    """The measured end-to-end run against its projection (or why it did not run)."""
    chk, e2e = result["analysis"].get("e2e_check"), result.get("e2e")
    lines = ["", "## Projection check: measured end-to-end run", ""]
    if chk:
        lines += [f"`train_run` on a generated folder of {e2e['classes']} classes ({e2e['n_train']} train, "
                  f"{e2e['n_val']} val, {e2e['n_test']} test JPEGs), {e2e['backbone']}, {e2e['epochs']} epochs, "
                  f"cached:{e2e['k']}, the same per-unit costs as above (accuracy is chance: random weights).", "",
                  "| | train | eval | total |", "|---|---|---|---|",
                  f"| projected | {_t(chk['projected']['train_s'])} | {_t(chk['projected']['eval_s'])} "
                  f"| {_t(chk['projected']['total_s'])} |",
                  f"| measured | {_t(chk['measured']['train_s'])} | {_t(chk['measured']['eval_s'])} "
                  f"| {_t(chk['measured']['total_s'])} |", "",
                  f"Measured / projected: {chk['ratio']:.2f} (whole command incl. backbone build and data scan: "
                  f"{_t(chk['measured']['wall_s'])})."]
    else:
        lines.append("Not run" + (f" (failed: {e2e.get('error')})" if e2e and e2e.get("error") else "") + ".")
    return lines


def _targets(result: dict) -> list[str]:
    """The issue's speed targets, measured and met or not."""
    lines = ["", "## Targets (issue 5)", "", "| backbone | target | measured | goal | met |", "|---|---|---|---|---|"]
    for t in result["analysis"]["targets"]:
        goal = ("≥ " if t["higher"] else "≤ ") + f"{t['goal']:.2f}×"
        met = {True: "yes", False: "**no**", None: "–"}[t["met"]]
        lines.append(f"| {t['backbone']} | {t['target']} | {_f(t['value'], 2, '×')} | {goal} | {met} |")
    return lines
