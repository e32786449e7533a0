"""Fit + evaluation time and peak memory of every registered feature-space adapter on a 16-shot, 1000-class problem
whose features are already cached (issue 16): the towers never run, so this is the adapter's own cost.

The inputs are fixed synthetic tensors (seeded, not a real dataset, so accuracy is not the point; it is reported
only to show the fit did something): ``C`` classes of unit text features ``text [C, E]``; unnormalised image
features ``train [N = shots·C, E]`` scattered (Gaussian, 0.2 along any direction) around a class centre that is
off its text feature (cosine 0.6), scaled to norm about 10 as CLIP's raw features, so that zero-shot is imperfect
and the shots carry signal; ``views [V, N, E]`` (``V`` = the method's ``recipe["num_views"]``, default 10, only
for methods with ``uses_views``) as small perturbations of them; ``text_norms [C]`` in [6, 10] where the interface
has them; ``val [val_shots·C, E]`` and ``test [test_per_class·C, E]`` drawn like ``train``.

Each adapter runs in a fresh child process with ``--threads`` torch threads (default 2), so its peak resident
memory (``ru_maxrss``) is its own: the child reports the resident memory after building the inputs and the peak
after fit + evaluation. Targets of the issue: Tip-Adapter and LP++ fit + eval < 10 s, Tip-Adapter-F and CLAP < 60 s.
Each row also has the fit's CPU time (all threads; on a shared machine wall time includes waiting for a core) and
the 1-minute load average at its start and end; the JSON has ``uptime`` before and after the whole run.
``--config 'METHOD=JSON'`` times an adapter with other options (e.g. fewer epochs, to project a long recipe from
its per-epoch cost); such a row names its config and is not compared with the target.

    python benchmarks/adapters_speed.py --out benchmarks/results/cpu-2threads            # every registered adapter
    python benchmarks/adapters_speed.py --out /tmp/x --stand-in --classes 50              # the harness, on a branch
                                                                                         # without adapters

``--stand-in`` registers, inside this script only, a trivial adapter (``bench-stand-in``: zero-shot logits plus
the class means of the views) so that the harness can be run before the real adapters land.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

#: fit + eval targets of issue 16 (seconds), by registered method name.
TARGETS = {"tip-adapter": 10.0, "lpplusplus": 10.0, "tip-adapter-f": 60.0, "clap": 60.0}
STAND_IN = "bench-stand-in"


def register_stand_in() -> None:
    """Register :data:`STAND_IN`: zero-shot logits plus ``logit_scale ·`` cosine to the class means of the views."""
    from dataclasses import dataclass

    import torch.nn.functional as F

    from vlprompt.adapters import FeatureAdapter, is_adapter, register_adapter

    if is_adapter(STAND_IN):
        return

    @dataclass
    class StandInConfig:
        weight: float = 1.0

    @register_adapter
    class StandIn(FeatureAdapter):
        method, config_class, uses_views, uses_val = STAND_IN, StandInConfig, True, False

        def fit(self, data):
            feats = data.views.mean(0) if data.views is not None else data.train  # (N, E)
            protos = torch.zeros(data.num_classes, feats.shape[1]).index_add_(0, data.train_labels, feats)
            self.register_buffer("protos", F.normalize(protos, dim=-1))  # (C, E)
            self.register_buffer("text", data.text.float())
            self.scale = data.logit_scale
            return {}

        def forward(self, image_features, text=None):
            img = F.normalize(image_features.float(), dim=-1)
            return self.scale * img @ (self.text + self.config.weight * self.protos).t()


def synthetic(classes: int, dim: int, shots: int, val_shots: int, test_per_class: int, views: int, seed: int = 0):
    """The fixed inputs (see the module docstring): ``(AdapterData, test [T, E], test_labels [T])``."""
    from vlprompt.adapters import AdapterData

    g = torch.Generator().manual_seed(seed)
    unit = lambda *shape: torch.nn.functional.normalize(torch.randn(*shape, generator=g), dim=-1)  # noqa: E731
    text = unit(classes, dim)  # (C, E)
    centre = torch.nn.functional.normalize(0.6 * text + 0.8 * unit(classes, dim), dim=-1)  # (C, E): off the text

    scale = 10.0 / (1.0 + 0.04 * dim) ** 0.5

    def draw(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(classes).repeat_interleave(per_class)  # (n,)
        noise = 0.2 * torch.randn(labels.shape[0], dim, generator=g)  # 0.2 along any direction, for any E
        return scale * (centre[labels] + noise), labels  # (n, E) unnormalised, norm ≈ 10

    train, train_labels = draw(shots)
    val, val_labels = draw(val_shots)
    test, test_labels = draw(test_per_class)
    bank = None
    if views:
        bank = torch.empty(views, *train.shape)  # (V, N, E): filled in place, one view at a time
        for v in range(views):
            bank[v] = train + 0.1 * scale * torch.randn(train.shape, generator=g)
    extra = {}
    if "text_unnormalised" in AdapterData.__dataclass_fields__:  # raw text features, norms in [6, 10] (CLAP, TaskRes)
        extra["text_unnormalised"] = text * (6.0 + 4.0 * torch.rand(classes, 1, generator=g))
    data = AdapterData(train=train, train_labels=train_labels, text=text, logit_scale=100.0, views=bank, val=val,
                       val_labels=val_labels, seed=1, **extra)
    return data, test, test_labels


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _uptime() -> str:
    """``uptime``'s line (the machine's load when the numbers were taken), or the load averages without it."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def child(a: argparse.Namespace) -> dict:
    """Fit and evaluate one adapter (``a.child``) in this process; returns its row."""
    from vlprompt.adapters import create_adapter, get_adapter_class

    torch.set_num_threads(a.threads)
    if a.stand_in:
        register_stand_in()
    cls = get_adapter_class(a.child)
    views = int(cls.recipe.get("num_views", 10)) if cls.uses_views else 0
    data, test, test_labels = synthetic(a.classes, a.dim, a.shots, a.val_shots, a.test_per_class, views)
    rss_inputs = _rss_mb()
    config = json.loads(a.config_json or "{}")
    adapter = create_adapter(a.child, config)
    load_start = os.getloadavg()
    t0, c0 = time.perf_counter(), time.process_time()
    adapter.fit(data)
    fit_s, fit_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    t1 = time.perf_counter()
    with torch.no_grad():
        pred = torch.cat([adapter(test[i:i + 1000]).argmax(-1) for i in range(0, test.shape[0], 1000)])
    eval_s = time.perf_counter() - t1
    # on a shared machine wall time counts the time the process waited for a core; CPU time (all threads) does
    # not, but counts an OpenMP thread's spin-waiting for its partner
    return {"method": a.child, "config": config, "views": views, "fit_s": fit_s, "fit_cpu_s": fit_cpu_s, "eval_s": eval_s,
            "total_s": fit_s + eval_s, "load_avg_1min": [load_start[0], os.getloadavg()[0]],
            "target_s": TARGETS.get(a.child), "accuracy": 100.0 * (pred == test_labels).float().mean().item(),
            "zero_shot_accuracy": 100.0 * (data.zero_shot_logits(test).argmax(-1) == test_labels).float().mean().item(),
            "rss_inputs_mb": rss_inputs, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            "threads": torch.get_num_threads()}


