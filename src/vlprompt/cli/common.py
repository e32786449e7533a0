"""Argument groups shared by several commands, and their conversion to library objects."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from vlprompt.engine.config import AUGMENT_HELP, TrainConfig

if TYPE_CHECKING:  # importing the engine pulls in torch: only when a command runs, not for --help or usage errors
    from vlprompt.engine.run import RunSpec

RECIPE_NOTE = "Defaults reproduce the official CoOp recipe (SGD 0.002, momentum 0.9, wd 5e-4, batch 32, cosine)."


def add_data_args(p: argparse.ArgumentParser, shots: bool = True) -> None:
    """--dataset/--root/--shots/--seed/--subsample/--classnames/--strict."""
    g = p.add_argument_group("data")
    g.add_argument("--dataset", required=True,
                   help="benchmark name (see `vlprompt datasets list`), folder:PATH, csv:PATH or split:PATH.json")
    g.add_argument("--root", default=None, help="folder holding the benchmark datasets (the official $DATA)")
    if shots:
        g.add_argument("--shots", type=int, default=16, help="images per class for training; 0 = all (default 16)")
    g.add_argument("--seed", type=int, default=1, help="seed for few-shot sampling, init and shuffling (default 1)")
    g.add_argument("--subsample", choices=["all", "base", "new"], default="all",
                   help="base-to-new class split: all classes, the first ceil(n/2) (base) or the rest (new)")
    g.add_argument("--classnames", dest="classnames_file", default=None,
                   help="file mapping folder/label names to readable class names (custom data)")
    g.add_argument("--strict", action="store_true",
                   help="refuse unreadable images and classes with fewer than --shots images instead of warning")
    g.add_argument("--allow-outside-root", action="store_true",
                   help="accept image paths in a CSV or split file that point outside its folder (refused by "
                        "default: only for files you trust)")


def add_backbone_args(p: argparse.ArgumentParser, default: str | None = "RN50") -> None:
    """--backbone/--pretrained/--device/--precision."""
    g = p.add_argument_group("backbone")
    g.add_argument("--backbone", default=default,
                   help="open_clip architecture (RN50, ViT-B-16, …), 'microclip' (the bundled offline CLIP), or "
                        "hf:ORG/NAME / hf:DIR (a Hugging Face transformers CLIPModel; pip install 'vlprompt[hf]')")
    g.add_argument("--pretrained", default=None,
                   help="open_clip weights tag (openai, laion2b_…) or a local checkpoint (TorchScript .pt, state "
                        "dict .pt/.pth/.bin, .safetensors); omitted: random weights (shipped weights for microclip); "
                        "for hf: backbones, the local directory holding the model's files")
    g.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    g.add_argument("--precision", choices=["fp32", "amp", "fp16"], default="fp32",
                   help="fp32 (default); amp: bf16/fp16 autocast on GPU; fp16: the official fp16 weights and context")


def add_learner_args(p: argparse.ArgumentParser) -> None:
    """CoOp options."""
    g = p.add_argument_group("prompt learner (CoOp)")
    g.add_argument("--method", default="coop", help="prompt-learning method (default coop)")
    g.add_argument("--n-ctx", type=int, default=16, help="number of context vectors M (default 16)")
    g.add_argument("--ctx-init", default=None,
                   help="initialise the context from these words, e.g. 'a photo of a' (sets M to the word count)")
    g.add_argument("--csc", action="store_true", help="class-specific context (one context per class)")
    g.add_argument("--class-token-position", choices=["end", "middle", "front"], default="end",
                   help="where the class name goes in the prompt (default end)")


def add_train_args(p: argparse.ArgumentParser) -> None:
    """Optimisation options."""
    g = p.add_argument_group("training", RECIPE_NOTE)
    g.add_argument("--epochs", type=int, default=None,
                   help="MAX_EPOCH; default: official 50/100/100/200/200 for 1/2/4/8/16 shots (50 for ImageNet)")
    g.add_argument("--batch-size", type=int, default=32, help="train batch size (default 32)")
    g.add_argument("--lr", type=float, default=0.002, help="SGD learning rate (default 0.002)")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    g.add_argument("--weight-decay", type=float, default=5e-4, help="SGD weight decay (default 5e-4)")
    g.add_argument("--warmup-epochs", type=int, default=1, help="epochs at constant warm-up lr (default 1)")
    g.add_argument("--warmup-lr", type=float, default=1e-5, help="warm-up lr (default 1e-5)")
    g.add_argument("--augment", default="online", help=AUGMENT_HELP)
    g.add_argument("--no-flip", dest="flip", action="store_false", help="no random horizontal flip in training")
    g.add_argument("--crop-scale-min", type=float, default=0.08,
                   help="RandomResizedCrop minimum area scale (default 0.08)")
    g.add_argument("--workers", type=int, default=0, help="data-loading worker processes (default 0)")
    g.add_argument("--text-chunk", type=int, default=None, metavar="N",
                   help="encode the class prompts N classes at a time with activation checkpointing: text-encoder "
                        "memory no longer grows with the class count (exact; about one extra text forward per step)")
    g.add_argument("--resume", action="store_true",
                   help="continue the unfinished run in --out after its last completed epoch (rerunning the same "
                        "command does this too); a finished run of the same configuration is kept and reported")


def add_output_args(p: argparse.ArgumentParser) -> None:
    """--out/--overwrite/--cache-dir/--label."""
    p.add_argument("--out", required=True, help="run folder to write (config.json, metrics.json, …)")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    p.add_argument("--cache-dir", default=None,
                   help="feature cache folder (default $VLPROMPT_CACHE/features or ~/.cache/vlprompt/features); "
                        "'' disables caching")
    p.add_argument("--label", default=None, help="name of this method variant in reports")


def train_config(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig from parsed arguments (fields absent from ``args`` keep their defaults)."""
    kw = {
        "epochs": getattr(args, "epochs", None),
        "batch_size": getattr(args, "batch_size", 32),
        "lr": getattr(args, "lr", 0.002),
        "momentum": getattr(args, "momentum", 0.9),
        "weight_decay": getattr(args, "weight_decay", 5e-4),
        "warmup_epochs": getattr(args, "warmup_epochs", 1),
        "warmup_lr": getattr(args, "warmup_lr", 1e-5),
        "augment": getattr(args, "augment", "online"),
        "flip": getattr(args, "flip", True),
        "crop_scale_min": getattr(args, "crop_scale_min", 0.08),
        "precision": getattr(args, "precision", "fp32"),
        "num_workers": getattr(args, "workers", 0),
        "text_chunk": getattr(args, "text_chunk", None),
    }
    return TrainConfig(**kw)


