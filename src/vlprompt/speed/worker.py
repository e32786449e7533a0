"""Measure one benchmark configuration: ``python -m vlprompt.speed.worker SPEC.json OUT.json``.

Run in a fresh process per configuration, so that its peak memory is its own (a torch process never gives memory
back to a later measurement's baseline). CPU peak memory is the kernel's peak resident set (``VmHWM``, reset through
``/proc/self/clear_refs`` right before the first step); CUDA peak memory is ``torch.cuda.max_memory_allocated``.
An optional address-space limit (``RLIMIT_DATA``) turns running out of memory into a recorded result instead of
the kernel's OOM killer.

Kinds of measurement (``spec["kind"]``): ``step`` (peak memory and step times of one configuration alone),
``interleaved`` (step times of several configurations alternating step by step in one process), ``onetime`` (image-encoding throughput, evaluation text features, image loading), ``e2e`` (a real ``train_run``
on a generated image folder).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

# CONFIGS, classnames and register_quick_configs are re-exported (cli/bench.py, benchmarks/).
from vlprompt.speed.common import (  # noqa: F401 - re-exported
    CONFIGS,
    QUICK_CONFIGS,
    build_model,
    classnames,
    register_quick_configs,
    setup,
    sync,
)


class MemoryMeter:
    """Peak memory of the current process since :meth:`reset`, in MiB."""

    def __init__(self, device: torch.device):
        self.device = device

    def rss_mb(self) -> float:
        """Current resident set (CPU) or allocated memory (CUDA)."""
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device) / 2**20
        return _status_kb("VmRSS") / 1024

    def reset(self) -> None:  # noqa: D102
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        except OSError:
            pass

    def peak_mb(self) -> float:  # noqa: D102
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return _status_kb("VmHWM") / 1024


def _status_kb(field: str) -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def _is_oom(e: BaseException) -> bool:
    text = str(e).lower()
    return isinstance(e, MemoryError) or "out of memory" in text or "can't allocate memory" in text


def _endless(batches):
    """Epoch after epoch of a re-iterable batch source."""
    while True:
        yield from batches


class _Inputs:
    """Inputs shared by every configuration of one measurement: an image batch and, for cached:K, a feature bank."""

    def __init__(self, backbone, spec: dict):
        from vlprompt.engine.fit import FeatureBankBatches

        b, size = spec["batch"], backbone.preprocess.image_size
        self.device = backbone.device
        self.images = torch.randn(b, 3, size, size, device=self.device)  # the encoder's cost ignores the pixels
        self.gen = torch.Generator().manual_seed(0)
        bank = F.normalize(torch.randn(spec["k"], spec["n_train"], backbone.embed_dim), dim=-1).to(self.device)
        labels = torch.randint(spec["classes"], (spec["n_train"],), generator=self.gen)
        self.bank = _endless(FeatureBankBatches(bank, labels, b, self.gen))


class _Stepper:
    """One configuration's training step (real model, SGD optimiser, CE loss) on shared inputs."""

    def __init__(self, backbone, spec: dict, config: str, n_classes: int, inputs: _Inputs):
        self.cfg, self.spec, self.n, self.inputs = CONFIGS[config], spec, n_classes, inputs
        self.model, self.opt = build_model(backbone, spec, n_classes, config)

    def __call__(self, record: dict | None = None) -> None:
        """Run one step; append its image-side and text-side wall-clock and CPU seconds (all threads of the process)
        to ``record`` (image side first, so it is kept if the text side then runs out of memory)."""
        from vlprompt.features.extract import autocast_context

        device, precision, inputs = self.inputs.device, self.spec["precision"], self.inputs
        labels = torch.randint(self.n, (self.spec["batch"],), generator=inputs.gen).to(device)
        sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        if self.cfg["image"] == "cached":
            img = next(inputs.bank)[0]  # (B, E) lookup
        else:
            with torch.no_grad(), autocast_context(device, precision):
                img = self.model.image_features(inputs.images)  # (B, E)
        sync(device)
        t1, c1 = time.perf_counter(), time.process_time()
        if record is not None:
            record["image_s"].append(t1 - t0)
            record["image_cpu_s"].append(c1 - c0)
        with autocast_context(device, precision):
            loss = F.cross_entropy(self.model.logits(img).float(), labels)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        sync(device)
        if record is not None:
            record["text_s"].append(time.perf_counter() - t1)
            record["text_cpu_s"].append(time.process_time() - c1)


