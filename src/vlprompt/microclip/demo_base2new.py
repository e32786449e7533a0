"""The demo's base-to-new protocol (CoCoOp paper): its grid on the suite's base-to-new tasks, the per-method options
that fit micro-CLIP, the table of base, new and H next to the published averages, and its report section.

Every registered prompt learner that can run base-to-new (CoOp, CoCoOp, KgCoOp and the deep methods IVLP, VPT-deep,
MaPLe, PromptSRC once registered) and zero-shot CLIP are trained on the base half of the classes and evaluated on
the new half (``--quick``: CoOp and zero-shot only, at 4 shots). The deep methods' official prompt depths (9 or 12 layers) exceed
micro-CLIP v2's towers (4 text + 4 vision layers): every learner option whose name holds ``depth`` and whose default
exceeds the tower it prompts (``vision`` in its name: the image tower; ``text``: the text tower; neither: both, the
smaller) is set to that tower's layer count (all layers), recorded per method in ``results.json`` and stated in the
report.

The published numbers are the ViT-B/16 11-dataset averages at 16 shots from the MaPLe, PromptSRC and KgCoOp READMEs
(``shared/reference/peers.md``); VPT-deep has none there.
"""

from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path

import numpy as np

from vlprompt.runs.grid import Job

ZERO_SHOT = "Zero-shot CLIP"
#: method → (base, new, H), ViT-B/16, 11-dataset average, 16 shots; ``None``: not published (peers.md).
PUBLISHED: dict[str, tuple[float | None, float | None, float]] = {
    "zeroshot": (69.34, 74.22, 71.70),
    "coop": (82.69, 63.22, 71.66),
    "cocoop": (80.47, 71.69, 75.83),
    "kgcoop": (80.73, 73.60, 77.00),
    "ivlp": (None, None, 77.90),
    "maple": (82.28, 75.14, 78.55),
    "promptsrc": (84.26, 76.10, 79.97),
}
PUBLISHED_SOURCE = ("ViT-B/16, average over 11 datasets, 16 shots; MaPLe, PromptSRC and KgCoOp READMEs "
                    "(shared/reference/peers.md)")


