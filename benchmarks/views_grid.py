"""Augmented views in the feature cache, before and after (issue 16): a 3-method × 3-seed ``--augment cached:K`` grid
on one micro-CLIP task, git main's view path and the cached one side by side in one process.

- **before** — git main's ``--augment cached:K`` (``engine/run.py`` ``_train_batches`` at 391243b): every run
  encodes its K views again (K passes of the train transform over its training images, drawn from the global RNG,
  never stored). Reproduced here by replacing :func:`vlprompt.engine.pipeline.cached_views` with that loop.
- **after** — this branch: :func:`vlprompt.engine.pipeline.cached_views`, one cache entry per view, keyed by the
  images, view index and augmentation seed (= the run's seed); the three methods of a seed train on the same
  few-shot images, so the first one encodes the views and the other two read them.
- **after, re-run** — each job again on the warm cache, right after its "after" run (a restarted grid, another
  learning rate, a later method on the same subsets): no view is encoded.

The three phases of a job run back to back (one machine load for all three); "before" has its own test/val
feature cache, warmed by its first run, as in main. Image-encoder passes are counted by wrapping ``encode_image`` (images encoded, total
and inside the view step); "views s" is the wall time of the view step alone, "wall s" the whole ``train_run``
(training, evaluation, run-folder writes). CoOp M = 16 (random init), CoOp M = 4 from "a photo of a", KgCoOp (its
defaults): official optimiser, schedule and epochs for 16 shots unless ``--epochs``.

    python benchmarks/views_grid.py --out benchmarks/results/views-cache
"""

from __future__ import annotations

import argparse
import contextlib
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
from vlprompt.engine import pipeline as P
from vlprompt.engine.config import TrainConfig
from vlprompt.engine.run import RunSpec, train_run
from vlprompt.microclip.tasks import write_task

METHODS = {  # label → (method, learner options)
    "CoOp M=16": ("coop", {"n_ctx": 16}),
    "CoOp M=4 init": ("coop", {"ctx_init": "a photo of a"}),
    "KgCoOp": ("kgcoop", {}),
}
PHASES = ("before", "after", "after, re-run")
REAL_CACHED_VIEWS = P.cached_views


def main_views(backbone, records, *, num_views: int, crop_scale, flip: bool, precision: str, batch_size: int,
               **_ignored) -> torch.Tensor:
    """git main's view step: ``num_views`` passes of the train transform over ``records`` from the global RNG,
    never cached: ``[V, N, E]`` unnormalised (main normalised each view before stacking; the run does it here)."""
    from vlprompt.data.transforms import build_transform

    tf = build_transform(backbone.preprocess, train=True, flip=flip, crop_scale=crop_scale)
    return torch.stack([P.extract_features(backbone, records, tf, batch_size=batch_size, precision=precision)
                        for _ in range(num_views)])


class Meter:
    """Counts the images ``backbone.encode_image`` encodes, in total and inside the view step, and times the step."""

    def __init__(self, backbone) -> None:
        self.total = self.views = 0
        self.view_seconds = 0.0
        self._in_views = False
        real = backbone.encode_image

        def counted(images):
            self.total += int(images.shape[0])
            self.views += int(images.shape[0]) if self._in_views else 0
            return real(images)

        backbone.encode_image = counted

    def wrap(self, fn):
        def timed(*a, **k):
            self._in_views, t0 = True, time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self._in_views, self.view_seconds = False, self.view_seconds + time.perf_counter() - t0

        return timed

    @contextlib.contextmanager
    def phase(self, views_fn):
        P.cached_views = self.wrap(views_fn)
        self.total = self.views = 0
        self.view_seconds = 0.0
        try:
            yield self
        finally:
            P.cached_views = REAL_CACHED_VIEWS


