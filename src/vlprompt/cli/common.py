"""Argument groups shared by several commands, and their conversion to library objects."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING

from vlprompt.engine.config import AUGMENT_HELP, TrainConfig
from vlprompt.errors import ConfigError
from vlprompt.types import CLASS_TOKEN_POSITIONS, PRECISIONS, SUBSAMPLES

if TYPE_CHECKING:  # importing the engine pulls in torch: only when a command runs, not for --help or usage errors
    from vlprompt.engine.spec import RunSpec

RECIPE_NOTE = ("Defaults reproduce each method's official recipe (SGD 0.002, momentum 0.9, wd 5e-4, one warm-up epoch "
               "at 1e-5, cosine; batch and epochs per method; see docs/recipes.md).")


def add_data_args(p: argparse.ArgumentParser, shots: bool = True) -> None:
    """--dataset/--root/--shots/--seed/--subsample/--classnames/--strict."""
    g = p.add_argument_group("data")
    g.add_argument("--dataset", required=True,
                   help="benchmark name (see `vlprompt datasets list`), folder:PATH, csv:PATH or split:PATH.json")
    g.add_argument("--root", default=None, help="folder holding the benchmark datasets (the official $DATA)")
    if shots:
        g.add_argument("--shots", type=int, default=16, help="images per class for training; 0 = all (default 16)")
    g.add_argument("--seed", type=int, default=1, help="seed for few-shot sampling, init and shuffling (default 1)")
    g.add_argument("--subsample", choices=SUBSAMPLES, default="all",
                   help="base-to-new class split: all classes, the first ceil(n/2) (base) or the rest (new)")
    g.add_argument("--classnames", dest="classnames_file", default=None,
                   help="file mapping folder/label names to readable class names (custom data)")
    g.add_argument("--strict", action="store_true",
                   help="refuse unreadable images and classes with fewer than --shots images instead of warning")
    g.add_argument("--allow-outside-root", action="store_true",
                   help="accept image paths in a CSV or split file that point outside its folder (refused by "
                        "default: only for files you trust)")
    # --- official few-shot subsets (issue 12 §5) ---
    if shots:
        g.add_argument("--fewshot-file", default=None, metavar="PKL",
                       help="train on exactly the subsets of an official run: Dassl's <dataset>/split_fewshot/"
                            "shot_K-seed_S.pkl (read by a restricted unpickler; --shots K and --seed S must match)")
    # --- end official few-shot subsets ---


def add_backbone_args(p: argparse.ArgumentParser, default: str | None = "RN50") -> None:
    """--backbone/--pretrained/--device/--precision."""
    g = p.add_argument_group("backbone")
    g.add_argument("--backbone", default=default,
                   help="open_clip architecture (RN50, ViT-B-16, …), 'microclip' (the bundled offline CLIP), or "
                        "hf:ORG/NAME / hf:DIR (a Hugging Face transformers CLIPModel; pip install 'vlprompt[hf]')")
    g.add_argument("--pretrained", default=None,
                   help="open_clip weights tag (openai, laion2b_…; built as its pretrained config says: QuickGELU "
                        "for openai), a local checkpoint (TorchScript .pt, state dict .pt/.pth/.bin, .safetensors; "
                        "for QuickGELU weights in a state dict name the -quickgelu architecture, e.g. "
                        "RN50-quickgelu), or 'random' for seeded random weights on purpose; omitted: the paper's "
                        "weights, 'openai' where the architecture has them (for microclip: the shipped micro-CLIP "
                        "v2, also 'shipped' or 'v2'; 'v1' for the old ResNet micro-CLIP, source checkout only); for "
                        "hf: "
                        "backbones, the local directory holding the model's files")
    g.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    g.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32 (default); amp: bf16/fp16 autocast on GPU; fp16: the official fp16 weights and context")


class _MethodChoices(Sequence):
    """The registered prompt-learning methods, looked up only when needed (``--help`` or a check of ``--method``):
    the registry imports torch, which a plain ``vlprompt --help`` should not."""

    def _names(self) -> list[str]:
        from vlprompt.adapters import list_adapters
        from vlprompt.prompts import list_prompt_learners

        return [*list_prompt_learners(), *list_adapters()]

    def __getitem__(self, i):  # noqa: D105
        return self._names()[i]

    def __len__(self) -> int:
        return len(self._names())

    def __contains__(self, value: object) -> bool:
        return value in self._names()


def _method_name(value: str) -> str:
    """``--method`` checked against the registries of prompt learners and adapters (its error suggests close names)."""
    import difflib

    names = _MethodChoices()._names()
    if value not in names:
        close = difflib.get_close_matches(value, names, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise argparse.ArgumentTypeError(f"--method '{value}' is unknown.{hint} Choices: {', '.join(names)}.")
    return value


def add_learner_args(p: argparse.ArgumentParser) -> None:
    """Prompt-learner options: the method and CoOp's options (``None``: the method's own default)."""
    g = p.add_argument_group(
        "prompt learner",
        "Options left out take the method's own defaults: coop M=16 random init; cocoop and kgcoop M=4 from "
        "'a photo of a' (as officially). --n-ctx without --ctx-init means random initialisation.")
    g.add_argument("--method", default="coop", type=_method_name, choices=_MethodChoices(), metavar="METHOD",
                   help="prompt-learning method or feature-space adapter: %(choices)s (default coop). Each trains "
                        "with its own official recipe where no value is given: cocoop batch 1, 10 epochs; kgcoop "
                        "batch 128, 100 epochs; an adapter fits on cached features with its own recipe (options: "
                        "--learner-opt)")
    g.add_argument("--n-ctx", type=int, default=None, help="number of context vectors M (coop default 16)")
    g.add_argument("--ctx-init", default=None,
                   help="initialise the context from these words, e.g. 'a photo of a' (sets M to the word count)")
    g.add_argument("--csc", action="store_true", default=None,
                   help="class-specific context (one context per class; coop and kgcoop)")
    g.add_argument("--class-token-position", choices=CLASS_TOKEN_POSITIONS, default=None,
                   help="where the class name goes in the prompt (default end; coop and kgcoop)")
    g.add_argument("--learner-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="any other option of the method's config, repeatable, e.g. kg_weight=4 (kgcoop's λ, default "
                        "8), template='a photo of a {}.' (kgcoop; default: the dataset's), meta_reduction=16 (cocoop)")


def coerce_option(key: str, value: str, default: object) -> object:
    """``value`` as the type of the config field's ``default`` (``none`` → ``None``)."""
    if value.lower() in ("none", "null"):
        return None
    try:
        if isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
    except ValueError:
        raise ConfigError(f"--learner-opt {key}={value}: expected a {type(default).__name__} for '{key}'.") from None
    return value


