"""``vlprompt bench``: the speed suite (official per-step computation vs vlprompt's exact optimisations and
``cached:K``), with a projected full run and its end-to-end check. Writes ``bench.json`` and ``bench.md``.

Names (issue 13): ``bench`` is the speed suite (:mod:`vlprompt.speed`), ``benchmark`` the accuracy grid
(:mod:`vlprompt.cli.benchmark`)."""

from __future__ import annotations

import argparse
import shlex
import sys

from vlprompt.errors import ConfigError

DESCRIPTION = """\
Measure, side by side on this machine, the per-step time and peak memory of
  (a) the official CoOp computation: image encoder on the batch + the full 77-token text encoder forward/backward
      over all classes;
  (b) vlprompt with each exact optimisation added in turn: EOS truncation, shared prefix, class chunks with
      activation checkpointing;
  (c) vlprompt with --augment cached:K (the image side becomes a feature lookup);
plus the one-time costs (image encoding, cached views, evaluation), a projection of a full 16-shot run under the
official schedule, and a measured end-to-end run on a short schedule that checks the projection.
Full-size architectures are built with random weights (no download: speed does not depend on the weights).
The full suite takes hours on a 2-core CPU; --quick runs tiny models in seconds.
(This is the speed suite; the accuracy grid is `vlprompt benchmark`.)"""


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from e


def register(subparsers) -> None:
    """Add the ``bench`` command."""
    p = subparsers.add_parser("bench", help="the speed suite: per-step time and memory, official computation vs vlprompt (writes "
                              "bench.json; the accuracy grid is `vlprompt benchmark`)",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for bench.json and bench.md")
    p.add_argument("--quick", action="store_true", help="tiny models and sizes (seconds; a smoke test)")
    p.add_argument("--backbones", default=None, help="comma-separated architectures (default RN50,ViT-B-16)")
    p.add_argument("--classes", type=_ints, default=None, help="class counts (default 100,1000)")
    p.add_argument("--configs", default=None, help="subset of official,truncate,prefix,chunk,cached")
    p.add_argument("--batch-size", type=int, default=None, help="train batch size (default 32)")
    p.add_argument("--n-ctx", type=int, default=None, help="context length M (default 16)")
    p.add_argument("--k", type=int, default=None, help="cached views K (default 10)")
    p.add_argument("--chunk", type=int, default=None, help="classes per text chunk in the chunk configuration (100)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default 2)")
    p.add_argument("--device", default=None, help="cpu (default) or cuda")
    p.add_argument("--precision", choices=["fp32", "amp"], default=None, help="fp32 (default) or amp (bf16 on GPU)")
    p.add_argument("--rounds", type=int, default=None, help="round-robin rounds over all configurations (default 2)")
    p.add_argument("--steps", type=int, default=None, help="measured steps per configuration and round (default 2)")
    p.add_argument("--memory-limit-gb", type=float, default=None,
                   help="per-measurement memory limit; 0 = none (default 12: out of memory becomes a result)")
    p.add_argument("--no-e2e", action="store_true", help="skip the end-to-end projection check")
    p.add_argument("--e2e-backbone", default=None, help="backbone of the end-to-end check (default RN50)")
    p.add_argument("--e2e-epochs", type=int, default=None, help="epochs of the end-to-end check (default 2)")
    p.add_argument("--e2e-k", type=int, default=None, help="cached views K of the end-to-end check (default --k)")
    p.add_argument("--e2e-test-per-class", type=int, default=None,
                   help="test images per class in the end-to-end check (default 10)")
    p.add_argument("--in-process", action="store_true",
                   help="measure in this process instead of a fresh subprocess per configuration (memory then "
                        "includes earlier configurations)")
    p.set_defaults(func=run)


def options_from_args(args: argparse.Namespace):
    """BenchOptions from parsed arguments (``--quick`` starts from the tiny preset)."""
    from vlprompt.speed import BenchOptions
    from vlprompt.speed.worker import CONFIGS

    kw: dict = {}
    for arg, key in [("classes", "classes"), ("batch_size", "batch"), ("n_ctx", "n_ctx"), ("k", "k"),
                     ("chunk", "chunk"), ("threads", "threads"), ("device", "device"), ("precision", "precision"),
                     ("rounds", "rounds"), ("steps", "steps"), ("e2e_backbone", "e2e_backbone"),
                     ("e2e_epochs", "e2e_epochs"), ("e2e_k", "e2e_k"), ("e2e_test_per_class", "e2e_test_per_class")]:
        if getattr(args, arg) is not None:
            kw[key] = getattr(args, arg)
    if args.backbones:
        kw["backbones"] = [b for b in args.backbones.split(",") if b]
    if args.configs:
        kw["configs"] = [c for c in args.configs.split(",") if c]
        unknown = sorted(set(kw["configs"]) - set(CONFIGS))
        if unknown:
            raise ConfigError(f"--configs: unknown {unknown}; choose from {', '.join(CONFIGS)}.")
    if args.memory_limit_gb is not None:
        kw["memory_limit_gb"] = args.memory_limit_gb or None
    if args.no_e2e:
        kw["e2e_backbone"] = None
    if args.in_process:
        kw["subprocess"] = False
    for key in ("batch", "n_ctx", "k", "chunk", "threads", "rounds", "steps", "e2e_epochs", "e2e_k",
                "e2e_test_per_class"):
        if key in kw and kw[key] < 1:
            raise ConfigError(f"--{key.replace('_', '-')} must be ≥ 1, got {kw[key]}.")
    if kw.get("precision") == "amp" and not str(kw.get("device", "cpu")).startswith("cuda"):
        raise ConfigError("--precision amp is GPU autocast; pass --device cuda, or use fp32 on the CPU.")
    return BenchOptions.quick_options(**kw) if args.quick else BenchOptions(**kw)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print where the report is."""
    from vlprompt.speed import run_benchmark

    opts = options_from_args(args)
    command = "vlprompt " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else "vlprompt bench"
    result = run_benchmark(opts, args.out, command=command, progress=lambda msg: print(msg, file=sys.stderr))
    for t in result["analysis"]["targets"]:
        status = {True: "met", False: "NOT met", None: "n/a"}[t["met"]]
        value = "–" if t["value"] is None else f"{t['value']:.2f}×"
        print(f"{t['backbone']}: {t['target']}: {value} ({status})")
    print(f"report: {args.out}/bench.md  data: {args.out}/bench.json")
    return 0
