"""One prepared GPU check (issue 18): CUDA correctness, a torchrun NCCL smoke run, ImageNet-scale CoOp speed and
memory, and CoCoOp throughput — everything written to ``benchmarks/results/gpu-<device>/`` (``report.md`` +
``gpu_check.json``), each section saved as soon as it finishes, so a run cut short keeps what it measured.

    bash benchmarks/gpu_check.sh             # on a machine with one CUDA GPU (about 8 minutes)
    bash benchmarks/gpu_check.sh --dry-run   # the same code paths on the CPU with tiny sizes (about a minute)

Sections:

1. **Correctness.** On a tiny random QuickGELU CLIP, the logits and the context gradients of CoOp, CoCoOp and
   KgCoOp on the device in fp32, amp (bf16 autocast) and fp16 (the official mode: fp16 weights, fp32 LayerNorm),
   against the CPU in fp32. Deep-prompt and adapter methods do not exist in vlprompt yet (issues 15 and 16); the
   table lists what does.
2. **torchrun NCCL smoke run:** ``torchrun --nproc_per_node 1 -m vlprompt train`` on micro-CLIP with
   ``--device cuda`` (NCCL) on a generated image folder, then ``vlprompt eval`` of its folder.
3. **ImageNet-scale CoOp** (the speed suite of ``vlprompt bench``, :mod:`vlprompt.speed`): ViT-B/16 with random
   weights and QuickGELU (``ViT-B-16-quickgelu``), 1000 classes, M = 16, batch 32, amp; per-step times of the
   official computation and of each exact optimisation side by side, peak GPU memory with and without class
   chunking, the projection of the full 16-shot run (50 epochs, 16,000 train images, 50,000 test images), and one
   complete short run end to end on generated images that checks the projection.
4. **CoCoOp throughput:** a train step at batch 1 (the official recipe) and at batch 32, and evaluation of 100
   images: the official per-image loop at 77 tokens against vlprompt's batched B × C encoding, in images/s.

Goals (issue 18): projected end-to-end 16-shot ImageNet ViT-B/16 CoOp run under 300 s; peak memory under 2 GB
with chunking; amp within float tolerance of fp32.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vlprompt._io import atomic_write_json, atomic_write_text
from vlprompt.backbones import create_backbone
from vlprompt.engine.model import PromptModel
from vlprompt.features.extract import autocast_context
from vlprompt.prompts import create_prompt_learner
from vlprompt.prompts.cocoop import per_image_logits

_logger = logging.getLogger("gpu_check")
ROOT = Path(__file__).resolve().parent
CLASSES = ["abyssinian", "american bulldog", "basset hound", "beagle", "british shorthair", "chihuahua",
           "great pyrenees", "maine coon"]
#: Largest acceptable max |Δ| / max |reference| per precision (fp32: float tolerance; bf16/fp16: their epsilon).
TOLERANCE = {"fp32": 1e-4, "amp": 5e-2, "fp16": 2e-2}


def environment(device: torch.device) -> dict:
    """Device, driver, torch and CUDA versions."""
    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
           "device": str(device), "host_cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["gpu_memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=30)
            env["driver"] = smi.stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            env["driver"] = None
    return env


# --- 1. correctness ------------------------------------------------------------------------------------------------
def _logits_and_grads(method: str, backbone, state: dict | None, img: torch.Tensor, labels: torch.Tensor,
                      precision: str) -> tuple[torch.Tensor, dict, dict]:
    """One training step's logits ``(B, C)`` (fp32) and gradients of every learned tensor; the learner's state."""
    device = backbone.device
    torch.manual_seed(0)
    learner = create_prompt_learner(method, backbone, CLASSES, {"n_ctx": 4} if method == "coop" else {}).to(device)
    if state is None:  # move away from the init so that logits and gradients are not trivial
        with torch.no_grad():
            for p in learner.parameters():
                p.add_(0.02 * torch.randn_like(p))
        state = {k: v.detach().cpu().clone() for k, v in learner.state_dict().items()}
    else:
        learner.load_state_dict({k: v.to(device) for k, v in state.items()})
    model = PromptModel(backbone, learner)
    with torch.no_grad(), autocast_context(device, precision):
        feats = model.image_features(img.to(device))  # (B, E), normalised
    with autocast_context(device, precision):
        loss, logits = model.training_loss(feats, labels.to(device))  # (), (B, C)
    loss.backward()
    grads = {n: p.grad.detach().float().cpu() for n, p in learner.named_parameters() if p.grad is not None}
    return logits.detach().float().cpu(), grads, state


def correctness(device: torch.device, tiny: str) -> list[dict]:
    """Section 1: device fp32/amp/fp16 vs CPU fp32 for every method that exists."""
    rows = []
    g = torch.Generator().manual_seed(0)
    ref_bb = create_backbone(tiny, "random")
    size = ref_bb.preprocess.image_size
    img, labels = torch.randn(4, 3, size, size, generator=g), torch.arange(4) % len(CLASSES)
    for method in ("coop", "cocoop", "kgcoop"):
        ref_logits, ref_grads, state = _logits_and_grads(method, ref_bb, None, img, labels, "fp32")
        for precision in ("fp32", "amp", "fp16"):
            bb = create_backbone(tiny, "random", device=device, precision="fp16" if precision == "fp16" else "fp32")
            logits, grads, _ = _logits_and_grads(method, bb, state, img, labels, precision)
            dlog = ((logits - ref_logits).abs().max() / ref_logits.abs().max()).item()
            dgrad = max(((grads[k] - ref_grads[k]).norm() / ref_grads[k].norm()).item() for k in ref_grads)
            rows.append({"method": method, "precision": precision, "rel_logits": dlog, "rel_grad": dgrad,
                         "tolerance": TOLERANCE[precision],
                         "ok": dlog <= TOLERANCE[precision] and dgrad <= TOLERANCE[precision]})
            _logger.info("correctness %s %s: logits %.1e grad %.1e", method, precision, dlog, dgrad)
    return rows


# --- 2. torchrun smoke run -----------------------------------------------------------------------------------------
def _image_folder(root: Path, classes: int, per_class: int) -> Path:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            px = (torch.rand(3, generator=g) * 255).to(torch.uint8).view(1, 1, 3).expand(32, 32, 3).numpy()
            Image.fromarray(px).save(root / f"class{c}" / f"{i}.png")
    return root


def torchrun_smoke(device: torch.device, tmp: Path) -> dict:
    """Section 2: a 1-process torchrun training run (NCCL on CUDA, gloo on the CPU) and an eval of its folder."""
    data, out = _image_folder(tmp / "smoke-data", 3, 6), tmp / "smoke-run"
    dev = "cuda" if device.type == "cuda" else "cpu"
    train = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m", "vlprompt",
             "train", "--dataset", f"folder:{data}", "--shots", "2", "--epochs", "2", "--backbone", "microclip",
             "--device", dev, "--augment", "none", "--cache-dir", "", "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(train, capture_output=True, text=True, timeout=300)
    result = {"command": " ".join(train[2:]), "returncode": proc.returncode, "seconds": time.perf_counter() - t0,
              "stderr_tail": proc.stderr[-2000:]}
    if proc.returncode == 0:
        ev = subprocess.run([sys.executable, "-m", "vlprompt", "eval", "--run", str(out), "--dataset",
                             f"folder:{data}", "--device", dev, "--out", str(tmp / "smoke-eval"), "--cache-dir", ""],
                            capture_output=True, text=True, timeout=300)
        result["eval_returncode"] = ev.returncode
        result["accuracy"] = json.loads((out / "metrics.json").read_text())["accuracy"]
        result["ok"] = ev.returncode == 0
    else:
        result["ok"] = False
    return result


# --- 3. ImageNet-scale CoOp ----------------------------------------------------------------------------------------
def imagenet_scale(device: torch.device, out_dir: Path, dry: bool) -> dict:
    """Section 3: the speed suite at ImageNet scale (its own bench.md/bench.json under ``out_dir/imagenet``)."""
    from vlprompt.speed import BenchOptions, run_benchmark

    if dry:
        opts = BenchOptions.quick_options(device=str(device), precision="fp32", epochs=2)
    else:
        opts = BenchOptions(backbones=["ViT-B-16-quickgelu"], classes=[1000], device=str(device), precision="amp",
                            rounds=3, steps=2, warmup=2, warmup_classes=1000, eval_batch=500, epochs=50, shots=16,
                            proj_classes=1000, proj_test=50000, proj_val=0, e2e_backbone="ViT-B-16-quickgelu",
                            e2e_epochs=1, e2e_k=1, e2e_test_per_class=2, chunk=100)
    return run_benchmark(opts, out_dir / "imagenet", command="benchmarks/gpu_check.py (section 3)")


# --- 4. CoCoOp throughput ------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cocoop_throughput(device: torch.device, backbone_name: str, classes: int, reps: int) -> list[dict]:
    """Section 4: images/s of the official per-image loop vs vlprompt's batched CoCoOp (train step and eval)."""
    from vlprompt.prompts import CoCoOp, CoCoOpConfig

    bb = create_backbone(backbone_name, "random", device=device)
    names = [f"class {i}" for i in range(classes)]
    fast, official = CoCoOp(bb, names).to(device), CoCoOp(bb, names, CoCoOpConfig(truncate=False)).to(device)
    official.load_state_dict(fast.state_dict())
    model = PromptModel(bb, fast)
    configs = {"official per-image loop, 77 tokens": (lambda x: per_image_logits(bb, official, x), official),
               "vlprompt batched B×C, truncated": (model.logits, fast)}
    rows = []
    for task, b, train in (("train step, batch 1", 1, True), ("train step, batch 32", 32, True),
                           ("evaluate 100 images", 100, False)):
        x = F.normalize(torch.randn(b, bb.embed_dim, device=device), dim=-1)  # (B, E) image features
        y = torch.arange(b, device=device) % classes
        for name, (fn, learner) in configs.items():
            best = float("inf")
            for rep in range(reps + 1):  # repetition 0 warms up kernels and the allocator, and is not counted
                learner.zero_grad(set_to_none=True)
                _sync(device)
                t0 = time.perf_counter()
                if train:
                    F.cross_entropy(fn(x), y).backward()
                else:
                    with torch.no_grad():
                        fn(x)
                _sync(device)
                if rep:
                    best = min(best, time.perf_counter() - t0)
            rows.append({"task": task, "config": name, "seconds": best, "images_per_s": b / best})
            _logger.info("cocoop %s | %s: %.4f s", task, name, best)
    return rows


