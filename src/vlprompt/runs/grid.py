"""The grid of the four protocols of the field, planned as run folders (nothing here loads data or a model).

Protocols (``--protocol``):

- ``fewshot`` (CoOp paper): every dataset × method × shots × seed, trained and tested on all classes.
  Layout under ``RUNS_DIR``: ``<dataset>/<method>/<K>shots/seed<k>/``; zero-shot once per dataset:
  ``<dataset>/zeroshot/``.
- ``base2new`` (CoCoOp paper): train on the base classes (the first ⌈n/2⌉, ``--subsample base``), then evaluate the
  same prompt on the new ones; H = 2·base·new/(base + new). 16 shots by default. Layout:
  ``base2new/<dataset>/<method>/<K>shots/seed<k>/`` (its test accuracy is on the base classes) and ``…/eval_new/``.
- ``dg`` (domain generalization): train on ImageNet (``source``), evaluate the same prompt on ImageNetV2, -Sketch,
  -A and -R, each with its own classes. The training runs are the few-shot grid's ImageNet runs
  (``imagenet/<method>/<K>shots/seed<k>/``, shared with a few-shot grid in the same ``RUNS_DIR``); each target is
  ``…/seed<k>/eval_<target>/`` (as ``vlprompt eval`` names it). Zero-shot CLIP: ``<target>/zeroshot/``.
- ``xd`` (cross-dataset transfer, CoCoOp paper): as ``dg`` with the other 10 few-shot benchmarks as targets.

The official procedure (``CoOp:COCOOP.md``, ``CoOp:scripts/cocoop/{base2new,xd}_{train,test}.sh``): base-to-new
trains with ``SHOTS=16`` and ``DATASET.SUBSAMPLE_CLASSES base``, the base accuracy is the training run's own test
result, and the trained model is evaluated with ``SUBSAMPLE_CLASSES new``; cross-dataset and domain generalization
train once on ``imagenet`` with ``SHOTS=16`` and evaluate that model (``--eval-only --model-dir``) on each target,
with seeds 1–3.

Methods: every registered prompt learner (:func:`vlprompt.prompts.list_prompt_learners`), each trained with its own
official recipe where the user set no value (resolved by :func:`vlprompt.engine.recipe.resolve_train_config` when
the run starts, and recorded resolved in its ``config.json``), the variant ``coop-csc`` (CoOp with class-specific
context), every registered feature-space adapter (:func:`vlprompt.adapters.list_adapters`, fitted with its own recipe
by :func:`vlprompt.runs.adapter_run.adapter_run`) and the baselines ``zeroshot`` and ``linear-probe``. A
class-specific context has no vectors for classes it was not trained on and the linear probe no weights for them,
so these two are refused by the protocols that evaluate on other classes, as is an adapter without ``new_classes``
by base-to-new and cross-dataset transfer (:func:`transfer_problem`; domain generalization keeps the classes).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from vlprompt.engine.config import TrainConfig
from vlprompt.errors import ConfigError

Protocol = Literal["fewshot", "base2new", "dg", "xd"]
PROTOCOLS: tuple[str, ...] = get_args(Protocol)
#: Protocols that evaluate a learned prompt on classes or datasets it was not trained on.
TRANSFER_PROTOCOLS = ("base2new", "dg", "xd")
#: Shots per class by protocol (CoOp paper: 1–16; CoCoOp's base-to-new and cross-dataset runs: 16).
DEFAULT_SHOTS: dict[str, tuple[int, ...]] = {"fewshot": (1, 2, 4, 8, 16), "base2new": (16,), "dg": (16,),
                                             "xd": (16,)}
#: Variants of a registered learner: grid name → (learner, learner options).
VARIANTS: dict[str, tuple[str, dict]] = {"coop-csc": ("coop", {"csc": True})}
BASELINES = ("zeroshot", "linear-probe")
#: The methods of a grid when none are named (the CoOp paper's few-shot comparison).
DEFAULT_METHODS = ("coop", "coop-csc", "zeroshot", "linear-probe")
#: Methods that cannot be evaluated on classes they were not trained on, and why.
NOT_TRANSFERABLE = {
    "coop-csc": "a class-specific context has no context vectors for classes it was not trained on",
    "linear-probe": "a linear probe has no weights for classes it was not trained on",
}


def grid_methods() -> list[str]:
    """Every method a grid runs: each registered prompt learner (followed by its variants), each registered
    feature-space adapter (:func:`vlprompt.adapters.list_adapters`), then the baselines."""
    from vlprompt.adapters import list_adapters
    from vlprompt.prompts import list_prompt_learners

    out = []
    for name in list_prompt_learners():
        out.append(name)
        out += [v for v, (base, _) in VARIANTS.items() if base == name]
    return out + list_adapters() + list(BASELINES)


def transfer_problem(method: str, protocol: str) -> str | None:
    """Why ``method`` cannot run ``protocol`` (``None``: it can).

    A class-specific context, the linear probe and a feature-space adapter without ``new_classes`` hold something
    per trained class only: refused by base-to-new and cross-dataset transfer, which evaluate on other classes. Such
    an adapter runs domain generalization, whose targets have the source's classes or a subset of them (ImageNet-A
    and -R: 200 of the 1000), evaluated on the logits of those classes."""
    from vlprompt.adapters import get_adapter_class, is_adapter

    if protocol not in TRANSFER_PROTOCOLS:
        return None
    if method in NOT_TRANSFERABLE:
        return NOT_TRANSFERABLE[method]
    if is_adapter(method) and not get_adapter_class(method).new_classes and protocol != "dg":
        return (f"the {method} adapter holds something per fitted class only (new_classes=False) and has nothing for "
                "classes it was not fitted on")
    return None


def learner_of(method: str) -> tuple[str, dict]:
    """``(registered learner, its options)`` of a learned grid method (``coop-csc`` → ``("coop", {"csc": True})``)."""
    if method in VARIANTS:
        base, opts = VARIANTS[method]
        return base, dict(opts)
    return method, {}


def default_methods(protocol: str) -> tuple[str, ...]:
    """The methods of a grid when ``--methods`` is not given: the few-shot comparison of the CoOp paper, or every
    registered prompt learner and zero-shot CLIP for the protocols that transfer."""
    if protocol == "fewshot":
        return DEFAULT_METHODS
    from vlprompt.prompts import list_prompt_learners

    return (*list_prompt_learners(), "zeroshot")


def fewshot_benchmarks() -> list[str]:
    """The 11 few-shot benchmarks of the paper (every built-in dataset except the ImageNet variants used for DG)."""
    from vlprompt.data import IMAGENET_FAMILY, list_datasets

    return [d for d in list_datasets() if d not in IMAGENET_FAMILY[1:]]


def protocol_targets(protocol: str, source: str = "imagenet") -> list[str]:
    """The standard evaluation targets of ``dg`` (the ImageNet variants) and ``xd`` (the 10 other benchmarks)."""
    from vlprompt.data import IMAGENET_FAMILY

    if protocol == "dg":
        return list(IMAGENET_FAMILY[1:])
    if protocol == "xd":
        return [d for d in fewshot_benchmarks() if d != source]
    raise ConfigError(f"protocol '{protocol}' has no evaluation targets; dg and xd have.")


def _split(value: str | list | tuple) -> list[str]:
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    return [s.strip() for s in items if s.strip()]


def parse_datasets(value: str | list[str]) -> list[str]:
    """``all`` or a comma-separated list of benchmark names (official names accepted) and custom specs.

    Raises:
        DataError: an unknown benchmark name (with close matches).
        ConfigError: an empty list.
    """
    from vlprompt.data import get_benchmark
    from vlprompt.data.load import CUSTOM_PREFIXES

    names = _split(value)
    if names == ["all"]:
        return fewshot_benchmarks()
    if not names:
        raise ConfigError("--datasets is empty; pass e.g. 'oxford_pets,dtd' or 'all' (the 11 few-shot benchmarks).")
    return [n if n.startswith(CUSTOM_PREFIXES) else get_benchmark(n).name for n in names]


def parse_ints(value: str | list[int], flag: str) -> list[int]:
    """``"1,2,4"`` → ``[1, 2, 4]`` (order kept, duplicates dropped)."""
    try:
        out = [int(v) for v in _split(value)]
    except ValueError as e:
        raise ConfigError(f"{flag} '{value}' must be comma-separated integers, e.g. 1,2,4,8,16.") from e
    if not out:
        raise ConfigError(f"{flag} is empty; pass comma-separated integers, e.g. 1,2,4,8,16.")
    return list(dict.fromkeys(out))


def dataset_dirname(dataset: str) -> str:
    """Folder name of a dataset under ``RUNS_DIR``: the benchmark name, or the custom data's last path component —
    for a split file with the generic name ``split.json`` (each micro task's folder holds one), its folder's name, so
    that several such datasets in one grid do not collide."""
    path = dataset.split(":", 1)[-1].rstrip("/\\")
    base = os.path.basename(path)
    if dataset.startswith("split:") and base == "split.json":
        base = os.path.basename(os.path.dirname(path)) or base
    base = base or "dataset"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", base)


@dataclass(frozen=True)
class BenchmarkConfig:
    """The grid and the settings shared by every run of a benchmark.

    Attributes:
        datasets: ``fewshot``/``base2new``: the datasets trained and tested on (benchmark names or custom specs:
            ``folder:PATH``, ``csv:PATH``, ``split:PATH.json``); ``dg``/``xd``: the evaluation targets (empty: the
            protocol's own, :func:`protocol_targets`).
        shots: shots per class (positive); ``None``: :data:`DEFAULT_SHOTS` of the protocol.
        seeds: seeds (the paper: 1, 2, 3).
        methods: a subset of :func:`grid_methods`; ``None``: :func:`default_methods` of the protocol.
        out: ``RUNS_DIR``.
        root: the ``$DATA`` folder of the benchmarks.
        backbone, pretrained, device: the backbone of every run.
        learner: prompt-learner options the user chose, given to every learned method whose config has them
            (``n_ctx``, ``ctx_init``, ``class_token_position``; ``--learner-opt``: e.g. ``depth_vision``); what is
            not set takes each method's own default (CoOp M=16 random, CoCoOp and KgCoOp M=4 from "a photo of a").
        train: optimisation settings (``epochs``/``batch_size`` ``None``: each method's official recipe).
        cache_dir: feature cache folder (``None``: the default; ``""``: off, which defeats the reuse).
        fail_fast: stop at the first failed run instead of continuing with the rest of the grid.
        tensorboard: every run writes TensorBoard events into its own ``<run folder>/tensorboard/``, so
            ``tensorboard --logdir RUNS_DIR`` compares the grid (:mod:`vlprompt.engine.tracking`). Not a setting of
            the recipe: a grid can be resumed with or without it.
        protocol: ``fewshot``, ``base2new``, ``dg`` or ``xd`` (see the module docstring).
        source: the training dataset of ``dg`` and ``xd`` (ImageNet in the papers).
        state_every_seconds: save the resumable training state at most this often (0: after every epoch; see
            :class:`~vlprompt.engine.run.RunSpec`). Not a setting of the recipe.
    """

    datasets: tuple[str, ...] = ()
    shots: tuple[int, ...] | None = None
    seeds: tuple[int, ...] = (1, 2, 3)
    methods: tuple[str, ...] | None = None
    out: str = "runs"
    root: str | None = None
    backbone: str = "RN50"
    pretrained: str | None = None
    device: str = "auto"
    learner: dict = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    cache_dir: str | None = None
    fail_fast: bool = False
    tensorboard: bool = False
    protocol: Protocol = "fewshot"
    source: str = "imagenet"
    state_every_seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"--protocol '{self.protocol}': expected one of {', '.join(PROTOCOLS)}.")
        # fill the protocol's defaults (frozen: set once here, never changed afterwards)
        if self.shots is None:
            object.__setattr__(self, "shots", DEFAULT_SHOTS[self.protocol])
        if self.methods is None:
            object.__setattr__(self, "methods", default_methods(self.protocol))
        if self.protocol in ("dg", "xd") and not self.datasets:
            object.__setattr__(self, "datasets", tuple(protocol_targets(self.protocol, self.source)))
        problems = self._method_problems()
        if not self.datasets:
            problems.append("--datasets is empty")
        if any(s < 1 for s in self.shots) or (not self.shots and set(self.methods) - {"zeroshot"}):
            problems.append(f"--shots {list(self.shots)}: every shot count must be ≥ 1 (the few-shot protocol)")
        if not self.seeds:
            problems.append("--seeds is empty")
        names = [*self.datasets, *((self.source,) if self.protocol in ("dg", "xd") else ())]
        dirs = [dataset_dirname(d) for d in names]
        if len(set(dirs)) != len(dirs):
            what = "--datasets and --source" if self.protocol in ("dg", "xd") else "--datasets"
            problems.append(f"{what} {names} give the same folder name twice ({dirs}); the source of dg/xd cannot "
                            "be one of its targets")
        if problems:
            raise ConfigError("; ".join(problems) + ".")

    def _method_problems(self) -> list[str]:
        valid = grid_methods()
        unknown = [m for m in self.methods if m not in valid]
        if unknown or not self.methods:
            return [f"--methods {','.join(self.methods) or '(empty)'}: expected a comma-separated subset of "
                    f"{','.join(valid)}"]
        out = []
        if self.protocol in TRANSFER_PROTOCOLS:
            for m in self.methods:
                why = transfer_problem(m, self.protocol)
                if why:
                    out.append(f"--methods {m} cannot run the {self.protocol} protocol: {why} "
                               f"(use --protocol fewshot{'' if self.protocol == 'dg' else ' or dg'} for it)")
            if self.learner.get("csc"):
                out.append(f"--protocol {self.protocol} with class-specific context: "
                           f"{NOT_TRANSFERABLE['coop-csc']}")
        return out

    @property
    def training_datasets(self) -> tuple[str, ...]:
        """The datasets prompts are trained on: ``(source,)`` for ``dg``/``xd``, else ``datasets``."""
        return (self.source,) if self.protocol in ("dg", "xd") else self.datasets

    def settings(self) -> dict:
        """What must not change between the runs of one ``RUNS_DIR`` (recorded in ``benchmark.json``)."""
        train = {k: v for k, v in self.train.to_dict().items() if k not in ("num_workers", "eval_batch_size")}
        pretrained = self.pretrained
        if self.backbone == "microclip" and pretrained in (None, "shipped"):  # by name: a later default cannot
            from vlprompt.backbones.microclip import DEFAULT_WEIGHTS  # change what the folder's runs were made on

            pretrained = DEFAULT_WEIGHTS
        return {"backbone": self.backbone, "pretrained": pretrained, "learner": dict(self.learner), "train": train}

    def grid(self) -> dict:
        """The grid itself (informational in ``benchmark.json``: a larger grid may extend a smaller one)."""
        out = {"datasets": list(self.datasets), "shots": list(self.shots), "seeds": list(self.seeds),
               "methods": list(self.methods)}
        return {**out, "source": self.source} if self.protocol in ("dg", "xd") else out


@dataclass(frozen=True)
class Evaluation:
    """One evaluation of a job's prompt (or of zero-shot CLIP) on another class set or dataset.

    Attributes:
        name: what the report calls it (``new`` for base-to-new, else the target dataset's folder name).
        dataset: the dataset evaluated on.
        subsample: ``new`` (base-to-new) or ``all``.
        out: its run folder.
    """

    name: str
    dataset: str
    subsample: str
    out: Path

    @property
    def done(self) -> bool:
        """Whether its folder holds a finished run (``metrics.json``)."""
        return (self.out / "metrics.json").exists()


@dataclass(frozen=True)
class Job:
    """One run of the grid (``shots=None`` for zero-shot) and the evaluations that follow it.

    Attributes:
        dataset, method, shots, seed: what is trained (or, for zero-shot, tested).
        out: its run folder.
        protocol: the protocol that planned it.
        subsample: the classes it trains and tests on (``base`` for base-to-new, else ``all``).
        evaluations: the evaluations of its prompt on the protocol's targets (none for few-shot).
        label: the run's label in ``config.json`` and the report (``None``: the method's default label).
        learner: learner options of this job over the grid's (a grid of variants, e.g. the demo's).
        templates: zero-shot templates of a ``zeroshot`` job and of its evaluations (``None``: the dataset's
            hand-crafted template).
    """

    dataset: str
    method: str
    shots: int | None
    seed: int
    out: Path
    protocol: str = "fewshot"
    subsample: str = "all"
    evaluations: tuple[Evaluation, ...] = ()
    label: str | None = None
    learner: dict = field(default_factory=dict, hash=False)
    templates: tuple[str, ...] | None = None

    @property
    def trained(self) -> bool:
        """Whether its own run folder holds a finished run (``metrics.json``)."""
        return (self.out / "metrics.json").exists()

    @property
    def done(self) -> bool:
        """Whether the run and every one of its evaluations are finished."""
        return self.trained and all(e.done for e in self.evaluations)

    def folders(self) -> list[Path]:
        """Every run folder this job writes: its own, then its evaluations'."""
        return [self.out, *(e.out for e in self.evaluations)]

    def __str__(self) -> str:
        prefix = "base2new/" if self.protocol == "base2new" else ""
        return f"{prefix}{dataset_dirname(self.dataset)}/{self.method}" + (
            f"/{self.shots}shots/seed{self.seed}" if self.shots is not None else "")


def _evaluations(cfg: BenchmarkConfig, dataset: str, out: Path, zeroshot: bool) -> tuple[Evaluation, ...]:
    """The evaluations of a job trained on ``dataset`` into ``out`` (zero-shot: its own runs on each target)."""
    if cfg.protocol == "base2new":
        return (Evaluation("new", dataset, "new", out / "eval_new"),)
    if cfg.protocol in ("dg", "xd"):
        root = Path(cfg.out)
        return tuple(Evaluation(dataset_dirname(t), t, "all",
                                root / dataset_dirname(t) / "zeroshot" if zeroshot else out / f"eval_{dataset_dirname(t)}")
                     for t in cfg.datasets)
    return ()


def plan(cfg: BenchmarkConfig) -> list[Job]:
    """The grid in execution order: per training dataset, zero-shot first, then each method × shots × seed."""
    jobs = []
    root = Path(cfg.out) / ("base2new" if cfg.protocol == "base2new" else "")
    subsample = "base" if cfg.protocol == "base2new" else "all"
    for ds in cfg.training_datasets:
        base = root / dataset_dirname(ds)
        if "zeroshot" in cfg.methods:
            out = base / "zeroshot"
            jobs.append(Job(ds, "zeroshot", None, cfg.seeds[0], out, cfg.protocol, subsample,
                            _evaluations(cfg, ds, out, zeroshot=True)))
        for method in (m for m in cfg.methods if m != "zeroshot"):
            for shots in cfg.shots:
                for seed in cfg.seeds:
                    out = base / method / f"{shots}shots" / f"seed{seed}"
                    jobs.append(Job(ds, method, shots, seed, out, cfg.protocol, subsample,
                                    _evaluations(cfg, ds, out, zeroshot=False)))
    return jobs


__all__ = ["BASELINES", "DEFAULT_METHODS", "DEFAULT_SHOTS", "PROTOCOLS", "TRANSFER_PROTOCOLS", "VARIANTS",
           "BenchmarkConfig", "Evaluation", "Job", "Protocol", "dataset_dirname", "default_methods",
           "fewshot_benchmarks", "grid_methods", "learner_of", "parse_datasets", "parse_ints", "plan",
           "protocol_targets", "transfer_problem"]