def run_job(meter: Meter, bb, phase: str, label: str, seed: int, a, work: Path, split: Path) -> dict:
    """One ``train_run`` of ``label`` on ``seed`` in ``phase``; its row."""
    method, learner = METHODS[label]
    cache = work / ("cache-before" if phase == "before" else "cache-after")
    spec = RunSpec(dataset=f"split:{split}", backbone="microclip", pretrained="v1", device="cpu", cache_dir=str(cache),
                   overwrite=True, state_every_seconds=3600.0, shots=a.shots, seed=seed, method=method,
                   learner=learner, out=str(work / "runs" / phase.replace(", ", "-") / label.replace(" ", "_")
                                         / f"seed{seed}"),
                   train=TrainConfig(augment=f"cached:{a.k}", epochs=a.epochs))
    with meter.phase(main_views if phase == "before" else REAL_CACHED_VIEWS):
        t0 = time.perf_counter()
        m = train_run(spec, backbone=bb)
        wall = time.perf_counter() - t0
        row = {"phase": phase, "method": label, "seed": seed, "accuracy": m["accuracy"], "wall_s": wall,
               "views_s": meter.view_seconds, "encoded_images": meter.total, "encoded_view_images": meter.views}
    print(f"{phase:14s} {label:14s} seed {seed}: {m['accuracy']:5.1f}%  wall {wall:6.1f} s  views "
          f"{row['views_s']:5.2f} s  encoded {meter.total} ({meter.views} view images)", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    """Run the grid in every phase; write ``views_grid.{json,md}`` into ``--out``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder for views_grid.json and .md")
    p.add_argument("--task", default="shapes", help="micro-CLIP task (its labels survive a random crop)")
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--shots", type=int, default=16)
    p.add_argument("--k", type=int, default=10, help="cached views K")
    p.add_argument("--epochs", type=int, default=None, help="default: each method's official epochs")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", default=None, help="folder for task images, caches and run folders (default: temporary)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(a.threads)
    seeds = [int(s) for s in a.seeds.split(",") if s]
    work = Path(a.work or tempfile.mkdtemp(prefix="vlprompt-views-grid-"))
    split = write_task(a.task, work / "tasks")
    bb = create_backbone("microclip", "v1", device="cpu")  # world v1's task: the model pretrained on world v1
    meter, rows, t_start = Meter(bb), [], time.perf_counter()
    jobs = [(label, seed) for seed in seeds for label in METHODS]
    for label, seed in jobs:  # the phases of a job back to back: the same machine load for all three
        for phase in PHASES:
            rows.append(run_job(meter, bb, phase, label, seed, a, work, split))
    result = {"command": "python benchmarks/views_grid.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "task": a.task, "seeds": seeds, "shots": a.shots, "k": a.k, "epochs": a.epochs, "threads": a.threads,
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs",
              "load_avg_end": os.getloadavg()[0], "seconds": time.perf_counter() - t_start, "rows": rows}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "views_grid.json", result)
    atomic_write_text(out / "views_grid.md", render(result))
    print(render(result))
    return 0


def _sum(rows: list[dict], phase: str, key: str) -> float:
    return sum(r[key] for r in rows if r["phase"] == phase)


def render(result: dict) -> str:
    """Markdown: per phase the totals over the grid and their ratio to ``before``; per method the accuracy."""
    rows = result["rows"]
    n = len({(r["method"], r["seed"]) for r in rows})
    lines = ["# `--augment cached:K` views in the feature cache: a grid before and after", "",
             f"micro-CLIP task `{result['task']}`, {result['shots']} shots, K = {result['k']}, "
             f"{len(METHODS)} methods × {len(result['seeds'])} seeds = {n} runs per phase, epochs "
             f"{result['epochs'] or 'official'}, {result['threads']} torch thread(s), {result['machine']} (load "
             f"average at the end {result['load_avg_end']:.1f}); total {result['seconds'] / 60:.1f} min. Ratios are "
             "after / before, measured in this one run.", "",
             "| phase | images encoded | of them views | view step s | grid wall s | encoded ratio | views ratio | "
             "view-step time ratio | wall ratio |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    base = {k: _sum(rows, "before", k) for k in ("encoded_images", "encoded_view_images", "views_s", "wall_s")}
    for phase in PHASES:
        s = {k: _sum(rows, phase, k) for k in base}
        ratios = " | ".join(f"{s[k] / base[k]:.3f}" if base[k] else "–" for k in base)
        lines.append(f"| {phase} | {s['encoded_images']:.0f} | {s['encoded_view_images']:.0f} | {s['views_s']:.1f} | "
                     f"{s['wall_s']:.1f} | {ratios} |")
    lines += ["", "Test accuracy (%, mean ± population std over seeds); the crops differ before/after (main drew them "
              "from the global RNG, the cache seeds each (view, image)), and the re-run reads the very views of "
              "'after':", "", "| method | " + " | ".join(PHASES) + " |", "|---|" + "---:|" * len(PHASES)]
    for label in METHODS:
        cells = []
        for phase in PHASES:
            acc = [r["accuracy"] for r in rows if r["phase"] == phase and r["method"] == label]
            cells.append(f"{statistics.fmean(acc):.1f} ± {statistics.pstdev(acc):.1f}" if acc else "–")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", f"Command: `{result['command']}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
