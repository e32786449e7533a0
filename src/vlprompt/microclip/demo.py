"""The offline demo: CoOp vs zero-shot CLIP vs the linear probe on the micro-CLIP task suite.

Runs, on every few-shot task of the suite (:mod:`vlprompt.microclip.demo_suite`: ``v2`` by default, world v2's
tasks on the shipped micro-CLIP v2; ``v1``, world v1's on micro-CLIP v1; real image folders + split files read by
the same readers as real benchmarks): zero-shot CLIP with the task's hand-written template; CoOp with M = 16 random
context, M = 4 initialised from "a photo of a", and class-specific context (M = 16), each at 1/2/4/8/16 shots with
the official optimiser and schedule — × 3 seeds and 50/100/200 epochs under the paper's protocol
(:class:`DemoConfig`'s defaults, ``--protocol paper``), one seed and 50 epochs under the short one
(:meth:`DemoConfig.short`, ``vlprompt demo``'s default); the linear probe on the same few-shot subsets;
the domain-shift pair (prompts learned on photos, evaluated on sketches, cartoons, blurry and noisy images); and
every registered feature-space adapter (:mod:`vlprompt.adapters`: CLIP-Adapter, Tip-Adapter(-F), TaskRes, CLAP,
LP++) on the same few-shot subsets at every shot count, with the first seed only (they fit in seconds, but six
methods × three seeds would double the demo's wall time); with ``--augment none`` a method that wants augmented
views gets the test-transform features as its one view.

One deliberate difference from the official recipe, recorded in every run's config: training images go through the
test transform (``--augment none``, no flip), because on this 64×64 world a random crop or flip destroys the
labels of the position and size tasks. Features are then computed once per few-shot subset (exact for a
deterministic transform).

Every run is a normal run folder under ``<out>/runs``, built as grid jobs (:class:`vlprompt.runs.grid.Job`: the
demo's own folders, labels and variants) and run by the grid runner (:func:`vlprompt.runs.grid_run.run_jobs`, in
``workers`` processes); the domain-shift targets are evaluations of those jobs (``eval_run`` into
``<run>/eval_<target>``; zero-shot: ``runs/<target>/zeroshot``). Re-running resumes (finished runs are skipped); the demo
then writes ``report.md`` (tables and commentary generated from the numbers), ``results.json`` and
``fewshot_curves.png``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vlprompt._io import atomic_write_json, atomic_write_text
from vlprompt.engine.config import TrainConfig
from vlprompt.errors import ConfigError, VLPromptError
from vlprompt.runs.grid import BenchmarkConfig, Evaluation, Job

_logger = logging.getLogger(__name__)

#: CoOp variants of the demo: (label, learner config). The paper's Figure 3 shows M=16 end, CSC, and M=4 init.
VARIANTS: dict[str, dict] = {
    "CoOp M=16": {"n_ctx": 16},
    "CoOp M=4 'a photo of a'": {"ctx_init": "a photo of a"},
    "CoOp CSC M=16": {"n_ctx": 16, "csc": True},
}
ZERO_SHOT = "Zero-shot CLIP"
#: MAX_EPOCH of the short protocol's few-shot runs: CoOp's ``*_ep50`` configs (its ImageNet setting, every shot count).
SHORT_EPOCHS = 50
LINEAR_PROBE = "Linear probe"


@dataclass
class DemoConfig:
    """What the demo runs.

    Attributes:
        out: output folder.
        tasks: few-shot task names (default: all of ``FEWSHOT_TASKS``).
        shots: shot counts.
        seeds: seeds.
        workers: parallel worker processes (each single-threaded); 0 runs in this process.
        task_dir: where task images are generated (default: the tasks cache).
        epochs: override MAX_EPOCH (default: official counts per shot).
        domain_shift: evaluate the domain-shift pair.
        suite: ``v2`` (the default: world v2, micro-CLIP v2) or ``v1`` (world v1, micro-CLIP v1; source
            checkout) (:mod:`vlprompt.microclip.demo_suite`).
        weights: the micro-CLIP weights (``None``: the suite's bundled checkpoint, ``v2`` or ``v1``; a name or a
            compact ``.safetensors`` path).
        base2new: tasks of the base-to-new protocol (16 shots; 4 with one seed and fewer than 16 shots, as
            ``quick``); ``None``: the suite's own (none in v1). See :mod:`vlprompt.microclip.demo_base2new`.
        base2new_methods: its methods; ``None``: every registered prompt learner that runs base-to-new (the deep
            ones with depths that fit micro-CLIP v2) and zero-shot CLIP.
        adapters: feature-space adapters to run (first seed only); ``None``: every registered one.
        base2new_epochs: whether ``epochs`` also overrides the base-to-new runs' (``True``: ``--quick``'s smoke test);
            ``False``: each base-to-new method trains with its own official recipe (CoCoOp 10 epochs, IVLP 5, …).
        protocol: the protocol's name in ``results.json`` and the report (``paper``, ``short``, ``quick``; the
            dataclass defaults are the paper's).
    """

    out: str = "demo"
    tasks: tuple[str, ...] | None = None
    shots: tuple[int, ...] = (1, 2, 4, 8, 16)
    seeds: tuple[int, ...] = (1, 2, 3)
    workers: int = 2
    task_dir: str | None = None
    epochs: int | None = None
    domain_shift: bool = True
    suite: str = "v2"
    weights: str | None = None
    base2new: tuple[str, ...] | None = None
    base2new_methods: tuple[str, ...] | None = None
    adapters: tuple[str, ...] | None = None
    base2new_epochs: bool = True
    protocol: str = "paper"

    @classmethod
    def quick(cls, out: str = "demo", suite: str = "v2", weights: str | None = None) -> DemoConfig:
        """One seed, two shot counts, two tasks (one that should gain, one that should tie) + domain shift; in v2
        also base-to-new (CoOp and zero-shot) on one task at 4 shots, and 10 epochs instead of the official 50–100 (the v2 domain-shift
        source has 64 classes: a smoke test, not the paper's recipe)."""
        from vlprompt.microclip.demo_suite import get_suite

        s = get_suite(suite)
        return cls(out=out, tasks=s.quick_tasks, shots=(1, 4), seeds=(1,), suite=suite, weights=weights,
                   base2new=s.quick_base2new, base2new_methods=("coop", "zeroshot"),
                   epochs=10 if suite == "v2" else None, adapters=("tip-adapter",), protocol="quick")

    @classmethod
    def short(cls, out: str = "demo", suite: str = "v2", weights: str | None = None) -> DemoConfig:
        """The bounded protocol ``vlprompt demo`` runs by default: the paper's whole few-shot grid (every task, 1–16
        shots, the three CoOp variants, the linear probe, every adapter, the domain-shift sets) with **one seed**
        instead of three and **50 epochs at every shot count** instead of 50/100/200 — CoOp's own ``*_ep50`` configs,
        the setting the paper uses for ImageNet at every shot count — and base-to-new on the suite's
        :attr:`~vlprompt.microclip.demo_suite.Suite.short_base2new` tasks with each method's own recipe.

        Why: the paper's protocol on the v2 suite is about 175 CPU-minutes of CoOp training alone (measured step
        times × steps; ~1.5 h wall on two cores), against the demo's 15-minute budget. ``--protocol paper`` runs it.
        """
        from vlprompt.microclip.demo_suite import get_suite

        return cls(out=out, seeds=(1,), suite=suite, weights=weights, epochs=SHORT_EPOCHS,
                   base2new=get_suite(suite).short_base2new, base2new_epochs=False, protocol="short")


# --- jobs: grid jobs (vlprompt.runs.grid.Job) run by the grid runner (vlprompt.runs.grid_run.run_jobs) -------------
def _settings(cfg: DemoConfig, epochs: int | None) -> BenchmarkConfig:
    """The settings every demo run shares: micro-CLIP (:func:`demo_weights`) on the CPU, the test transform for
    training images, ``epochs`` (``None``: each method's official epochs), the default feature cache; resume states
    at most once a minute (runs take seconds: per-epoch states would only cost fsyncs)."""
    return BenchmarkConfig(datasets=tuple(cfg.tasks), shots=tuple(cfg.shots), seeds=tuple(cfg.seeds),
                           methods=("zeroshot", "linear-probe", "coop"), out=str(Path(cfg.out) / "runs"),
                           backbone="microclip", pretrained=demo_weights(cfg),
                           device="cpu",
                           train=TrainConfig(augment="none", flip=False, epochs=epochs),
                           cache_dir=None, state_every_seconds=60.0)


def demo_weights(cfg: DemoConfig) -> str:
    """The micro-CLIP weights of the demo's runs: ``cfg.weights``, else the suite's bundled checkpoint (``v2`` for
    suite v2, ``v1`` for suite v1: each world with the model pretrained on it)."""
    from vlprompt.microclip.demo_suite import get_suite

    return cfg.weights or get_suite(cfg.suite).weights


#: Which suite, weights and epochs a demo folder holds (written at the start, so that an interrupted demo is covered too).
DEMO_SETTINGS = "demo.json"


def check_out(cfg: DemoConfig) -> None:
    """Record ``{"suite", "weights", "epochs"}`` in ``<out>/demo.json``, or refuse a folder holding a demo of another
    suite, weights or epochs (:func:`demo_epochs`; a folder from before they were recorded is read as the official
    epochs, which every demo but ``--quick`` trained with): its finished runs would be skipped and reported as this demo's (v1 and v2 share task names such as
    ``shapes``). A folder from before ``demo.json`` is read from its ``results.json``, whose ``"shipped"`` weights
    were the suite's own (v1 for suite v1, v2 for suite v2), or, interrupted before it, from its zero-shot runs
    (``pretrained`` ``None``: the old default, suite v1 on v1).

    Raises:
        ConfigError: ``cfg.out`` holds a demo made with another suite, other weights or other epochs.
    """
    from vlprompt.microclip.demo_suite import get_suite

    out = Path(cfg.out)
    want = {"suite": cfg.suite, "weights": demo_weights(cfg), "epochs": demo_epochs(cfg)}
    have = None
    if (out / DEMO_SETTINGS).is_file():
        have = json.loads((out / DEMO_SETTINGS).read_text(encoding="utf-8"))
    elif (out / "results.json").is_file():
        old = json.loads((out / "results.json").read_text(encoding="utf-8"))["config"]
        suite = old.get("suite", "v1")
        weights = old.get("weights")
        have = {"suite": suite, "weights": get_suite(suite).weights if weights in (None, "shipped") else weights}
    elif any(_old_default_run(f) for f in out.glob("runs/*/zeroshot/config.json")):
        have = {"suite": "v1", "weights": "v1"}  # an interrupted demo of the old default (v1 recorded as None)
    if have is not None and {k: have[k] for k in ("suite", "weights")} != {k: want[k] for k in ("suite", "weights")}:
        raise ConfigError(
            f"--out '{out}' holds a demo of suite {have['suite']} on micro-CLIP weights {have['weights']}, not suite "
            f"{want['suite']} on {want['weights']}; resuming would mix their runs in one report. Use another --out, "
            f"or the same settings (--suite {have['suite']} --weights {have['weights']}).")
    if have is not None:  # every demo before the epochs were recorded trained with the official ones (but --quick)
        have.setdefault("epochs", {"fewshot": "official", "base2new": "official"})
    if have is not None and have["epochs"] != want["epochs"]:
        raise ConfigError(
            f"--out '{out}' holds a demo trained with epochs {have['epochs']}, not {want['epochs']} (protocol "
            f"{cfg.protocol}); its finished runs would be reported as this protocol's. Use another --out, or the "
            "protocol that made it (--protocol short: 50 epochs; --protocol paper: official; --quick: 10).")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / DEMO_SETTINGS, want)