def render(result: dict) -> str:
    """Markdown table of the rows."""
    o = result["options"]
    lines = ["# Feature-space adapters: fit + evaluation on cached features", "",
             f"{o['shots']}-shot, {o['classes']}-class synthetic problem (N = {o['shots'] * o['classes']}, E = "
             f"{o['dim']}, val {o['val_shots']}/class, test {o['test_per_class']}/class), features already cached, "
             f"{o['threads']} torch threads, one fresh process per adapter; {result['machine']}.", "",
             "| adapter | views | fit s | fit CPU s | eval s | fit + eval s | target | met | load (start→end) | "
             "peak RSS MB (inputs) | acc % (zero-shot) |",
             "|---|---:|---:|---:|---:|---:|---:|---|---|---:|---:|"]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['method']} | | | | | | | failed: {r['error']} | | | |")
            continue
        target = r["target_s"] if not r.get("config") else None  # a shortened run is not the recipe
        met = "–" if target is None else ("yes" if r["total_s"] < target else "**no**")
        name = r["method"] + (f" `{json.dumps(r['config'])}`" if r.get("config") else "")
        load = r.get("load_avg_1min", ["?", "?"])
        lines.append(f"| {name} | {r['views']} | {r['fit_s']:.2f} | {r.get('fit_cpu_s', float('nan')):.2f} | "
                     f"{r['eval_s']:.2f} | {r['total_s']:.2f} | {'' if target is None else f'< {target:.0f} s'} | "
                     f"{met} | {load[0]:.1f}→{load[1]:.1f} | {r['peak_rss_mb']:.0f} "
                     f"({r['rss_inputs_mb']:.0f}) | {r['accuracy']:.1f} ({r['zero_shot_accuracy']:.1f}) |")
    lines += ["", f"Command: `{result['command']}`", "", f"`uptime` before: {result.get('uptime_start', '?')}",
              f"`uptime` after: {result.get('uptime_end', '?')}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run every registered adapter (or ``--methods``) in a child process; write ``adapters_speed.{json,md}``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", help="folder for adapters_speed.json and .md")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--shots", type=int, default=16)
    p.add_argument("--dim", type=int, default=1024, help="feature width E (RN50: 1024, ViT-B/16: 512)")
    p.add_argument("--val-shots", type=int, default=4)
    p.add_argument("--test-per-class", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--methods", default="", help="comma-separated (default: every registered adapter)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per adapter before it is stopped")
    p.add_argument("--stand-in", action="store_true", help=f"register the trivial '{STAND_IN}' adapter")
    p.add_argument("--config", action="append", default=[], metavar="METHOD=JSON",
                   help="options for one adapter, e.g. 'tip-adapter-f={\"train_epoch\": 2}' to time fewer epochs "
                        "than the recipe (the row then names its config and is not compared with the target)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--config-json", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(child(a)))
        return 0
    if not a.out:
        p.error("--out is required")
    from vlprompt.adapters import list_adapters

    if a.stand_in:
        register_stand_in()
    methods = [m for m in a.methods.split(",") if m] or list_adapters()
    if not methods:
        p.error("no adapter is registered (pass --stand-in to test the harness)")
    own = ["--classes", a.classes, "--shots", a.shots, "--dim", a.dim, "--val-shots", a.val_shots,
           "--test-per-class", a.test_per_class, "--threads", a.threads] + (["--stand-in"] if a.stand_in else [])
    configs = dict(c.split("=", 1) for c in a.config)
    rows, uptime_start = [], _uptime()
    for m in methods:
        try:
            done = subprocess.run([sys.executable, __file__, "--child", m, "--config-json", configs.get(m, "{}"),
                                   *map(str, own)], capture_output=True, text=True, timeout=a.timeout)
        except subprocess.TimeoutExpired:
            rows.append({"method": m, "error": f"not finished within --timeout {a.timeout:g} s"})
            print(json.dumps(rows[-1]), flush=True)
            continue
        if done.returncode:
            rows.append({"method": m, "error": (done.stderr.strip().splitlines() or ["?"])[-1]})
        else:
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    result = {"command": "python benchmarks/adapters_speed.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "options": {k: getattr(a, k) for k in ("classes", "shots", "dim", "val_shots", "test_per_class",
                                                      "threads")},
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, torch "
                         f"{torch.__version__}", "torch_threads": a.threads,
              "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")},
              "uptime_start": uptime_start, "uptime_end": _uptime(), "load_avg_end": os.getloadavg()[0], "rows": rows}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    from vlprompt._io import atomic_write_json, atomic_write_text

    atomic_write_json(out / "adapters_speed.json", result)
    atomic_write_text(out / "adapters_speed.md", render(result))
    print(render(result))
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
