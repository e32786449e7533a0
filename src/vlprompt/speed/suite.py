"""Run every benchmark configuration (round-robin, a fresh subprocess each), project a full run, check the
projection end to end, and write ``bench.json`` + ``bench.md``."""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from vlprompt._io import atomic_write_json, atomic_write_text
from vlprompt.speed import worker
from vlprompt.speed.render import render_markdown
from vlprompt.speed.report import analyse

_logger = logging.getLogger(__name__)


@dataclass
class BenchOptions:
    """What to measure. Defaults are the full benchmark of issue 5 (RN50 and ViT-B/16, M = 16, batch 32).

    Attributes:
        backbones: open_clip architectures, built with random weights (speed does not depend on weights).
        classes: class counts to measure per step.
        configs: configurations (see :data:`vlprompt.speed.worker.CONFIGS`), in table order.
        batch, n_ctx, k: batch size, context length M, cached views K.
        chunk: ``text_chunk`` of the ``chunk`` configuration (skipped where it would not split the classes).
        threads, device, precision: torch threads; ``cpu``/``cuda``; ``fp32`` or ``amp`` (bf16 autocast on GPU).
        rounds: steps per configuration in the timing pass (all configurations alternate step by step in one
            process, so they see the same machine load).
        steps: measured steps of the memory pass (each configuration alone in a fresh process).
        warmup, warmup_classes: warm-up steps (with at most ``warmup_classes`` classes) before measuring.
        eval_batch: image batch of feature extraction and of the official test loop.
        memory_limit_gb: per-measurement address-space limit (out of memory is then a recorded result).
        epochs, shots, proj_classes, proj_test, proj_val: the projected run (official schedule; a Caltech101-sized
            test set by default; ``proj_val`` few-shot val images, which vlprompt also encodes).
        e2e_backbone, e2e_epochs, e2e_k, e2e_test_per_class: the measured end-to-end check (``None`` backbone:
            skipped; ``e2e_k``: its cached views, default ``k`` — fewer keep it short on a CPU, and the check
            validates the per-unit costs whatever K).
        subprocess: one fresh process per measurement (honest peak memory); ``False`` runs in-process.
        quick: tiny models and sizes (seconds; for tests).
    """

    backbones: list[str] = field(default_factory=lambda: ["RN50", "ViT-B-16"])
    classes: list[int] = field(default_factory=lambda: [100, 1000])
    configs: list[str] = field(default_factory=lambda: list(worker.CONFIGS))
    batch: int = 32
    n_ctx: int = 16
    k: int = 10
    chunk: int = 100
    threads: int = 2
    device: str = "cpu"
    precision: str = "fp32"
    rounds: int = 3
    steps: int = 1
    warmup: int = 1
    warmup_classes: int = 100
    eval_batch: int = 100
    memory_limit_gb: float | None = 12.0
    epochs: int = 200
    shots: int = 16
    proj_classes: int = 100
    proj_test: int = 2465
    proj_val: int = 400
    e2e_backbone: str | None = "RN50"
    e2e_epochs: int = 2
    e2e_k: int | None = None
    e2e_test_per_class: int = 10
    subprocess: bool = True
    quick: bool = False

    def __post_init__(self) -> None:
        if self.device.startswith("cuda"):  # an address-space limit would break CUDA; GPU memory is measured directly
            self.memory_limit_gb = None
        if self.proj_classes not in self.classes:  # the projection needs per-step times at its class count
            self.proj_classes = min(self.classes)
        if self.e2e_backbone and self.e2e_backbone not in self.backbones:  # its check needs that backbone's costs
            self.e2e_backbone = self.backbones[0]

    @classmethod
    def quick_options(cls, **overrides) -> BenchOptions:
        """Tiny models and sizes: the whole benchmark in seconds (tests use this)."""
        kw = dict(backbones=["vlpbench-tiny-rn", "vlpbench-tiny-vit"], classes=[10, 30], batch=8, n_ctx=4, k=2, chunk=8,
                  rounds=1, steps=1, warmup=1, warmup_classes=10, eval_batch=8, memory_limit_gb=None, epochs=200,
                  shots=4, proj_classes=10, proj_test=40, proj_val=10, e2e_backbone="vlpbench-tiny-rn", e2e_epochs=2,
                  e2e_test_per_class=2, subprocess=False, quick=True)
        kw.update(overrides)
        return cls(**kw)


