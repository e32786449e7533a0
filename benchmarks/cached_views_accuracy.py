"""Accuracy effect of ``--augment cached:K`` next to its speed-up, on the micro-CLIP tasks (issue 5).

``--augment online`` (the official behaviour) runs the image encoder on freshly augmented images at every step;
``cached:K`` encodes K augmented views of every training image once and draws one view per image per epoch. This
script trains CoOp (M = 16, the official recipe and epochs, 16 shots) with both on micro-CLIP tasks whose labels
survive the official random crop and flip (shape and colour tasks; a crop destroys the labels of the position and
size tasks), side by side in one process, and reports test accuracy (mean ± population std over seeds) and the
training wall time (feature caches and view banks included, test features warmed by the zero-shot run first).
``--augment none`` (the test transform for training, what ``vlprompt demo`` uses) is a third reference row.

    python benchmarks/cached_views_accuracy.py --out benchmarks/results/cpu-2threads   # a few minutes, 1 thread
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from vlprompt._io import atomic_write_json, atomic_write_text
from vlprompt.backbones import create_backbone
from vlprompt.engine.config import TrainConfig
from vlprompt.engine.run import RunSpec, train_run, zeroshot_run
from vlprompt.microclip.tasks import TASKS, write_task


def _mean_std(xs: list[float]) -> str:
    return f"{statistics.fmean(xs):.1f} ± {statistics.pstdev(xs):.1f}"


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and write ``cached_views_accuracy.{json,md}`` into ``--out``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder for cached_views_accuracy.json and .md")
    p.add_argument("--tasks", default="sketch_shapes,shapes,colour_shapes", help="micro-CLIP tasks (comma-separated)")
    p.add_argument("--seeds", default="1,2", help="seeds (comma-separated)")
    p.add_argument("--shots", type=int, default=16)
    p.add_argument("--k", type=int, default=10, help="cached views K")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", default=None, help="folder for task images, caches and run folders (default: temporary)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(a.threads)
    tasks = [t for t in a.tasks.split(",") if t]
    seeds = [int(s) for s in a.seeds.split(",") if s]
    modes = ["online", f"cached:{a.k}", "none"]
    work = Path(a.work or tempfile.mkdtemp(prefix="vlprompt-cachedk-"))
    bb = create_backbone("microclip", "v1", device="cpu")  # world v1's tasks: the model pretrained on world v1
    rows, zeroshot = [], {}
    t_start = time.perf_counter()
    for task in tasks:
        split = write_task(task, work / "tasks")
        base = dict(dataset=f"split:{split}", backbone="microclip", pretrained="v1", device="cpu",
                    cache_dir=str(work / "cache"), overwrite=True, state_every_seconds=3600.0)
        zs = zeroshot_run(RunSpec(**base, out=str(work / "runs" / task / "zeroshot"), shots=None),
                          [TASKS[task].template], backbone=bb)  # also warms the test-feature cache
        zeroshot[task] = zs["accuracy"]
        for seed in seeds:
            for mode in modes:  # modes alternate within a seed, so they see the same machine load
                spec = RunSpec(**base, out=str(work / "runs" / task / mode.replace(":", "") / f"seed{seed}"),
                               shots=a.shots, seed=seed, learner={"n_ctx": 16}, train=TrainConfig(augment=mode))
                m = train_run(spec, backbone=bb)
                rows.append({"task": task, "mode": mode, "seed": seed, "accuracy": m["accuracy"],
                             "train_seconds": m["train_seconds"]})
                print(f"{task} {mode} seed {seed}: {m['accuracy']:.1f}% in {m['train_seconds']:.1f} s", flush=True)
    result = {"command": "python benchmarks/cached_views_accuracy.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "tasks": tasks, "seeds": seeds, "shots": a.shots, "k": a.k, "threads": a.threads,
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs",
              "load_avg_end": os.getloadavg()[0], "seconds": time.perf_counter() - t_start, "zeroshot": zeroshot,
              "rows": rows}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "cached_views_accuracy.json", result)
    atomic_write_text(out / "cached_views_accuracy.md", render(result, modes))
    print(render(result, modes))
    return 0


def render(result: dict, modes: list[str]) -> str:
    """Markdown table: per task and mode, accuracy mean ± std and training time; speed-up vs ``online``."""
    lines = [
        "# `--augment cached:K` vs online augmentation on the micro-CLIP tasks", "",
        f"CoOp M = 16 (random init), {result['shots']} shots, official optimiser, schedule and epochs, micro-CLIP "
        f"shipped checkpoint, {result['threads']} torch thread(s), seeds {result['seeds']}; K = {result['k']}. "
        "Train time includes building the view bank (cached:K) and image loading/augmentation (online). "
        f"Total wall time {result['seconds'] / 60:.1f} min.", "",
        "| task | zero-shot | augment | test accuracy (%) | train s (mean) | train speed-up vs online |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for task in result["tasks"]:
        base = [r["train_seconds"] for r in result["rows"] if r["task"] == task and r["mode"] == "online"]
        for mode in modes:
            sel = [r for r in result["rows"] if r["task"] == task and r["mode"] == mode]
            if not sel:
                continue
            secs = statistics.fmean(r["train_seconds"] for r in sel)
            speed = f"{statistics.fmean(base) / secs:.1f}×" if base else "–"
            lines.append(f"| {task} | {result['zeroshot'][task]:.1f} | {mode} | "
                         f"{_mean_std([r['accuracy'] for r in sel])} | {secs:.1f} | {speed} |")
    lines += ["", f"Command: `{result['command']}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