def base2new_methods(chosen: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """``chosen``, or (``None``) every registered prompt learner that can run base-to-new and zero-shot CLIP."""
    from vlprompt.runs.grid import default_methods, transfer_problem

    if chosen is not None:
        return tuple(chosen)
    return tuple(m for m in default_methods("base2new") if transfer_problem(m, "base2new") is None)


def tower_layers(weights: str | None) -> tuple[int, int]:
    """``(text layers, vision layers)`` of the micro-CLIP v2 in ``weights`` (a compact file's recorded config, else
    the v2 architecture)."""
    from vlprompt.backbones.microclip import MICROCLIP_V2_CONFIG, SHIPPED_WEIGHTS_V2

    cfg = MICROCLIP_V2_CONFIG
    path = SHIPPED_WEIGHTS_V2 if weights in (None, "v2") else Path(weights)
    if path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            cfg = json.loads((f.metadata() or {}).get("config", json.dumps(cfg)))
    vision = cfg["vision_cfg"]["layers"]
    return int(cfg["text_cfg"]["layers"]), vision if isinstance(vision, int) else 0  # a ResNet has no layers to prompt


def fitting_options(method: str, text_layers: int, vision_layers: int) -> dict:
    """The learner options of ``method`` whose default depth exceeds micro-CLIP's towers, set to all their layers
    (``{}`` for a method without such options: CoOp, CoCoOp, KgCoOp, zero-shot)."""
    from vlprompt.prompts import get_prompt_learner_class, list_prompt_learners

    if method not in list_prompt_learners():
        return {}
    opts = {}
    for f in fields(get_prompt_learner_class(method).config_class):
        if "depth" not in f.name or not isinstance(f.default, int) or isinstance(f.default, bool):
            continue
        limit = (vision_layers if "vision" in f.name else text_layers if "text" in f.name
                 else min(text_layers, vision_layers))
        if f.default > limit:
            opts[f.name] = limit
    return opts


def base2new_jobs(tasks: tuple[str, ...], split_files: dict[str, Path], runs: Path, *, seeds: tuple[int, ...],
                  shots: int, methods: tuple[str, ...] | None, weights: str | None) -> tuple[list[Job], dict[str, dict]]:
    """The base-to-new grid of ``methods`` (:func:`base2new_methods`) on ``tasks`` at ``shots`` shots (one grid per
    task under ``runs/<task>/``), each deep method with :func:`fitting_options`, and ``{method: {"name", "options",
    "published", "layers"}}`` for the table."""
    from vlprompt.runs.grid import BenchmarkConfig, plan

    if not tasks:
        return [], {}
    methods = base2new_methods(methods)
    text_layers, vision_layers = tower_layers(weights)
    options = {m: fitting_options(m, text_layers, vision_layers) for m in methods}
    # the grid names a split: dataset's folder after the file's own name (split.json), which every task shares
    jobs = [replace(job, learner={**job.learner, **options[job.method]}) if options[job.method] else job
            for t in tasks for job in plan(BenchmarkConfig(
                datasets=(f"split:{split_files[t]}",), shots=(shots,), seeds=tuple(seeds),
                methods=methods, out=str(runs / t), protocol="base2new"))]  # fmt: skip
    about = {m: {"name": display_name(m), "options": options[m], "published": PUBLISHED.get(m),
                 "layers": {"text": text_layers, "vision": vision_layers}} for m in methods}
    return jobs, about


def display_name(method: str) -> str:
    """How the report names ``method``."""
    from vlprompt.prompts import get_prompt_learner_class, list_prompt_learners

    if method == "zeroshot":
        return ZERO_SHOT
    return (get_prompt_learner_class(method).display_name or method) if method in list_prompt_learners() else method


def base2new_table(jobs: list[Job]) -> dict:
    """``{method: {task: {"base", "new", "H", "n"}}}``: means over seeds; H = 2·base·new / (base + new)."""
    cells: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for job in jobs:
        base = json.loads((job.out / "metrics.json").read_text(encoding="utf-8"))["accuracy"]
        new = json.loads((job.evaluations[0].out / "metrics.json").read_text(encoding="utf-8"))["accuracy"]
        cells.setdefault(job.method, {}).setdefault(Path(job.dataset.removeprefix("split:")).parent.name, []).append(
            (base, new))
    table: dict[str, dict] = {}
    for method, per_task in cells.items():
        for task, pairs in per_task.items():
            b, n = float(np.mean([p[0] for p in pairs])), float(np.mean([p[1] for p in pairs]))
            table.setdefault(method, {})[task] = {"base": b, "new": n, "H": _harmonic(b, n), "n": len(pairs)}
    return table


def _harmonic(b: float, n: float) -> float:
    return 2 * b * n / (b + n) if b + n else 0.0


def _cell(x: float | None) -> str:
    return "—" if x is None else f"{x:.1f}"


def base2new_lines(results: dict) -> list[str]:
    """The ``## Base-to-new`` section: base, new and H per method and task (means over seeds), their mean over the
    tasks, the options that fit micro-CLIP, the published averages, and the orderings by H side by side."""
    table = results.get("base2new") or {}
    if not table:
        return []
    about = results.get("base2new_methods") or {}
    tasks = sorted({t for d in table.values() for t in d})
    lines = ["## Base-to-new generalization", "",
             "Trained on the first half of the classes (base), evaluated on the other half (new); H is their harmonic "
             "mean (CoCoOp protocol, run by the grid runner). Published: " + PUBLISHED_SOURCE + " — real CLIP on real "
             "data, so compare orderings, not values.", "",
             "| method | options | " + " | ".join(f"{t} base | {t} new | {t} H" for t in tasks)
             + " | mean H | published base | published new | published H |",
             "|---|---|" + "---:|" * (3 * len(tasks) + 4)]  # fmt: skip
    mean_h: dict[str, float] = {}
    order = [m for m in PUBLISHED if m in table] + [m for m in table if m not in PUBLISHED]  # the peers' row order
    for method in order:
        d = table[method]
        info = about.get(method, {})
        cells = [_cell(d[t][k]) if t in d else "—" for t in tasks for k in ("base", "new", "H")]
        mean_h[method] = float(np.mean([d[t]["H"] for t in tasks if t in d]))
        pub = info.get("published") or (None, None, None)
        opts = ", ".join(f"{k}={v}" for k, v in (info.get("options") or {}).items()) or "official"
        lines.append(f"| {info.get('name', method)} | {opts} | " + " | ".join(cells) + f" | {mean_h[method]:.1f} | "
                     + " | ".join(_cell(p) for p in pub) + " |")
    lines += ["", *_notes(table, about, mean_h), ""]
    return lines


def _notes(table: dict, about: dict, mean_h: dict[str, float]) -> list[str]:
    """The depth options in words and the two orderings by H (measured, published) over the methods having both."""
    notes = []
    fitted = {m: a["options"] for m, a in about.items() if a.get("options") and m in table}
    if fitted:
        layers = next(iter(about.values()))["layers"]
        notes.append(f"The official prompt depths (9 or 12 layers) exceed micro-CLIP v2's towers ({layers['text']} "
                     f"text + {layers['vision']} vision layers); these methods ran with every layer prompted: "
                     + "; ".join(f"{about[m]['name']} {', '.join(f'{k}={v}' for k, v in o.items())}"
                                 for m, o in fitted.items()) + ".")
    both = [m for m in mean_h if m in PUBLISHED]
    if len(both) > 1:
        name = {m: about.get(m, {}).get("name", m) for m in both}
        measured = sorted(both, key=lambda m: -mean_h[m])
        published = sorted(both, key=lambda m: -PUBLISHED[m][2])
        agree = "the same" if measured == published else "a different"
        notes.append(f"Ordering by H here: {' > '.join(name[m] for m in measured)}; published: "
                     f"{' > '.join(name[m] for m in published)} ({agree} order).")
    return notes


__all__ = ["PUBLISHED", "base2new_jobs", "base2new_lines", "base2new_methods", "base2new_table", "display_name",
           "fitting_options", "tower_layers"]