def part_epochs(cfg: DemoConfig) -> tuple[int | None, int | None]:
    """``(few-shot, base-to-new)`` MAX_EPOCH overrides of the demo's two grids (``None``: each method's official)."""
    return cfg.epochs, (cfg.epochs if cfg.base2new_epochs else None)


def demo_epochs(cfg: DemoConfig) -> dict[str, int | str]:
    """``{"fewshot", "base2new"}``: :func:`part_epochs` as recorded (``"official"`` for ``None``) in ``demo.json``,
    since they change what a finished run folder holds, and in ``results.json``."""
    fewshot, base2new = part_epochs(cfg)
    return {"fewshot": fewshot or "official", "base2new": base2new or "official"}


def _old_default_run(config_json: Path) -> bool:
    """The run of ``config_json`` recorded micro-CLIP's old default (v1, as ``pretrained`` ``None``/``"shipped"``)."""
    from vlprompt.backbones.microclip import records_old_default

    backbone = json.loads(config_json.read_text(encoding="utf-8")).get("backbone") or {}
    return records_old_default(backbone.get("name"), backbone.get("pretrained"))


def _jobs(cfg: DemoConfig, split_files: dict[str, Path], runs: Path) -> list[Job]:
    """The demo's runs as grid jobs (its own folder layout and labels); the domain-shift targets are evaluations of
    the zero-shot runs (with the source task's template) and of the CoOp runs at the largest shot count."""
    from vlprompt.microclip.demo_suite import get_suite

    suite = get_suite(cfg.suite)
    DOMAIN_SHIFT, TASKS = suite.domain_shift, suite.tasks  # noqa: N806 - the suite's tables
    jobs: list[Job] = []
    for task in cfg.tasks:
        dataset = f"split:{split_files[task]}"
        targets = DOMAIN_SHIFT.get(task, ()) if cfg.domain_shift else ()
        jobs.append(Job(dataset, "zeroshot", None, 1, runs / task / "zeroshot", label=ZERO_SHOT,
                        templates=(TASKS[task].template,), evaluations=_shift(targets, split_files, runs, None)))
        for shots in cfg.shots:
            for seed in cfg.seeds:
                jobs.append(Job(dataset, "linear-probe", shots, seed,
                                runs / task / "linear_probe" / f"{shots}shots" / f"seed{seed}", label=LINEAR_PROBE))
                for i, (label, learner) in enumerate(VARIANTS.items()):
                    out = runs / task / f"coop{i}" / f"{shots}shots" / f"seed{seed}"
                    jobs.append(Job(dataset, "coop", shots, seed, out, label=label, learner=dict(learner),
                                    evaluations=_shift(targets, split_files, runs, out) if shots == max(cfg.shots) else ()))
        jobs += _adapter_jobs(cfg, dataset, runs / task)
    return jobs