def learner_options(args: argparse.Namespace) -> dict:
    """The learner config entries the user chose (the method's own defaults fill the rest)."""
    from vlprompt.adapters import is_adapter

    if not hasattr(args, "n_ctx"):
        return {}
    if is_adapter(args.method):
        _refuse_prompt_flags(args)
    opts: dict = {}
    if args.n_ctx is not None:
        opts["n_ctx"] = args.n_ctx
        opts["ctx_init"] = None  # M vectors, randomly initialised (a method's default words would override M)
    if args.ctx_init is not None:
        opts["ctx_init"] = args.ctx_init
    if args.csc:
        opts["csc"] = True
    if args.class_token_position is not None:
        opts["class_token_position"] = args.class_token_position
    fields = method_config_class(args.method).__dataclass_fields__
    # options of the method's config from a --config file (already checked against ``fields``; issue 17)
    opts.update(getattr(args, "learner_config", None) or {})
    for item in getattr(args, "learner_opt", None) or []:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"--learner-opt '{item}' is not KEY=VALUE, e.g. --learner-opt kg_weight=4.")
        if key not in fields:
            raise ConfigError(f"--learner-opt {key}: not an option of method '{args.method}'; valid: "
                              f"{', '.join(sorted(fields))}.")
        opts[key] = coerce_option(key, value, fields[key].default)
    return opts


