"""One job of a grid (:class:`~vlprompt.runs.grid.Job`) through the engine's run functions: train, zero-shot, linear
probe or a feature-space adapter (:func:`vlprompt.runs.adapter_run.adapter_run`), then its evaluations; finished runs and evaluations are not repeated. Used by every executor
(:mod:`vlprompt.runs.executors`) and by :func:`vlprompt.runs.grid_run.run_benchmark`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from vlprompt.errors import VLPromptError
from vlprompt.runs.grid import BASELINES, BenchmarkConfig, Evaluation, Job, dataset_dirname, learner_of

_logger = logging.getLogger(__name__)


@dataclass
class BenchmarkSummary:
    """What :func:`run_benchmark` did: finished runs, skipped (already finished) runs, failures, the report.

    ``missing``: the datasets that could not be found (:func:`missing_datasets`) → why, the message naming the
    folder and the fix; their unfinished jobs are ``not_started``, and are also in ``failed`` with that message.
    """

    jobs: list[Job]
    ran: list[Job] = field(default_factory=list)
    skipped: list[Job] = field(default_factory=list)
    failed: list[tuple[Job, str]] = field(default_factory=list)
    report: dict | None = None
    missing: dict[str, str] = field(default_factory=dict)
    not_started: list[Job] = field(default_factory=list)

    def runnable(self) -> list[Job]:
        """The jobs an executor is given (finished ones included, to be counted as skipped): all but the
        ``not_started``."""
        return [j for j in self.jobs if j not in self.not_started]


def job_recipe(job: Job, cfg: BenchmarkConfig) -> dict | None:
    """``{"epochs", "batch_size"}`` a learned job will train with (the user's values, else its method's recipe, by
    :func:`vlprompt.engine.recipe.resolve_train_config`); ``None`` for the baselines. Custom data is resolved as a
    dataset that is not ImageNet (its name is known only once it is loaded)."""
    from vlprompt.adapters import is_adapter

    if job.method in BASELINES or is_adapter(job.method):
        return None
    from vlprompt.data.benchmarks import BENCHMARKS
    from vlprompt.engine.recipe import resolve_train_config

    name = job.dataset if job.dataset in BENCHMARKS else None
    train = resolve_train_config(cfg.train, learner_of(job.method)[0], job.shots, name)
    return {"epochs": train.epochs, "batch_size": train.batch_size}


def describe(job: Job, cfg: BenchmarkConfig) -> str:
    """One line of ``--dry-run``: status, protocol, dataset, method, shots, seed, classes (base-to-new), recipe, run
    folder, then each evaluation target and its folder."""
    recipe = job_recipe(job, cfg)
    parts = ["skip" if job.done else "run ", job.protocol, dataset_dirname(job.dataset), job.method,
             f"shots {job.shots if job.shots is not None else 0}", f"seed {job.seed}"]
    if job.subsample != "all":
        parts.append(f"classes {job.subsample}")
    if recipe:
        parts.append(f"epochs {recipe['epochs']} batch {recipe['batch_size']}")
    views = _adapter_views(job, cfg)
    if views is not None:
        parts.append(f"adapter, views {views}")
    line = "  ".join(parts) + f"  → {job.out}"
    for e in job.evaluations:
        line += f"  | eval {e.name}{' (done)' if e.done else ''} → {e.out}"
    return line


def _adapter_views(job: Job, cfg: BenchmarkConfig) -> int | None:
    """The number of augmented views an adapter job fits on (0: none); ``None`` for any other method."""
    from vlprompt.adapters import get_adapter_class, is_adapter

    if not is_adapter(job.method):
        return None
    from vlprompt.runs.adapter_run import grid_train_config, resolve_views

    return resolve_views(get_adapter_class(job.method), grid_train_config(cfg.train, job.method).augment)


def _spec(cfg: BenchmarkConfig, dataset: str, out: Path, shots: int | None, seed: int, subsample: str, **extra):
    """A fresh :class:`~vlprompt.engine.run.RunSpec` of one run (``extra``: ``method``, ``learner``, ``label``,
    ``train``, default the grid's)."""
    from vlprompt.engine.run import RunSpec

    extra.setdefault("train", cfg.train)
    return RunSpec(dataset=dataset, out=str(out), root=cfg.root, shots=shots, seed=seed, subsample=subsample,
                   backbone=cfg.backbone, pretrained=cfg.pretrained, device=cfg.device,
                   cache_dir=cfg.cache_dir, tensorboard=cfg.tensorboard,
                   state_every_seconds=cfg.state_every_seconds, **extra)


def _labelled(job: Job) -> dict:
    return {} if job.label is None else {"label": job.label}


def _zeroshot(cfg: BenchmarkConfig, job: Job, dataset: str, out: Path, subsample: str, backbone) -> dict:
    from vlprompt.engine.run import zeroshot_run

    spec = _spec(cfg, dataset, out, None, job.seed, subsample, **_labelled(job))
    templates = list(job.templates) if job.templates else [dataset_template(dataset, cfg.root)]
    return zeroshot_run(spec, templates, backbone=backbone)


def _train(job: Job, cfg: BenchmarkConfig, backbone) -> dict:
    """The job's own run: zero-shot, the linear probe, or a prompt trained with its method's recipe."""
    if job.method == "zeroshot":
        return _zeroshot(cfg, job, job.dataset, job.out, job.subsample, backbone)
    if job.method == "linear-probe":
        from vlprompt.engine.baselines import linear_probe_run

        return linear_probe_run(_spec(cfg, job.dataset, job.out, job.shots, job.seed, job.subsample,
                                      **_labelled(job)), backbone=backbone)
    from vlprompt.adapters import is_adapter

    if is_adapter(job.method):  # fitted with its own recipe: the grid's prompt-optimisation settings are not its
        from vlprompt.runs.adapter_run import adapter_run, grid_train_config

        return adapter_run(_spec(cfg, job.dataset, job.out, job.shots, job.seed, job.subsample, method=job.method,
                                 learner=dict(job.learner), train=grid_train_config(cfg.train, job.method),
                                 **_labelled(job)), backbone=backbone)
    from vlprompt.engine.run import train_run

    # the registered learner and the variant's options (coop-csc: csc), the user's, then the job's own; epochs and
    # batch size the user left unset are filled from the method's own recipe by train_run (resolve_train_config)
    method, opts = learner_of(job.method)
    spec = _spec(cfg, job.dataset, job.out, job.shots, job.seed, job.subsample, method=method,
                 learner={**opts, **_options_of(method, cfg.learner), **job.learner}, **_labelled(job))
    return train_run(spec, backbone=backbone)


def _options_of(method: str, learner: dict) -> dict:
    """The grid's learner options that ``method``'s config has (``--learner-opt depth_vision=4`` reaches the deep
    methods, not CoOp); every option of CoOp's (``n_ctx``, ``ctx_init``, …) reaches every method that has it."""
    from vlprompt.prompts import get_prompt_learner_class

    fields = get_prompt_learner_class(method).config_class.__dataclass_fields__
    return {k: v for k, v in learner.items() if k in fields}


class Backbones:
    """The frozen backbones one worker has built, each once per (name, pretrained, precision, device), shared by
    the worker's jobs and their evaluations."""

    def __init__(self) -> None:
        self._built: dict[tuple, object] = {}

    def get(self, cfg: BenchmarkConfig, precision: str | None = None):
        """The backbone of ``cfg`` in ``precision`` (``None``: ``cfg.train.precision``), built at the first call."""
        key = (cfg.backbone, cfg.pretrained, precision or cfg.train.precision, cfg.device)
        if key not in self._built:
            self._built[key] = build_backbone(cfg, precision)
        return self._built[key]


#: The precision :func:`vlprompt.engine.run.eval_run` builds a prompt's backbone in (``create_backbone``'s default).
EVAL_PRECISION = "fp32"


def _evaluate(job: Job, ev: Evaluation, cfg: BenchmarkConfig, backbone, backbones: Backbones) -> dict:
    """One evaluation of the job's prompt (zero-shot: zero-shot CLIP itself) on ``ev``'s classes or dataset."""
    if job.method == "zeroshot":
        return _zeroshot(cfg, job, ev.dataset, ev.out, ev.subsample, backbone)
    from vlprompt.engine.run import eval_run

    # the prompt is rebuilt from the run folder for the target's class names (PromptClassifier.load), on the fp32
    # backbone eval_run would build itself: the grid's when it trains in fp32, else the worker's fp32 one
    same = backbone is not None and cfg.train.precision == EVAL_PRECISION
    return eval_run(str(job.out), _spec(cfg, ev.dataset, ev.out, None, job.seed, ev.subsample),
                    backbone=backbone if same else backbones.get(cfg, EVAL_PRECISION))


def run_job(job: Job, cfg: BenchmarkConfig, backbone=None, *, backbones: Backbones | None = None) -> dict:
    """Run one job into its folder (through :func:`vlprompt.engine.run.train_run`, ``zeroshot_run`` or
    :func:`vlprompt.engine.baselines.linear_probe_run`), then each of its unfinished evaluations (``eval_run``);
    ``backbone`` reuses a built one, and the evaluations of a prompt use ``backbones`` (``None``: the job's own, so
    its evaluations build at most one backbone between them).

    Returns:
        The job's own metrics; with evaluations, plus ``"evaluations"``: ``{name: accuracy}`` of every evaluation.

    Raises:
        VLPromptError: the run failed (its evaluations are not attempted), or some evaluation failed: the others
            were still run, and the message names every failed target.
    """
    if job.trained:  # an interrupted grid: the run finished, some evaluation did not
        metrics = json.loads((job.out / "metrics.json").read_text(encoding="utf-8"))
    else:
        metrics = _train(job, cfg, backbone)
    if not job.evaluations:
        return metrics
    accuracies, failures = {}, []
    backbones = backbones if backbones is not None else Backbones()
    for ev in job.evaluations:
        if ev.done:
            accuracies[ev.name] = json.loads((ev.out / "metrics.json").read_text(encoding="utf-8"))["accuracy"]
            continue
        try:  # one missing target must not cost the others
            accuracies[ev.name] = _evaluate(job, ev, cfg, backbone, backbones)["accuracy"]
        except VLPromptError as e:
            failures.append((ev, e))
    if failures:
        raise VLPromptError("; ".join(f"eval {ev.name} ({ev.out}): {e}" for ev, e in failures)) from failures[0][1]
    return {**metrics, "evaluations": accuracies}


def missing_datasets(jobs: list[Job], root: str | None) -> dict[str, str]:
    """The datasets of the unfinished ``jobs`` whose folder or file is missing → the error message
    (:func:`vlprompt.data.check_dataset`: the layout is checked, nothing is read), in plan order."""
    from vlprompt.data import check_dataset

    out = {}
    for dataset in dict.fromkeys(j.dataset for j in jobs if not j.done):
        try:
            check_dataset(dataset, root)
        except VLPromptError as e:
            out[dataset] = str(e)
    return out


def dataset_template(dataset: str, root: str | None) -> str:
    """The hand-crafted zero-shot template of a benchmark (custom data: the template its loader reports)."""
    from vlprompt.data import get_templates, load_dataset
    from vlprompt.data.benchmarks import BENCHMARKS

    if dataset in BENCHMARKS:
        return get_templates("dataset", BENCHMARKS[dataset].template, dataset)[0]
    return load_dataset(dataset, root).template


def build_backbone(cfg: BenchmarkConfig, precision: str | None = None):
    """The frozen backbone of ``cfg`` on its device, in ``precision`` (``None``: ``cfg.train.precision``)."""
    from vlprompt.backbones import create_backbone
    from vlprompt.engine.pipeline import check_precision, resolve_device

    device = resolve_device(cfg.device)
    precision = precision or cfg.train.precision
    check_precision(precision, device)
    return create_backbone(cfg.backbone, cfg.pretrained, device=device, precision=precision)


__all__ = ["EVAL_PRECISION", "BenchmarkSummary", "Backbones", "build_backbone", "dataset_template", "describe", "job_recipe", "missing_datasets",
           "run_job"]
