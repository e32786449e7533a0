"""The offline demo: CoOp vs zero-shot CLIP vs the linear probe on the micro-CLIP task suite.

Runs, on every few-shot task of :mod:`vlprompt.microclip.tasks` (real image folders + split files read by the same
readers as real benchmarks): zero-shot CLIP with the task's hand-written template; CoOp with M = 16 random
context, M = 4 initialised from "a photo of a", and class-specific context (M = 16), each at 1/2/4/8/16 shots ×
3 seeds with the official optimiser, schedule and epoch counts; the linear probe on the same few-shot subsets;
and the domain-shift pair (prompts learned on photos, evaluated on sketches, cartoons, blurry and noisy images).

One deliberate difference from the official recipe, recorded in every run's config: training images go through the
test transform (``--augment none``, no flip), because on this 64×64 world a random crop or flip destroys the
labels of the position and size tasks. Features are then computed once per few-shot subset (exact for a
deterministic transform).

Every run is a normal run folder under ``<out>/runs`` (re-running resumes: finished runs are skipped); the demo
then writes ``report.md`` (tables and commentary generated from the numbers), ``results.json`` and
``fewshot_curves.png``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vlprompt._io import atomic_write_json, atomic_write_text
from vlprompt.engine.config import TrainConfig
from vlprompt.engine.run import RunSpec

_logger = logging.getLogger(__name__)

#: CoOp variants of the demo: (label, learner config). The paper's Figure 3 shows M=16 end, CSC, and M=4 init.
VARIANTS: dict[str, dict] = {
    "CoOp M=16": {"n_ctx": 16},
    "CoOp M=4 'a photo of a'": {"ctx_init": "a photo of a"},
    "CoOp CSC M=16": {"n_ctx": 16, "csc": True},
}
ZERO_SHOT = "Zero-shot CLIP"
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
    """

    out: str = "demo"
    tasks: tuple[str, ...] | None = None
    shots: tuple[int, ...] = (1, 2, 4, 8, 16)
    seeds: tuple[int, ...] = (1, 2, 3)
    workers: int = 2
    task_dir: str | None = None
    epochs: int | None = None
    domain_shift: bool = True

    @classmethod
    def quick(cls, out: str = "demo") -> DemoConfig:
        """One seed, two shot counts, two tasks (one that should gain, one that should tie) + domain shift."""
        return cls(out=out, tasks=("sizes", "shapes"), shots=(1, 4), seeds=(1,))


# --- jobs (run in worker processes) --------------------------------------------------------------------------
_BACKBONE = None


def _backbone():
    global _BACKBONE
    if _BACKBONE is None:
        from vlprompt.backbones import create_backbone

        _BACKBONE = create_backbone("microclip", device="cpu")
    return _BACKBONE


def _worker_init() -> None:
    torch.set_num_threads(1)  # two single-threaded workers use two cores better than one two-threaded process
    logging.getLogger("vlprompt").setLevel(logging.ERROR)


def run_job(job: dict) -> dict:
    """Run one demo job (a run folder): ``kind`` is coop | zeroshot | linear-probe | shift."""
    if job["kind"] == "shift":
        return _shift_job(job)
    out = Path(job["spec"]["out"])
    if (out / "metrics.json").exists():
        return json.loads((out / "metrics.json").read_text())
    spec = RunSpec(**{**job["spec"], "train": TrainConfig(**job["train"])})
    if job["kind"] == "coop":
        from vlprompt.engine.run import train_run

        return train_run(spec, backbone=_backbone())
    if job["kind"] == "zeroshot":
        from vlprompt.engine.run import zeroshot_run

        return zeroshot_run(spec, job["templates"], backbone=_backbone())
    from vlprompt.engine.baselines import linear_probe_run

    return linear_probe_run(spec, backbone=_backbone())


def _shift_job(job: dict) -> dict:
    """Accuracy of a learned prompt (or the zero-shot template) on a domain-shift target's test split."""
    from vlprompt.api import PromptClassifier
    from vlprompt.data import load_dataset
    from vlprompt.data.transforms import build_transform, transform_fingerprint
    from vlprompt.engine import pipeline as P
    from vlprompt.eval.zeroshot import zero_shot_weights

    bb = _backbone()
    target = load_dataset(f"split:{job['target']}")
    if job.get("run"):
        text = PromptClassifier.load(job["run"], backbone=bb, classnames=target.classnames).text_features()
    else:
        text = zero_shot_weights(bb, target.classnames, job["templates"])
    feats = P.cached_features(bb, target.test, transform_fingerprint(bb.preprocess, False),
                              build_transform(bb.preprocess, train=False), dataset=target.name, split="test",
                              root=target.root, precision="fp32", cache_dir=None)
    metrics, _ = P.evaluate_features(text, feats, P.labels_of(target.test), bb.logit_scale)
    return {"accuracy": metrics["accuracy"]}