def _adapter_jobs(cfg: DemoConfig, dataset: str, task_runs: Path) -> list[Job]:
    """Every adapter of ``cfg.adapters`` at every shot count, first seed: ``<task>/<method>/<K>shots/seed<S>``."""
    from vlprompt.adapters import get_adapter_class, list_adapters

    seed = cfg.seeds[0]
    return [Job(dataset, m, shots, seed, task_runs / m / f"{shots}shots" / f"seed{seed}",
                label=get_adapter_class(m).display_name or m)
            for m in (list_adapters() if cfg.adapters is None else cfg.adapters) for shots in cfg.shots]


def _adapter_table(rows, cfg: DemoConfig) -> dict:
    """``{label: {shots: mean over tasks}}`` for zero-shot, the linear probe, the best CoOp variant (per task) and
    each adapter, over the tasks where the label has a result at that shot count."""
    from vlprompt.adapters import get_adapter_class

    names = [get_adapter_class(m).display_name or m for m in (cfg.adapters or ())] if cfg.adapters is not None else None
    by = {(r.dataset, r.label, r.shots): r.accuracy_mean for r in rows}
    labels = sorted({r.label for r in rows if r.shots and (names is None or r.label in names)}
                    - {*VARIANTS, LINEAR_PROBE})
    table: dict[str, dict[int, float]] = {}
    for k in cfg.shots:
        cols = {ZERO_SHOT: [by.get((t, ZERO_SHOT, None)) for t in cfg.tasks],
                LINEAR_PROBE: [by.get((t, LINEAR_PROBE, k)) for t in cfg.tasks],
                "CoOp (best variant)": [max((by[(t, v, k)] for v in VARIANTS if (t, v, k) in by), default=None)
                                        for t in cfg.tasks],
                **{lbl: [by.get((t, lbl, k)) for t in cfg.tasks] for lbl in labels}}
        for lbl, vals in cols.items():
            got = [v for v in vals if v is not None]
            if got:
                table.setdefault(lbl, {})[k] = float(np.mean(got))
    return table


