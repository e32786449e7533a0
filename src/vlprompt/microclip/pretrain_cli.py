"""The command line of micro-CLIP pretraining: ``python -m vlprompt.microclip.pretrain --out DIR [--version 2] …``."""

from __future__ import annotations

import argparse
import json
import logging

from vlprompt.microclip.pretrain import V2_RECIPE, PretrainConfig, pretrain


def _group_sizes(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(g) for g in text.split(",") if g.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated group sizes, e.g. 32,4") from None


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (``--version 2``: the v2 recipe, :data:`V2_RECIPE`, for any flag not given)."""
    p = argparse.ArgumentParser(prog="python -m vlprompt.microclip.pretrain", description="Pretrain micro-CLIP on the procedural world (v1 or v2).")
    p.add_argument("--out", required=True, help="output folder (resumes from the checkpoint in it if present)")
    p.add_argument("--version", type=int, default=1, choices=(1, 2), help="1: v1 model and world; 2: v2 (ViT)")
    for flag, kind, what in (("--steps", int, ""), ("--batch-size", int, ""), ("--lr", float, ""),
                             ("--warmup", int, ""), ("--seed", int, "model init seed"), ("--world-seed", int, ""),
                             ("--threads", int, "torch threads; 1 = deterministic mode"),
                             ("--workers", int, "image-rendering processes"), ("--checkpoint-every", int, ""),
                             ("--clip-grad", float, "gradient-norm clipping (0: off)")):  # fmt: skip
        p.add_argument(flag, type=kind, default=None, help=what or None)  # fmt: skip
    p.add_argument("--word-loss", type=float, default=None, help="weight of the caption-word loss (0: off)")
    p.add_argument("--word-form", default=None, choices=("sigmoid", "softmax-idf"), help="the caption-word loss's form")
    p.add_argument("--groups", type=_group_sizes, default=None,
                   help="v2 grouped batches, e.g. 32,4 (see PretrainConfig.groups)")
    p.add_argument("--stop-after", type=int, default=None, help="stop (checkpointed) after this many steps")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    names = ("steps", "batch_size", "lr", "warmup", "seed", "world_seed", "threads", "workers", "checkpoint_every",
             "clip_grad", "word_loss", "word_form")  # fmt: skip
    given = {k: getattr(a, k) for k in names if getattr(a, k) is not None}
    if a.groups is not None:
        given["groups"] = a.groups
    cfg = PretrainConfig(**{**(V2_RECIPE if a.version == 2 else {}), **given})
    summary = pretrain(cfg, a.out, progress=not a.no_progress, stop_after=a.stop_after)
    print(json.dumps({k: summary[k] for k in ("finished", "step", "steps_this_run", "seconds_this_run")}))
    return 0