# --- orchestration ---------------------------------------------------------------------------------------------
def _jobs(cfg: DemoConfig, split_files: dict[str, Path], runs: Path) -> tuple[list[dict], list[dict]]:
    from vlprompt.microclip.tasks import DOMAIN_SHIFT, TASKS

    train = {"augment": "none", "flip": False, "epochs": cfg.epochs}
    jobs: list[dict] = []
    shift: list[dict] = []
    for task in cfg.tasks:
        base = {"dataset": f"split:{split_files[task]}", "backbone": "microclip", "device": "cpu", "cache_dir": None,
                "state_every_seconds": 60.0}  # runs take seconds: per-epoch resume states would only cost fsyncs
        jobs.append({"kind": "zeroshot", "templates": [TASKS[task].template], "train": train,
                     "spec": {**base, "out": str(runs / task / "zeroshot"), "shots": None, "label": ZERO_SHOT}})
        for shots in cfg.shots:
            for seed in cfg.seeds:
                common = {**base, "shots": shots, "seed": seed}
                jobs.append({"kind": "linear-probe", "train": train, "spec": {
                    **common, "out": str(runs / task / "linear_probe" / f"{shots}shots" / f"seed{seed}"),
                    "label": LINEAR_PROBE}})
                for i, (label, learner) in enumerate(VARIANTS.items()):
                    out = runs / task / f"coop{i}" / f"{shots}shots" / f"seed{seed}"
                    jobs.append({"kind": "coop", "train": train,
                                 "spec": {**common, "out": str(out), "learner": learner, "label": label}})
                    if cfg.domain_shift and task in DOMAIN_SHIFT and shots == max(cfg.shots):
                        for target in DOMAIN_SHIFT[task]:
                            shift.append({"kind": "shift", "label": label, "seed": seed, "target_name": target,
                                          "target": str(split_files[target]), "run": str(out)})
        if cfg.domain_shift and task in DOMAIN_SHIFT:
            for target in DOMAIN_SHIFT[task]:
                shift.append({"kind": "shift", "label": ZERO_SHOT, "seed": None, "target_name": target,
                              "target": str(split_files[target]), "templates": [TASKS[task].template]})
    # Longest first, so the pool's tail is short: 16-shot CoOp runs train longest.
    jobs.sort(key=lambda j: -(j["spec"].get("shots") or 0) * (j["kind"] == "coop"))
    return jobs, shift


def _execute(jobs: list[dict], workers: int, desc: str, progress: bool) -> list[dict]:
    from tqdm.auto import tqdm

    results: list[dict | None] = [None] * len(jobs)
    bar = tqdm(total=len(jobs), desc=desc, unit="run", disable=not progress)
    if workers <= 0:
        for i, job in enumerate(jobs):
            results[i] = run_job(job)
            bar.update()
    else:
        import multiprocessing as mp

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_worker_init) as pool:
            futures = {pool.submit(run_job, job): i for i, job in enumerate(jobs)}
            for fut in as_completed(futures):
                results[futures[fut]] = fut.result()
                bar.update()
    bar.close()
    return results  # type: ignore[return-value]


def run_demo(cfg: DemoConfig, progress: bool = True) -> dict:
    """Run the demo and write ``report.md``, ``results.json`` and ``fewshot_curves.png`` into ``cfg.out``."""
    from vlprompt.microclip.tasks import DOMAIN_SHIFT, FEWSHOT_TASKS, TASKS, write_task
    from vlprompt.reports import aggregate, collect_runs
    from vlprompt.reports.plots import plot_fewshot_curves

    t0 = time.perf_counter()
    cfg.tasks = tuple(cfg.tasks or FEWSHOT_TASKS)
    out = Path(cfg.out)
    runs = out / "runs"
    needed = set(cfg.tasks)
    if cfg.domain_shift:
        needed |= {t for s in cfg.tasks for t in DOMAIN_SHIFT.get(s, ())}
    split_files = {name: write_task(name, cfg.task_dir) for name in sorted(needed)}
    jobs, shift_jobs = _jobs(cfg, split_files, runs)
    _execute(jobs, cfg.workers, "demo runs", progress)
    shift_results = _execute(shift_jobs, cfg.workers, "domain shift", progress) if shift_jobs else []

    rows = aggregate(r for r in collect_runs(runs) if r.dataset in cfg.tasks)
    out.mkdir(parents=True, exist_ok=True)
    png = plot_fewshot_curves(rows, out / "fewshot_curves.png")
    shift = _shift_table(shift_jobs, shift_results, rows)
    summary = _summary(rows, cfg)
    elapsed = time.perf_counter() - t0
    results = {
        "config": {"tasks": list(cfg.tasks), "shots": list(cfg.shots), "seeds": list(cfg.seeds),
                   "variants": VARIANTS, "train": {"augment": "none", "flip": False, "epochs": cfg.epochs or "official"},
                   "characters": {t: TASKS[t].character for t in cfg.tasks}},
        "summary": summary,
        "domain_shift": shift,
        "rows": [r.__dict__ for r in rows],
        "seconds": elapsed,
        "files": {"report": str(out / "report.md"), "curves": png},
    }
    atomic_write_json(out / "results.json", results)
    from vlprompt.microclip.demo_report import render_report

    atomic_write_text(out / "report.md", render_report(results, rows))
    return results


def _shift_table(jobs: list[dict], results: list[dict], rows) -> dict:
    """``{label: {target: [acc per seed]}}`` plus the source accuracy at the same shots."""
    table: dict[str, dict[str, list[float]]] = {}
    for job, res in zip(jobs, results, strict=True):
        table.setdefault(job["label"], {}).setdefault(job["target_name"], []).append(res["accuracy"])
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