# --- report --------------------------------------------------------------------------------------------------------
def render(res: dict) -> str:
    """The Markdown report of whatever sections have finished."""
    env = res["environment"]
    lines = ["# GPU check (issue 18)", "", f"Command: `{res['command']}`", "",
             "Environment: " + ", ".join(f"{k} {v}" for k, v in env.items()), ""]
    if "correctness" in res:
        lines += ["## 1. CUDA correctness vs CPU fp32 (tiny random QuickGELU CLIP)", "",
                  "| method | precision | max rel. Δ logits | max rel. Δ gradient | tolerance | ok |", "|---|---|---:|---:|---:|---|"]
        lines += [f"| {r['method']} | {r['precision']} | {r['rel_logits']:.1e} | {r['rel_grad']:.1e} | "
                  f"{r['tolerance']:.0e} | {'yes' if r['ok'] else '**no**'} |" for r in res["correctness"]]
        lines += ["", "Deep-prompt (issue 15) and adapter (issue 16) methods do not exist yet.", ""]
    if "torchrun" in res:
        t = res["torchrun"]
        lines += ["## 2. torchrun smoke run", "", f"`{t['command']}` → exit {t['returncode']} in {t['seconds']:.1f} s"
                  + (f", accuracy {t['accuracy']:.1f}%, eval exit {t['eval_returncode']}" if "accuracy" in t else ""), ""]
    if "imagenet" in res:
        lines += ["## 3. ImageNet-scale CoOp", "", "Full tables: `imagenet/bench.md`.", ""]
        targets = res["imagenet"].get("analysis", {}).get("targets", [])
        lines += [f"- {t['backbone']}: {t['target']}: "
                  + ("–" if t["value"] is None else f"{t['value']:.2f}×") for t in targets]
        lines.append("")
    if "cocoop" in res:
        lines += ["## 4. CoCoOp throughput", "", "| task | configuration | s | images/s |", "|---|---|---:|---:|"]
        lines += [f"| {r['task']} | {r['config']} | {r['seconds']:.4f} | {r['images_per_s']:.1f} |"
                  for r in res["cocoop"]]
        lines.append("")
    for name, err in res.get("errors", {}).items():
        lines += [f"**Section {name} failed:** {err}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run every section, saving the report after each one."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="the CPU with tiny sizes (checks the script itself)")
    p.add_argument("--out", default=None, help="output folder (default benchmarks/results/gpu-<device>)")
    p.add_argument("--sections", default="1,2,3,4", help="comma-separated sections to run (default all)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if not args.dry_run and not torch.cuda.is_available():
        p.error("no CUDA device: run on a GPU machine, or pass --dry-run for the CPU check of the script")
    device = torch.device("cpu" if args.dry_run else "cuda")
    tag = "dryrun-cpu" if args.dry_run else torch.cuda.get_device_name(device).replace(" ", "-").lower()
    out = Path(args.out or ROOT / "results" / f"gpu-{tag}")
    out.mkdir(parents=True, exist_ok=True)
    res: dict = {"command": "python benchmarks/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                 "environment": environment(device), "errors": {}}
    sections = set(args.sections.split(","))

    def save() -> None:
        atomic_write_json(out / "gpu_check.json", res)
        atomic_write_text(out / "report.md", render(res))

    from vlprompt.speed.worker import register_quick_configs

    with tempfile.TemporaryDirectory(prefix="vlprompt-gpu-check-") as tmp:
        register_quick_configs(Path(tmp) / "configs")  # the tiny architectures of section 1 (and dry runs)
        steps = {"1": ("correctness", lambda: correctness(device, "vlpbench-tiny-vit")),
                 "2": ("torchrun", lambda: torchrun_smoke(device, Path(tmp))),
                 "3": ("imagenet", lambda: imagenet_scale(device, out, args.dry_run)),
                 "4": ("cocoop", lambda: cocoop_throughput(device, "vlpbench-tiny-vit" if args.dry_run else "ViT-B-16",
                                                           8 if args.dry_run else 100, 1 if args.dry_run else 3))}
        for key, (name, fn) in steps.items():
            if key not in sections:
                continue
            t0 = time.perf_counter()
            try:
                res[name] = fn()
            except Exception as e:  # a failed section is a result; the others still run
                _logger.exception("section %s failed", name)
                res["errors"][name] = f"{type(e).__name__}: {e}"
            res.setdefault("seconds", {})[name] = time.perf_counter() - t0
            save()
    print(f"report: {out / 'report.md'}")
    ok = not res["errors"] and all(r["ok"] for r in res.get("correctness", [])) and res.get("torchrun", {}).get("ok", True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