def method_config_class(method: str) -> type:
    """The config dataclass of ``--method``: a feature-space adapter's or a prompt learner's."""
    from vlprompt.adapters import get_adapter_class, is_adapter
    from vlprompt.prompts import get_prompt_learner_class

    return (get_adapter_class if is_adapter(method) else get_prompt_learner_class)(method).config_class


def _refuse_prompt_flags(args: argparse.Namespace) -> None:
    """An adapter (``--method`` a feature-space adapter) has no prompt: refuse the prompt-learner flags by name."""
    given = [flag for flag, attr in (("--n-ctx", "n_ctx"), ("--ctx-init", "ctx_init"), ("--csc", "csc"),
                                     ("--class-token-position", "class_token_position"))
             if getattr(args, attr, None) is not None]
    if given:
        from vlprompt.adapters import get_adapter_class

        own = sorted(get_adapter_class(args.method).config_class.__dataclass_fields__)
        raise ConfigError(f"{', '.join(given)}: prompt-learner option(s), but --method {args.method} is a feature-space "
                          f"adapter with no prompt; its options (--learner-opt KEY=VALUE): {', '.join(own) or 'none'}.")


def _recipe_values(field: str, skip: tuple[str, ...] = ()) -> str:
    """``"cocoop 10, ivlp 5, …"``: each registered prompt learner's resolved ``field`` (16 shots, no benchmark), for
    the help texts, so that they state what the recipes resolve (a new method appears by registering)."""
    from vlprompt.engine.recipe import method_recipe
    from vlprompt.prompts import list_prompt_learners

    return ", ".join(f"{m} {method_recipe(m, 16, None)[field]:g}" for m in list_prompt_learners() if m not in skip)


def add_train_args(p: argparse.ArgumentParser) -> None:
    """Optimisation options. Every default is ``None`` ("not given"): the library resolves it
    (:func:`vlprompt.engine.recipe.resolve_train_config`, :class:`~vlprompt.engine.config.TrainConfig`), so the
    Python API and the CLI train with the same recipe; the help texts state the resolved values."""
    g = p.add_argument_group("training", RECIPE_NOTE)
    g.add_argument("--epochs", type=int, default=None,
                   help="MAX_EPOCH; default: the method's official recipe: coop 50/100/100/200/200 for 1/2/4/8/16 "
                        "shots (50 for ImageNet), " + _recipe_values("epochs", skip=("coop",)))
    g.add_argument("--batch-size", type=int, default=None,
                   help="train batch size; default: the method's official recipe: " + _recipe_values("batch_size"))
    g.add_argument("--lr", type=float, default=None,
                   help="SGD learning rate; default: the method's official recipe: " + _recipe_values("lr"))
    g.add_argument("--momentum", type=float, default=None, help="SGD momentum (default 0.9)")
    g.add_argument("--weight-decay", type=float, default=None, help="SGD weight decay (default 5e-4)")
    g.add_argument("--warmup-epochs", type=int, default=None, help="epochs at constant warm-up lr (default 1)")
    g.add_argument("--warmup-lr", type=float, default=None, help="warm-up lr (default 1e-5)")
    g.add_argument("--augment", default=None, help=AUGMENT_HELP + " (default online)")
    g.add_argument("--no-flip", dest="flip", action="store_false", default=None,
                   help="no random horizontal flip in training")
    g.add_argument("--crop-scale-min", type=float, default=None,
                   help="RandomResizedCrop minimum area scale (default 0.08)")
    g.add_argument("--workers", type=int, default=None, help="data-loading worker processes (default 0)")
    # --- config files (issue 17): every recorded train setting has a flag, so a run's config.json re-runs it ---
    g.add_argument("--eval-batch-size", type=int, default=None, metavar="N",
                   help="batch size of feature extraction and evaluation (default 100; no effect on training)")
    # --- end config files ---
    g.add_argument("--text-chunk", type=int, default=None, metavar="N",
                   help="encode the class prompts N classes at a time with activation checkpointing: text-encoder "
                        "memory no longer grows with the class count (exact; about one extra text forward per step)")
    g.add_argument("--resume", action="store_true",
                   help="continue the unfinished run in --out after its last completed epoch (rerunning the same "
                        "command does this too); a finished run of the same configuration is kept and reported")
    add_tracking_args(g)  # issue 17: --tensorboard