def _shift(targets, split_files: dict[str, Path], runs: Path, run: Path | None) -> tuple[Evaluation, ...]:
    """The domain-shift evaluations of a prompt in ``run`` (into ``run/eval_<target>``), or of zero-shot CLIP
    (``run`` ``None``: into ``runs/<target>/zeroshot``)."""
    return tuple(Evaluation(t, f"split:{split_files[t]}", "all", run / f"eval_{t}" if run else runs / t / "zeroshot")
                 for t in targets)


def _execute(jobs: list[Job], cfg: DemoConfig, progress: bool, epochs: int | None) -> None:
    """Run the unfinished jobs through the grid runner with ``epochs`` (``None``: official); a failed run stops the
    demo with every failure named."""
    from vlprompt.runs.grid_run import run_jobs

    # Longest first, so the pool's tail is short: 16-shot CoOp runs train longest.
    order = sorted(jobs, key=lambda j: -(j.shots or 0) * (j.method == "coop"))
    summary = run_jobs(order, _settings(cfg, epochs), workers=cfg.workers, progress=progress, desc="demo runs")
    if summary.failed:
        raise VLPromptError("demo runs failed: " + "; ".join(f"{job} ({job.out}): {e}" for job, e in summary.failed))


def run_demo(cfg: DemoConfig, progress: bool = True) -> dict:
    """Run the demo and write ``report.md``, ``results.json`` and ``fewshot_curves.png`` into ``cfg.out``."""
    from vlprompt.microclip.demo_suite import get_suite
    from vlprompt.reports import aggregate, collect_runs
    from vlprompt.reports.plots import plot_fewshot_curves

    t0 = time.perf_counter()
    suite = get_suite(cfg.suite)
    cfg.tasks = tuple(cfg.tasks or suite.fewshot)
    b2n = tuple(suite.base2new if cfg.base2new is None else cfg.base2new)
    out = Path(cfg.out)
    runs = out / "runs"
    from vlprompt.backbones.microclip import resolve_weights

    resolve_weights(demo_weights(cfg))  # v1 in an installed wheel: WeightsNotFoundError saying where it is, up front
    check_out(cfg)
    needed = set(cfg.tasks) | set(b2n)
    if cfg.domain_shift:
        needed |= {t for s in cfg.tasks for t in suite.domain_shift.get(s, ())}
    from vlprompt.microclip.demo_suite import write_tasks

    split_files = write_tasks(suite.write_task, sorted(needed), cfg.task_dir, default_workers())
    jobs = _jobs(cfg, split_files, runs)
    fewshot_epochs, base2new_epochs = part_epochs(cfg)
    _execute(jobs, cfg, progress, fewshot_epochs)
    from vlprompt.microclip.demo_base2new import base2new_jobs, base2new_table

    quick = len(cfg.seeds) == 1 and max(cfg.shots) < 16  # base-to-new at 4 shots instead of 16
    b2n_jobs, b2n_methods = base2new_jobs(b2n, split_files, runs, seeds=cfg.seeds, shots=4 if quick else 16,
                                          methods=cfg.base2new_methods, weights=demo_weights(cfg))
    _execute(b2n_jobs, cfg, progress, base2new_epochs)

    # the few-shot runs only: a base-to-new task's base runs and their new-class evaluations (runs/<task>/base2new)
    # bear the task's name too, and would enter its few-shot rows and averages
    rows = aggregate(r for r in collect_runs(runs) if r.dataset in cfg.tasks and r.subsample == "all")
    out.mkdir(parents=True, exist_ok=True)
    png = plot_fewshot_curves(rows, out / "fewshot_curves.png")
    shift = _shift_table(jobs)
    summary = _summary(rows, cfg)
    elapsed = time.perf_counter() - t0
    results = {
        "config": {"suite": cfg.suite, "weights": demo_weights(cfg), "protocol": cfg.protocol, "tasks": list(cfg.tasks),
                   "shift_source": next(iter(suite.domain_shift)), "base2new_tasks": list(b2n),
                   "shots": list(cfg.shots), "seeds": list(cfg.seeds),
                   "variants": VARIANTS, "train": {"augment": "none", "flip": False, "epochs": cfg.epochs or "official",
                                                 "base2new_epochs": demo_epochs(cfg)["base2new"]},
                   "characters": {t: suite.tasks[t].character for t in cfg.tasks}},
        "summary": summary,
        "domain_shift": shift,
        "base2new": base2new_table(b2n_jobs),
        "base2new_methods": b2n_methods,
        "adapters": _adapter_table(rows, cfg),
        "rows": [r.__dict__ for r in rows],
        "seconds": elapsed,
        "files": {"report": str(out / "report.md"), "curves": png},
    }
    atomic_write_json(out / "results.json", results)
    from vlprompt.microclip.demo_report import render_report

    atomic_write_text(out / "report.md", render_report(results, rows))
    return results


