"""Deep prompts per training step (issue 15, "Speed"): the official computation vs vlprompt, side by side.

One *training step* = forward of both towers, loss, backward, SGD step (momentum 0.9, weight decay 5e-4, the
method's official lr), batch 4 images of 224×224, on a random-weight open_clip ``ViT-B-16`` (text 512 wide × 12
blocks, vision 768 × 12), 2 CPU threads, for MaPLe-shaped and PromptSRC-shaped prompts at 100 and 1000 classes.

- **official**: what the official ``CustomCLIP`` computes (``muzairkhattak/multimodal-prompt-learning@69bce21``
  ``trainers/maple.py``, ``muzairkhattak/PromptSRC@bb95c77`` ``trainers/promptsrc.py``: ``prompts =
  prompt_learner()``; ``text_encoder(prompts, tokenized_prompts)`` on every class's full 77-token prompt at once,
  the deep tokens replacing positions ``1…n_t`` before each deeper block; ``image_encoder`` with the vision tokens;
  all with autograd, nothing cached). Run through the backbone hook as
  ``PromptModel(backbone, learner, shared_prefix=False, length_buckets=False, text_chunk=None)`` with the learner's
  ``truncate=False``: every text block sees ``C × 77`` positions in one call (the exactness check counts them), and
  the hook's blocks are proven equal to the official IVLP/MaPLe blocks by ``tests/fidelity/test_deep_prompt_figures.py``.
- **vlprompt**: the default ``PromptModel`` path: EOS truncation, length buckets, the shared prefix (SOS + the
  context, the deep text tokens inside it: encoded once per step), and at ≥ ``--chunk-from`` classes
  ``text_chunk`` (``--text-chunk``) with activation checkpointing.

PromptSRC's per-step extras count on both sides as the official trainer does them: the frozen image tower on the
batch under ``no_grad`` and the L1/KL terms against cached frozen text features (computed once, not per step).

Learners: ``--method maple|promptsrc`` uses the registered learner of that name when there is one
(:func:`vlprompt.prompts.get_prompt_learner_class`); otherwise a stand-in of the same shape built on
:class:`vlprompt.prompts.deep.IndependentDeepPrompts` (MaPLe: 2 text tokens from "a photo of a", depth 9, 2 vision
tokens per layer — MaPLe's vision tokens are linear maps of its text tokens, a negligible cost next to the towers;
PromptSRC: 4 + 4 tokens, depth 9, with the official loss terms). Each row names the learner class it used.
``--half-tokens`` keeps the official fp16 rounding of the deep tokens (off by default: with it the shared prefix
rounds the text tokens' gradient once for all classes instead of once per class, so gradients would differ at
fp16 precision; logits are equal either way).

Each timing/memory configuration runs in its own child process (peak RSS = ``ru_maxrss``), capped by
``RLIMIT_AS`` and an RSS watchdog at ``--mem-cap-gb``. The official computation keeps ``C × 77 × 12`` blocks of
activations; what cannot fit under the cap is not run: the official side is measured at ``--official-classes``
(each only if the linear fit of the earlier ones predicts it fits) and its 1000-class time and memory are *projected*
linearly (least squares over the measured class counts), labelled so. The exactness check (one step from identical
parameters: logits at init, every gradient, logits after the step, max |Δ|) runs in its own child at
``--exact-classes``, for the vlprompt path with and without ``text_chunk``; at ``--logits-classes`` (1000), where
the official step cannot run, the logits at init are compared without autograd (the official full-length prompts
encoded 100 classes at a time: the same computation row by row).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/deep_prompts_speed.py --out benchmarks/results/deep-prompts-speed
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vlprompt.prompts.deep import IndependentDeepPrompts

#: The official shapes and SGD learning rates (MaPLe ``configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml``;
#: PromptSRC ``configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml``, with its loss weights).
METHODS = {
    "maple": {"n_ctx": 2, "n_ctx_vision": 2, "depth": 9, "lr": 0.0035, "src_terms": False},
    "promptsrc": {"n_ctx": 4, "n_ctx_vision": 4, "depth": 9, "lr": 0.0025, "src_terms": True,
                  "text_loss_weight": 25.0, "image_loss_weight": 10.0},
}
TINY = "vlpbench-deep-tiny"  # a 3 + 3 block ViT CLIP for the quick test
TINY_CONFIG = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 3, "width": 64, "patch_size": 16},
               "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 3}}
GB = 2**30
NOTES = "<!-- notes: kept by --render -->"


def backbone_of(name: str):
    """The random-weight backbone (``TINY`` is registered with open_clip on first use)."""
    from vlprompt.backbones import create_backbone

    if name == TINY:
        import tempfile

        import open_clip

        folder = Path(tempfile.mkdtemp(prefix="vlpbench-deep-"))
        (folder / f"{TINY}.json").write_text(json.dumps(TINY_CONFIG))
        open_clip.add_model_config(str(folder))
    return create_backbone(name, "random")


class PromptSRCShape(IndependentDeepPrompts):
    """PromptSRC's shape (:class:`IndependentDeepPrompts`) with its per-step terms as the official trainer computes
    them (``PromptSRC.forward_backward``): L1 to the frozen text features (cached at build: the official template
    ensemble is computed once too; here one template, the per-step cost is the same), L1 to the frozen image
    features of the batch (the unprompted tower under ``no_grad``, every step) and KL to the frozen logits."""

    method = "promptsrc-shape"

    def set_classnames(self, backbone, classnames):  # noqa: D102
        from vlprompt.backbones.text import zero_shot_weights

        super().set_classnames(backbone, classnames)
        self.register_buffer("frozen_text", zero_shot_weights(backbone, classnames, ["a photo of a {}."]),
                             persistent=False)  # (C, E), L2-normalised

    def training_terms(self, step):  # noqa: D102
        spec = METHODS["promptsrc"]
        with torch.no_grad():  # official ZS_image_encoder on the batch
            zs = F.normalize(step.backbone.encode_image(step.images).float(), dim=-1)  # (B, E)
            zs_logits = step.backbone.logit_scale * zs @ self.frozen_text.t()  # (B, C)
        text = F.l1_loss(step.text_features, self.frozen_text) * spec["text_loss_weight"]
        image = F.l1_loss(step.image_features, zs) * spec["image_loss_weight"]
        kl = F.kl_div(F.log_softmax(step.logits, dim=1), F.log_softmax(zs_logits, dim=1), reduction="sum",
                      log_target=True) / step.logits.numel()
        return kl + text + image


def stand_in_class(method: str):
    """The stand-in learner of ``method``'s shape (no registered learner of that name)."""
    return PromptSRCShape if METHODS[method]["src_terms"] else IndependentDeepPrompts