def _oom_message(e: BaseException) -> str:
    if not _is_oom(e):
        raise e
    return " ".join(str(e).split())[:300]


def measure_steps(spec: dict) -> dict:
    """Peak memory (and step times) of ``spec["config"]`` alone: run in a fresh process."""
    device, backbone = setup(spec)
    n = spec["classes"]
    meter = MemoryMeter(device)
    inputs = _Inputs(backbone, spec)
    stepper = _Stepper(backbone, spec, spec["config"], n, inputs)
    warm = _Stepper(backbone, spec, spec["config"], min(n, spec["warmup_classes"]), inputs)
    out = {"kind": "step", "config": spec["config"], "backbone": spec["backbone"], "classes": n,
           "seq_len": int(stepper.model.learner.fixed_embeds.shape[1]), "text_path": stepper.model.text_path(),
           "model_mb": meter.rss_mb(), "image_s": [], "text_s": [], "image_cpu_s": [], "text_cpu_s": [],
           "oom": False, "error": None,
           "load_before": os.getloadavg()[0]}
    meter.reset()
    try:
        for _ in range(spec["warmup"]):
            warm()
        del warm
        for _ in range(spec["steps"]):
            stepper(out)
    except (RuntimeError, MemoryError) as e:
        out.update(oom=True, error=_oom_message(e))
    out["peak_mb"] = meter.peak_mb()
    out["load_after"] = os.getloadavg()[0]
    return out


def measure_interleaved(spec: dict) -> dict:
    """Step times of several configurations in one process, interleaved step by step (``A B C A B C …``), so that
    every configuration sees the same machine load: the ratios between them are what this is for."""
    device, backbone = setup(spec)
    n = spec["classes"]
    inputs = _Inputs(backbone, spec)
    steppers = {c: _Stepper(backbone, spec, c, n, inputs) for c in spec["configs"]}
    samples = {c: {"image_s": [], "text_s": [], "image_cpu_s": [], "text_cpu_s": [], "oom": False, "error": None}
               for c in spec["configs"]}
    load = [os.getloadavg()[0]]
    for c in spec["configs"]:
        try:
            for _ in range(spec["warmup"]):
                _Stepper(backbone, spec, c, min(n, spec["warmup_classes"]), inputs)()
        except (RuntimeError, MemoryError) as e:
            samples[c].update(oom=True, error=_oom_message(e))
    for _ in range(spec["rounds"]):
        for c, stepper in steppers.items():
            if samples[c]["oom"]:
                continue
            try:
                stepper(samples[c])
            except (RuntimeError, MemoryError) as e:
                samples[c].update(oom=True, error=_oom_message(e))
        load.append(os.getloadavg()[0])
    return {"kind": "interleaved", "backbone": spec["backbone"], "classes": n, "samples": samples, "load": load}


def measure_onetime(spec: dict) -> dict:  # noqa: D103 - see vlprompt.speed.onetime
    from vlprompt.speed.onetime import measure_onetime as measure

    return measure(spec)


def measure_e2e(spec: dict) -> dict:  # noqa: D103 - see vlprompt.speed.onetime
    from vlprompt.speed.onetime import measure_e2e as measure

    return measure(spec)


MEASURES = {"step": measure_steps, "interleaved": measure_interleaved, "onetime": measure_onetime,
            "e2e": measure_e2e}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the subprocess: read the spec, measure, write the result JSON."""
    from vlprompt._io import atomic_write_json

    spec_path, out_path = (argv or sys.argv[1:])[:2]
    spec = json.loads(Path(spec_path).read_text())
    if spec.get("memory_limit_gb"):
        limit = int(spec["memory_limit_gb"] * 2**30)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    atomic_write_json(out_path, MEASURES[spec["kind"]](spec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