def _shift_table(jobs: list[Job]) -> dict:
    """``{label: {target: {"mean", "std", "n"}}}`` of the domain-shift evaluations (one accuracy per seed)."""
    table: dict[str, dict[str, list[float]]] = {}
    for job in jobs:
        for ev in job.evaluations:
            accuracy = json.loads((ev.out / "metrics.json").read_text(encoding="utf-8"))["accuracy"]
            table.setdefault(job.label, {}).setdefault(ev.name, []).append(accuracy)
    return {label: {t: {"mean": float(np.mean(v)), "std": float(np.std(v)), "n": len(v)} for t, v in d.items()}
            for label, d in table.items()}


def _summary(rows, cfg: DemoConfig) -> dict:
    """Per task and on average: zero-shot, best CoOp variant per shot count, linear probe; gains."""
    by = {(r.dataset, r.label, r.shots): r for r in rows}
    out: dict = {"tasks": {}}
    for task in [*cfg.tasks, "Average"]:
        zs = by.get((task, ZERO_SHOT, None))
        if zs is None:
            continue
        per_shot = {}
        for k in cfg.shots:
            coop = [(by[(task, v, k)].accuracy_mean, v) for v in VARIANTS if (task, v, k) in by]
            lp = by.get((task, LINEAR_PROBE, k))
            if coop:
                best, label = max(coop)
                per_shot[k] = {"best_coop": best, "best_variant": label, "gain": best - zs.accuracy_mean,
                               "linear_probe": lp.accuracy_mean if lp else None,
                               "variants": {v: a for a, v in coop}}
        out["tasks"][task] = {"zero_shot": zs.accuracy_mean, "shots": per_shot}
    return out


def default_workers() -> int:
    """Worker processes: the CPU count (at most 4)."""
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