def run_spec(args: argparse.Namespace) -> RunSpec:
    """RunSpec from parsed arguments."""
    from vlprompt.engine.run import RunSpec

    learner = {}
    if hasattr(args, "n_ctx"):
        learner = {"n_ctx": args.n_ctx, "ctx_init": args.ctx_init, "csc": args.csc,
                   "class_token_position": args.class_token_position}
    return RunSpec(
        dataset=args.dataset, out=args.out, root=args.root, shots=getattr(args, "shots", None) or None,
        seed=args.seed, subsample=args.subsample, backbone=getattr(args, "backbone", None) or "RN50",
        pretrained=args.pretrained, method=getattr(args, "method", "coop"), learner=learner,
        train=train_config(args), device=args.device, cache_dir=args.cache_dir,
        classnames_file=args.classnames_file, strict=args.strict, label=args.label, overwrite=args.overwrite,
        resume=getattr(args, "resume", False), allow_outside_root=getattr(args, "allow_outside_root", False),
    )


def print_metrics(metrics: dict, out: str) -> None:
    """One-line summary of a run's metrics on stdout (once: by rank 0 under torchrun)."""
    from vlprompt.engine.distributed import is_main

    if not is_main():
        return
    print(f"accuracy {metrics['accuracy']:.2f}%  macro-F1 {metrics['macro_f1']:.2f}%  "
          f"({metrics['num_test']} test images)  → {out}")