def _measure(spec: dict, opts: BenchOptions, tmp: Path) -> dict:
    """One measurement, in a fresh subprocess (or in-process when ``opts.subprocess`` is off)."""
    if not opts.subprocess:
        return worker.MEASURES[spec["kind"]](spec)
    spec_path, out_path = tmp / "spec.json", tmp / "out.json"
    out_path.unlink(missing_ok=True)
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": str(opts.threads), "MKL_NUM_THREADS": str(opts.threads)}
    proc = subprocess.run([sys.executable, "-m", "vlprompt.speed.worker", str(spec_path), str(out_path)],
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not out_path.exists():
        tail = " ".join(proc.stderr.split()[-60:])
        oom = proc.returncode in (-9, 137) or "memory" in tail.lower()
        _logger.warning("measurement %s failed (exit %s): %s", spec.get("config", spec["kind"]), proc.returncode, tail)
        return {**{k: spec.get(k) for k in ("kind", "config", "backbone", "classes")}, "oom": oom,
                "error": f"exit {proc.returncode}: {tail[-300:]}", "image_s": [], "text_s": []}
    return json.loads(out_path.read_text())


def _spec(opts: BenchOptions, kind: str, backbone: str, classes: int, model_dir: str | None, **extra) -> dict:
    return {"kind": kind, "backbone": backbone, "classes": classes, "batch": opts.batch, "n_ctx": opts.n_ctx,
            "k": opts.k, "chunk": opts.chunk, "threads": opts.threads, "device": opts.device,
            "precision": opts.precision, "steps": opts.steps, "warmup": opts.warmup,
            "warmup_classes": opts.warmup_classes, "eval_batch": opts.eval_batch, "n_train": opts.shots * classes,
            "memory_limit_gb": opts.memory_limit_gb, "model_config_dir": model_dir, **extra}


def environment(opts: BenchOptions) -> dict:
    """Device, versions, threads and machine load."""
    import open_clip

    from vlprompt import __version__

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    device = opts.device
    if device.startswith("cuda") and torch.cuda.is_available():
        device = f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return {"device": device, "cpu": cpu, "cpu_count": os.cpu_count(), "threads": opts.threads,
            "precision": opts.precision, "torch": torch.__version__, "open_clip": open_clip.__version__,
            "vlprompt": __version__, "python": platform.python_version(), "load_start": os.getloadavg(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S")}


def run_benchmark(opts: BenchOptions, out_dir: str | os.PathLike, command: str = "", progress=None) -> dict:
    """Measure everything ``opts`` asks for and write ``bench.json`` and ``bench.md`` to ``out_dir``.

    Args:
        opts: what to measure.
        out_dir: output folder (created).
        command: the command line that reproduces the run (recorded).
        progress: optional ``callable(str)`` told about each measurement as it starts.

    Returns:
        The ``bench.json`` content.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda msg: _logger.info("%s", msg))
    env = environment(opts)
    res: dict = {"steps": [], "interleaved": [], "onetime": [], "e2e": None}
    t_start = time.perf_counter()

    def save() -> dict:  # after every measurement: a long run leaves partial results
        return _write(out_dir, opts, env, res, command, t_start)

    with tempfile.TemporaryDirectory(prefix="vlprompt-bench-") as tmp:
        tmp = Path(tmp)
        model_dir = None
        if opts.quick:
            model_dir = str(tmp / "configs")
            worker.register_quick_configs(model_dir)

        def onetime(when: str) -> None:
            for bb in opts.backbones:
                say(f"{bb}: one-time costs ({when})")
                res["onetime"].append({**_measure(_spec(opts, "onetime", bb, opts.proj_classes, model_dir), opts, tmp),
                                       "when": when})
                save()

        onetime("before")
        for bb in opts.backbones:
            for n in opts.classes:
                configs = [c for c in opts.configs if not (c == "chunk" and opts.chunk >= n)]  # chunk must split
                for config in configs:  # memory: each configuration alone in a fresh process
                    say(f"{bb}, {n} classes: {config} alone (peak memory)")
                    r = _measure(_spec(opts, "step", bb, n, model_dir, config=config), opts, tmp)
                    res["steps"].append({**r, "config": config, "backbone": bb, "classes": n})
                    save()
                fits = [c for c in configs if not any(m.get("oom") for m in res["steps"] if (m["backbone"], m["classes"],
                        m["config"]) == (bb, n, c))]
                if fits:  # time: the configurations that fit, alternating step by step in one process
                    say(f"{bb}, {n} classes: {', '.join(fits)} interleaved × {opts.rounds} (time)")
                    spec = _spec(opts, "interleaved", bb, n, model_dir, configs=fits, rounds=opts.rounds)
                    res["interleaved"].append(_measure(spec, opts, tmp))
                    save()
        onetime("after")
        if opts.e2e_backbone:
            res["e2e"] = _measure_e2e(opts, model_dir, tmp, say)
    return save()


def _measure_e2e(opts: BenchOptions, model_dir: str | None, tmp: Path, say) -> dict:
    """The end-to-end check: one real ``train_run`` whose measured time is compared with the projection."""
    k = opts.e2e_k or opts.k
    say(f"end-to-end check: {opts.e2e_backbone}, {opts.proj_classes} classes, {opts.e2e_epochs} epochs, cached:{k}")
    spec = _spec(opts, "e2e", opts.e2e_backbone, opts.proj_classes, model_dir, shots=opts.shots, k=k,
                 epochs=opts.e2e_epochs, test_per_class=opts.e2e_test_per_class, memory_limit_gb=None)
    return _measure(spec, opts, tmp)


def _write(out_dir: Path, opts: BenchOptions, env: dict, res: dict, command: str, t_start: float) -> dict:
    env = {**env, "load_end": os.getloadavg(), "bench_seconds": time.perf_counter() - t_start}
    result = {"options": asdict(opts), "environment": env, "command": command, **res}
    result["analysis"] = analyse(result)
    atomic_write_json(out_dir / "bench.json", result)
    atomic_write_text(out_dir / "bench.md", render_markdown(result))
    return result
