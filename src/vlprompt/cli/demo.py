"""``vlprompt demo``: the whole method end to end, offline, on the bundled micro-CLIP."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``demo`` command."""
    p = sub.add_parser("demo", help="offline demo: CoOp vs zero-shot vs linear probe on the bundled micro-CLIP",
                       description="Generate the micro task suite, run zero-shot CLIP, CoOp (M=16, M=4 'a photo of "
                                   "a', CSC), the linear probe and the feature-space adapters at 1-16 shots, the "
                                   "domain-shift sets and base-to-new; write report.md, results.json and "
                                   "fewshot_curves.png into --out.")
    p.add_argument("--out", default="demo", help="output folder (default demo/); re-running resumes")
    p.add_argument("--quick", action="store_true",
                   help="one seed, two shot counts, two tasks (a smoke test; in this process unless --workers)")
    p.add_argument("--protocol", default="short", choices=("short", "paper"),
                   help="short (default): one seed, 50 epochs at every shot count (CoOp's *_ep50 configs, the "
                        "paper's ImageNet setting), base-to-new on two tasks; paper: the paper's protocol, 3 seeds, "
                        "50/100/200 epochs by shots, base-to-new on every task with >= 20 classes (hours on 2 cores)")
    p.add_argument("--tasks", default=None, help="comma-separated task names (default: all few-shot tasks)")
    p.add_argument("--workers", type=int, default=None,
                   help="parallel worker processes (default: CPU count, ≤ 4; with --quick 0, this process)")
    p.add_argument("--task-dir", default=None, help="where task images are generated (default: the vlprompt cache)")
    p.add_argument("--suite", default="v2", choices=("v1", "v2"),
                   help="task suite: v2 (default: world v2, 11 tasks + shifted sets + base-to-new, on the shipped "
                        "micro-CLIP v2) or v1 (world v1 on micro-CLIP v1; from a source checkout, v1 is not in the "
                        "wheel)")
    p.add_argument("--weights", default=None,
                   help="micro-CLIP weights: 'v2', 'v1' or a compact .safetensors file (default: the suite's, v2 "
                        "for --suite v2, v1 for --suite v1)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``vlprompt demo``."""
    from vlprompt.microclip.demo import DemoConfig, default_workers, run_demo

    if args.quick:
        cfg = DemoConfig.quick(args.out, args.suite, args.weights)
    elif args.protocol == "short":
        cfg = DemoConfig.short(args.out, args.suite, args.weights)
    else:
        cfg = DemoConfig(out=args.out, suite=args.suite, weights=args.weights)
    if args.tasks:
        cfg.tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    # --quick's ~30 short runs: starting worker processes (torch import, backbone build, per grid stage) costs more
    # than they save (v2 suite on the shared 2-core machine: 53-58 s in this process, 96 s with two workers).
    cfg.workers = (0 if args.quick else default_workers()) if args.workers is None else args.workers
    cfg.task_dir = args.task_dir
    results = run_demo(cfg, progress=True)
    print(f"demo finished in {results['seconds'] / 60:.1f} min → {cfg.out}/report.md, results.json, fewshot_curves.png")
    avg = results["summary"]["tasks"].get("Average")
    if avg:
        top = max(cfg.shots)
        s = avg["shots"].get(top)
        if s:
            print(f"average over tasks: zero-shot {avg['zero_shot']:.1f}, best CoOp at {top} shots "
                  f"{s['best_coop']:.1f} ({s['gain']:+.1f})")
    return 0