# --- experiment tracking (issue 17): --tensorboard on train, linear-probe, zeroshot and benchmark ---
TENSORBOARD_HELP = (
    "also write TensorBoard event logs into OUT/tensorboard/ (for a benchmark: into every run folder): train/loss, "
    "train/accuracy, train/lr after every optimiser step, epoch/loss, epoch/train_accuracy, epoch/lr per epoch, "
    "eval/accuracy and eval/macro_f1 at the end (zeroshot, linear-probe: these only), and the run's hyper-parameters; "
    "view with `tensorboard --logdir OUT` (a grid: --logdir RUNS_DIR). A resumed run continues its log. Needs pip install 'vlprompt[tensorboard]'")


def add_tracking_args(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--tensorboard`` (:mod:`vlprompt.engine.tracking`), to ``p`` (a parser or an argument group)."""
    p.add_argument("--tensorboard", action="store_true", help=TENSORBOARD_HELP)
# --- end experiment tracking ---


def add_output_args(p: argparse.ArgumentParser) -> None:
    """--out/--overwrite/--cache-dir/--label."""
    p.add_argument("--out", required=True, help="run folder to write (config.json, metrics.json, …)")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    p.add_argument("--cache-dir", default=None,
                   help="feature cache folder (default $VLPROMPT_CACHE/features or ~/.cache/vlprompt/features); "
                        "'' disables caching")
    p.add_argument("--label", default=None, help="name of this method variant in reports")


#: ``TrainConfig`` field → the ``argparse`` attribute that sets it.
_TRAIN_ARGS = {"epochs": "epochs", "batch_size": "batch_size", "lr": "lr", "momentum": "momentum",
               "weight_decay": "weight_decay", "warmup_epochs": "warmup_epochs", "warmup_lr": "warmup_lr",
               "augment": "augment", "flip": "flip", "crop_scale_min": "crop_scale_min", "precision": "precision",
               "num_workers": "workers", "text_chunk": "text_chunk", "eval_batch_size": "eval_batch_size"}


def train_config(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig holding exactly what the user passed (absent or ``None`` arguments keep ``TrainConfig``'s
    defaults; ``epochs``/``batch_size`` stay ``None`` for the library to resolve from the method's recipe when the
    run starts, see :func:`vlprompt.engine.recipe.resolve_train_config`)."""
    given = {field: getattr(args, attr) for field, attr in _TRAIN_ARGS.items() if getattr(args, attr, None) is not None}
    return TrainConfig(**given)


def run_spec(args: argparse.Namespace) -> RunSpec:
    """RunSpec from parsed arguments."""
    from vlprompt.engine.spec import RunSpec

    learner = learner_options(args)
    return RunSpec(
        dataset=args.dataset, out=args.out, root=args.root, shots=getattr(args, "shots", None) or None,
        seed=args.seed, subsample=args.subsample, backbone=getattr(args, "backbone", None) or "RN50",
        pretrained=args.pretrained, method=getattr(args, "method", "coop"), learner=learner,
        train=train_config(args), device=args.device, cache_dir=args.cache_dir,
        classnames_file=args.classnames_file, strict=args.strict, label=args.label, overwrite=args.overwrite,
        resume=getattr(args, "resume", False), allow_outside_root=getattr(args, "allow_outside_root", False),
        fewshot_file=getattr(args, "fewshot_file", None),  # issue 12 §5
        tensorboard=getattr(args, "tensorboard", False),  # issue 17: experiment tracking
        expect=getattr(args, "replay_expect", None),  # issue 17: --config RUN/config.json checks the recorded data
    )


def print_metrics(metrics: dict, out: str) -> None:
    """One-line summary of a run's metrics on stdout (once: by rank 0 under torchrun). The run's execution has
    closed by now, so the rank is read from torchrun's ``$RANK`` (:func:`vlprompt.engine.launch.is_main`)."""
    from vlprompt.engine.launch import is_main

    if not is_main():
        return
    print(f"accuracy {metrics['accuracy']:.2f}%  macro-F1 {metrics['macro_f1']:.2f}%  "
          f"({metrics['num_test']} test images)  → {out}")