def learner_class(method: str, stand_in: bool = False):
    """``(class, registered?)``: the registered learner named ``method`` if any (and not ``stand_in``), else the
    stand-in of its shape."""
    if stand_in:
        return stand_in_class(method), False
    from vlprompt.errors import ConfigError
    from vlprompt.prompts import get_prompt_learner_class

    try:
        return get_prompt_learner_class(method), True
    except ConfigError:
        return stand_in_class(method), False


def build(bb, method: str, classes: int, side: str, a: argparse.Namespace):
    """``(model, optimiser, learner)`` of one side, parameters from ``a.seed``."""
    from dataclasses import fields

    from vlprompt.engine.model import PromptModel
    from vlprompt.speed.common import classnames

    cls, _ = learner_class(method, a.stand_in)
    spec, depth = METHODS[method], a.depth or METHODS[method]["depth"]
    wanted = {"n_ctx": spec["n_ctx"], "ctx_init": "a photo of a", "n_ctx_vision": spec["n_ctx_vision"],
              "depth_text": depth, "depth_vision": depth, "depth": depth, "prompt_depth": depth,
              "half_tokens": a.half_tokens, "truncate": side != "official"}
    names = {f.name for f in fields(cls.config_class)}
    config = cls.config_class(**{k: v for k, v in wanted.items() if k in names})
    torch.manual_seed(a.seed)
    learner = cls(bb, classnames(classes), config)
    if side == "official":
        model = PromptModel(bb, learner, shared_prefix=False, length_buckets=False, text_chunk=None)
    else:
        chunk = a.text_chunk if classes >= a.chunk_from else None
        if side == "vlprompt-chunk":  # the exactness check's chunked path: several chunks at any class count
            chunk = max(1, min(a.text_chunk, classes // 4))
        model = PromptModel(bb, learner, text_chunk=chunk)
    opt = torch.optim.SGD([p for p in learner.parameters() if p.requires_grad], lr=spec["lr"], momentum=0.9,
                          weight_decay=5e-4)
    return model, opt, learner


def batch(bb, classes: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed batch: ``images [B, 3, H, W]`` (standard normal, as preprocessed pixels) and ``labels [B]``."""
    g = torch.Generator().manual_seed(seed)
    side = bb.model.visual.image_size
    side = side[0] if isinstance(side, tuple | list) else side
    return torch.randn(size, 3, side, side, generator=g), torch.randint(classes, (size,), generator=g)


class TokenCounter:
    """Token positions entering the first block of each tower (forward hooks on its ``ln_1``; the shared-prefix
    path calls ``ln_1`` too), and the longest sequence a text block saw."""

    def __init__(self, bb):
        self.text = self.vision = self.text_longest = 0
        bb.text.transformer.resblocks[0].ln_1.register_forward_hook(self._hook("text"))
        bb.model.visual.transformer.resblocks[0].ln_1.register_forward_hook(self._hook("vision"))

    def _hook(self, tower: str):
        def hook(_module, _inputs, out):
            setattr(self, tower, getattr(self, tower) + out.numel() // out.shape[-1])
            if tower == "text":
                seq = out.shape[1] if out.dim() == 3 else 1
                self.text_longest = max(self.text_longest, seq)
        return hook

    def take(self) -> dict:
        """The counts since the last ``take`` (then reset)."""
        out = {"text_positions": self.text, "vision_positions": self.vision, "text_longest": self.text_longest}
        self.text = self.vision = self.text_longest = 0
        return out


def step(model, opt, images, labels, grads: bool = False, counter: TokenCounter | None = None):
    """One training step; returns ``(logits [B, C] detached, gradients by name or None, forward token counts)``."""
    loss, logits = model.training_loss(None, labels, images)
    counts = counter.take() if counter is not None else {}
    opt.zero_grad()
    loss.backward()
    named = {n: p.grad.detach().clone() for n, p in model.learner.named_parameters() if p.grad is not None}
    opt.step()
    return logits.detach(), (named if grads else None), counts


@torch.no_grad()
def logits_check(a: argparse.Namespace) -> dict:
    """Logits at init of the official computation and of vlprompt at ``a.classes`` (1000: where the official step
    cannot run), without autograd; the official side encodes its full-length prompts 100 classes at a time, which
    is the same computation row by row (the text tower treats each class's sequence independently)."""
    bb = backbone_of(a.backbone)
    images, _ = batch(bb, a.classes, a.batch)
    out = {}
    for side in ("official", "vlprompt"):
        model, _, _ = build(bb, a.method, a.classes, side, a)
        if side == "official":
            model.text_chunk = 100
        out[side] = model.logits(model.encode_images(images))  # (B, C)
    return {"classes": a.classes, "method": a.method, "learner": _learner_name(a.method, a.stand_in),
            "logits_max_abs": out["official"].abs().max().item(),
            "logits_init_max_abs_diff": (out["vlprompt"] - out["official"]).abs().max().item()}


def exactness(a: argparse.Namespace) -> dict:
    """One step of the official computation and of vlprompt (with and without ``text_chunk``) from identical
    parameters: max |Δ| of the logits at init, of every gradient, and of the logits after the step."""
    bb = backbone_of(a.backbone)
    counter = TokenCounter(bb)
    images, labels = batch(bb, a.classes, a.batch)
    runs = {}
    for side in ("official", "vlprompt", "vlprompt-chunk"):
        model, opt, learner = build(bb, a.method, a.classes, side, a)
        counter.take()  # not the build's (cached frozen features) nor the previous side's
        logits, grads, counts = step(model, opt, images, labels, grads=True, counter=counter)
        with torch.no_grad():
            after = model.logits(model.encode_images(images))
        runs[side] = {"logits": logits, "grads": grads, "after": after, "counts": counts,
                      "text_path": model.text_path(), "text_chunk": model.text_chunk}
    ref = runs["official"]
    report = {"classes": a.classes, "method": a.method, "learner": _learner_name(a.method, a.stand_in),
              "official_text_path": ref["text_path"], "official_counts": ref["counts"], "sides": {}}
    for side in ("vlprompt", "vlprompt-chunk"):
        r = runs[side]
        grad = {n: (r["grads"][n] - g).abs().max().item() for n, g in ref["grads"].items()}
        scale = {n: g.abs().max().item() for n, g in ref["grads"].items()}
        report["sides"][side] = {
            "text_path": r["text_path"], "text_chunk": r["text_chunk"], "counts": r["counts"],
            "logits_init_max_abs_diff": (r["logits"] - ref["logits"]).abs().max().item(),
            "logits_after_step_max_abs_diff": (r["after"] - ref["after"]).abs().max().item(),
            "grad_max_abs_diff": grad, "grad_max_abs": scale,
            "same_parameters": sorted(r["grads"]) == sorted(ref["grads"]),
        }
    report["logits_max_abs"] = ref["logits"].abs().max().item()
    return report


def _learner_name(method: str, stand_in: bool = False) -> str:
    cls, registered = learner_class(method, stand_in)
    if registered:
        return f"{cls.__module__}.{cls.__qualname__}"
    return f"{cls.__module__}.{cls.__qualname__}" if cls is IndependentDeepPrompts else (
        f"{cls.__qualname__} (benchmarks/deep_prompts_speed.py) on vlprompt.prompts.deep.IndependentDeepPrompts")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _watchdog(cap: int) -> None:
    """Exit (code 3) the moment this process's RSS passes ``cap`` bytes: the machine is shared."""
    def watch():
        while True:
            if _rss() > cap:
                sys.stderr.write(f"RSS over the {cap / GB:.1f} GB cap: stopped\n")
                os._exit(3)
            time.sleep(0.02)
    threading.Thread(target=watch, daemon=True).start()


def timing(a: argparse.Namespace) -> dict:
    """Warm-up + ``a.steps`` timed steps of one side; wall/CPU seconds per step and peak RSS."""
    bb = backbone_of(a.backbone)
    images, labels = batch(bb, a.classes, a.batch)
    counter = TokenCounter(bb)
    model, opt, learner = build(bb, a.method, a.classes, a.side, a)
    rss_built = _rss()
    counter.take()
    _, _, counts = step(model, opt, images, labels, counter=counter)  # warm-up
    walls, cpus, loads = [], [], [os.getloadavg()[0]]
    for _ in range(a.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        step(model, opt, images, labels)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    loads.append(os.getloadavg()[0])
    return {"method": a.method, "side": a.side, "classes": a.classes, "learner": _learner_name(a.method, a.stand_in),
            "text_path": model.text_path(), "text_chunk": model.text_chunk, "counts": counts,
            "wall_s": walls, "cpu_s": cpus, "wall_s_min": min(walls), "wall_s_median": sorted(walls)[len(walls) // 2],
            "cpu_s_min": min(cpus), "load_avg_1min": loads, "rss_built_mb": rss_built / 2**20,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            "threads": torch.get_num_threads()}


def child_main(a: argparse.Namespace) -> None:
    """Run one child job (``a.child``: ``time`` or ``exact``) under the memory cap; print its JSON last."""
    cap = int(a.mem_cap_gb * GB)
    resource.setrlimit(resource.RLIMIT_AS, (cap + 3 * GB, cap + 3 * GB))  # backstop: address space > RSS
    _watchdog(cap)
    torch.set_num_threads(a.threads)
    result = {"time": timing, "exact": exactness, "logits": logits_check}[a.child](a)
    print("RESULT " + json.dumps(result), flush=True)


def run_child(a: argparse.Namespace, job: str, **over) -> dict:
    """One child process; its result, or ``{"error": ...}`` (over the memory cap, failure, timeout)."""
    args = {"method": a.method, "classes": a.classes, "side": "vlprompt", **over}
    cmd = [sys.executable, __file__, "--child", job, "--backbone", a.backbone, "--threads", str(a.threads),
           "--batch", str(a.batch), "--steps", str(a.steps), "--seed", str(a.seed), "--depth", str(a.depth or 0),
           "--text-chunk", str(a.text_chunk), "--chunk-from", str(a.chunk_from), "--mem-cap-gb", str(a.mem_cap_gb),
           "--method", args["method"], "--classes", str(args["classes"]), "--side", args["side"]]
    cmd += ["--half-tokens"] if a.half_tokens else []
    cmd += ["--stand-in"] if a.stand_in else []
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "OMP_WAIT_POLICY": "PASSIVE"}
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=a.timeout)
    except subprocess.TimeoutExpired:
        return {**args, "error": f"not finished within --timeout {a.timeout} s"}
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    why = "over the memory cap" if p.returncode in (3, -9) or "MemoryError" in p.stderr else "failed"
    return {**args, "error": f"{why} (exit {p.returncode}): {p.stderr.strip().splitlines()[-1:]}"}


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares ``y = a + b·x``: ``(a, b)`` (``b = 0`` from one point)."""
    n, mx, my = len(xs), sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if n > 1 and sxx else 0.0
    return my - b * mx, b


def official_rows(a: argparse.Namespace, method: str) -> list[dict]:
    """The official side at each of ``--official-classes`` whose projected peak fits the cap (else a skip row)."""
    rows: list[dict] = []
    for c in sorted(int(x) for x in a.official_classes.split(",")):
        ok = [r for r in rows if "error" not in r and "skipped" not in r]
        if len(ok) >= 2:
            i, s = linear_fit([r["classes"] for r in ok], [r["peak_rss_mb"] for r in ok])
            if i + s * c > 0.92 * a.mem_cap_gb * 1024:
                rows.append({"method": method, "side": "official", "classes": c, "skipped":
                             f"projected peak {(i + s * c) / 1024:.1f} GB > the {a.mem_cap_gb} GB cap"})
                continue
        rows.append(run_child(a, "time", method=method, classes=c, side="official"))
        print(json.dumps({k: rows[-1].get(k) for k in ("method", "side", "classes", "wall_s_min", "peak_rss_mb",
                                                        "error")}), flush=True)
    return rows


def projection(rows: list[dict], target: int) -> dict | None:
    """Linear projection of the official time and peak memory to ``target`` classes from the measured rows."""
    ok = [r for r in rows if "wall_s_min" in r]
    if len(ok) < 2:
        return None
    xs = [r["classes"] for r in ok]
    out = {"classes": target, "from_classes": xs, "projected": True}
    for key in ("wall_s_min", "cpu_s_min", "peak_rss_mb", "rss_built_mb"):
        i, s = linear_fit(xs, [r[key] for r in ok])
        out[key], out[key + "_per_class"] = i + s * target, s
    return out


def _row(label: str, r: dict, base: dict | None) -> str:
    """One markdown row: time, memory, and the ratios to ``base`` (the official 1000-class figure)."""
    if "error" in r or "skipped" in r:
        return f"| {label} | {r['classes']} | {r.get('error') or r.get('skipped')} | | | | | | | |"
    speed = mem = ""
    if base is not None:
        speed = f"{base['wall_s_min'] / r['wall_s_min']:.1f}× ({base['cpu_s_min'] / r['cpu_s_min']:.1f}× CPU)"
        mem = f"{r['peak_rss_mb'] / base['peak_rss_mb']:.2f} ({_step_mb(r) / _step_mb(base):.2f} step)"
    load = r.get("load_avg_1min")
    counts = r.get("counts", {})
    return (f"| {label} | {r['classes']} | {r['wall_s_min']:.2f} | {r['cpu_s_min']:.2f} | {r['peak_rss_mb']:.0f} | "
            f"{_step_mb(r):.0f} | "
            f"{counts.get('text_positions', '')} | {'' if load is None else f'{load[0]:.1f}→{load[1]:.1f}'} | "
            f"{speed} | {mem} |")


def _step_mb(r: dict) -> float:
    """Peak RSS above the built model (the step's own memory: activations, gradients)."""
    return r["peak_rss_mb"] - r["rss_built_mb"]


def _exact_lines(method: str, e: dict) -> list[str]:
    if "error" in e:
        return [f"- {method}: exactness check failed: {e['error']}"]
    lines = []
    for side, r in e["sides"].items():
        worst = max(r["grad_max_abs_diff"].values())
        lines.append(
            f"- {method}, {side} (text path {r['text_path']}, text_chunk {r['text_chunk']}) vs official at "
            f"{e['classes']} classes: logits max |Δ| {r['logits_init_max_abs_diff']:.2e} at init, "
            f"{r['logits_after_step_max_abs_diff']:.2e} after one SGD step (logits up to {e['logits_max_abs']:.1f}); "
            f"gradients max |Δ| {worst:.2e} over {len(r['grad_max_abs_diff'])} parameters (largest gradient entry "
            f"{max(r['grad_max_abs'].values()):.2e}); text positions per step {r['counts']['text_positions']} vs "
            f"{e['official_counts']['text_positions']} (official: longest text sequence "
            f"{e['official_counts']['text_longest']})")
    return lines


def render(result: dict) -> str:
    """The README table of the rows (the official 1000-class figures projected where not measured)."""
    o = result["options"]
    lines = ["# Deep prompts per training step: official computation vs vlprompt", "",
             f"Backbone `{o['backbone']}` (random weights), batch {o['batch']} images, {o['threads']} torch threads "
             f"(OMP_WAIT_POLICY=PASSIVE), one warm-up step then {o['steps']} timed steps (min reported), each "
             f"configuration in its own process (peak RSS = ru_maxrss), memory cap {o['mem_cap_gb']} GB; "
             f"torch {result['torch']}; {result['machine']}.", "",
             "**official** = every class's full 77-token prompt through the text tower at once, deep tokens replaced "
             "per layer, with autograd, nothing cached (the official `CustomCLIP`; here `PromptModel(shared_prefix="
             "False, length_buckets=False, text_chunk=None)`, learner `truncate=False`); the image tower with the "
             "vision tokens on the batch. **vlprompt** = the default path: EOS truncation, length buckets, the shared "
             "prefix with the deep text tokens inside it, and `text_chunk` + checkpointing at 1000 classes. "
             "PromptSRC's frozen image tower (no_grad, every step) and its L1/KL terms count on both sides. Official "
             "rows that would pass the memory cap are not run; the official 1000-class row is a **projection**: the "
             "least-squares line through the measured official rows (time and peak RSS are linear in the class "
             "count: the text tower's work and activations are per class), not a measurement. *step MB* = peak RSS "
             "minus RSS after building the model (the step's activations and gradients). Wall time on a shared "
             "machine includes waiting for a core (see the load column); CPU time counts both threads' work.", "",
             "| configuration | classes | s/step (wall) | CPU s/step | peak RSS MB | step MB (peak − built) | "
             "text positions / step (fwd) | load 1 min | speed-up vs official @1000 | memory vs official @1000 |",
             "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for method, m in result["methods"].items():
        proj = m.get("official_projection")
        lines.append(f"| **{method}** — learner `{m['learner']}` | | | | | | | | | |")
        lines += [_row("official (measured)", r, None) for r in m["official"]]
        if proj is not None:
            lines.append(f"| official (**projected**, linear fit over {proj['from_classes']}) | {proj['classes']} | "
                         f"{proj['wall_s_min']:.1f} | {proj['cpu_s_min']:.1f} | {proj['peak_rss_mb']:.0f} | "
                         f"{_step_mb(proj):.0f} | | | | |")
        lines += [_row("vlprompt" + (f" (text_chunk {r['text_chunk']})" if r.get("text_chunk") else ""), r,
                       proj if r.get("classes") == o["project_to"] else None) for r in m["vlprompt"]]
    lines += ["", "Exactness (one step from identical parameters, fp32):", ""]
    for method, m in result["methods"].items():
        if "exact" in m:
            lines += _exact_lines(method, m["exact"])
        g = m.get("logits")
        if g is not None:
            lines.append(f"- {method}, logits at init at {g['classes']} classes (no autograd; official prompts "
                         f"encoded 100 classes at a time): " + (f"failed: {g['error']}" if "error" in g else
                         f"max |Δ| {g['logits_init_max_abs_diff']:.2e} (logits up to {g['logits_max_abs']:.1f})"))
    lines += ["", f"Command: `{result['command']}`", "", f"`uptime` before: {result['uptime_start']}",
              f"`uptime` after: {result['uptime_end']}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parent: exactness, then each method's official and vlprompt rows; writes results.json and README.md."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", help="folder for results.json and README.md")
    p.add_argument("--methods", default="maple,promptsrc")
    p.add_argument("--backbone", default="ViT-B-16")
    p.add_argument("--classes-list", default="100,1000", help="vlprompt class counts")
    p.add_argument("--official-classes", default="25,50,100,200", help="official class counts to try (each only "
                   "if the fit of the earlier ones predicts it fits the cap)")
    p.add_argument("--project-to", type=int, default=1000)
    p.add_argument("--exact-classes", type=int, default=100)
    p.add_argument("--logits-classes", type=int, default=1000, help="also compare the logits at init (no autograd) "
                   "at this many classes (0: no)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up step")
    p.add_argument("--depth", type=int, default=0, help="prompt depth (0: the method's official 9)")
    p.add_argument("--text-chunk", type=int, default=128)
    p.add_argument("--chunk-from", type=int, default=500, help="vlprompt uses --text-chunk from this many classes")
    p.add_argument("--half-tokens", action="store_true", help="the official fp16 rounding of the deep tokens")
    p.add_argument("--mem-cap-gb", type=float, default=6.0)
    p.add_argument("--timeout", type=float, default=1800.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--skip-exact", action="store_true")
    p.add_argument("--stand-in", action="store_true", help="the stand-in learners even where the method is "
                   "registered")
    p.add_argument("--child", choices=["time", "exact", "logits"], help=argparse.SUPPRESS)
    p.add_argument("--method", default="maple", help=argparse.SUPPRESS)
    p.add_argument("--classes", type=int, default=100, help=argparse.SUPPRESS)
    p.add_argument("--side", default="vlprompt", help=argparse.SUPPRESS)
    p.add_argument("--render", metavar="JSON", help="only rewrite README.md next to this results.json (what "
                   "follows the notes marker in it is kept)")
    a = p.parse_args(argv)
    if a.render:
        path = Path(a.render)
        readme = path.with_name("README.md")
        old = readme.read_text() if readme.exists() else ""
        notes = old[old.index(NOTES):] if NOTES in old else ""  # hand-written notes below the marker are kept
        readme.write_text(render(json.loads(path.read_text())) + ("\n" + notes if notes else ""))
        return 0
    if a.child:
        child_main(a)
        return 0
    result = {"command": " ".join(["python", "benchmarks/deep_prompts_speed.py", *(argv or sys.argv[1:])]),
              "torch": torch.__version__, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
              "uptime_start": _uptime(), "options": {k: v for k, v in vars(a).items() if k not in
                                                      ("child", "method", "classes", "side")}, "methods": {}}
    for method in a.methods.split(","):
        entry = result["methods"][method] = {"learner": _learner_name(method, a.stand_in)}
        if not a.skip_exact:
            entry["exact"] = run_child(a, "exact", method=method, classes=a.exact_classes)
            print(json.dumps(entry["exact"])[:400], flush=True)
        entry["official"] = official_rows(a, method)
        entry["official_projection"] = projection(entry["official"], a.project_to)
        if a.logits_classes:
            entry["logits"] = run_child(a, "logits", method=method, classes=a.logits_classes)
        entry["vlprompt"] = [run_child(a, "time", method=method, classes=int(c), side="vlprompt")
                             for c in a.classes_list.split(",")]
        print(json.dumps(entry["vlprompt"])[:400], flush=True)
    result["uptime_end"] = _uptime()
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(result, indent=1))
        (out / "README.md").write_text(render(result))
    return 0 if all("error" not in r for m in result["methods"].values() for r in m["vlprompt"]) else 1


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    sys.exit(main())
