"""Baseline runs that learn no prompt: the linear probe (CoOp ``lpclip`` protocol) as a run folder.

A linear-probe run folder has the same contract as a CoOp run (DESIGN.md §7): ``config.json`` first (label
``"Linear probe"``, method ``"linear-probe"``, the exact few-shot train/val image lists), the fitted probe as
``probe.safetensors`` (``coef``, ``intercept``, ``classes``) + ``probe.json`` (C, its search trace, class names,
backbone identity), and ``metrics.json`` last.

Protocol (reference §5): unnormalised image features extracted with the **test** transform, L-BFGS logistic
regression, ``C`` chosen on the few-shot val set by the coarse grid and the 8-step log-space search
(:func:`vlprompt.eval.linear_probe.fit_linear_probe`). One deliberate difference: the few-shot train/val subsets are
the **same ones CoOp uses** for the same dataset, shots and seed (:func:`vlprompt.engine.pipeline.prepare_data`),
whereas the official ``lpclip/linear_probe.py`` draws its own subsets with ``np.random.choice`` — so here a
linear-probe number and a CoOp number for one seed are measured on identical training images.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path

from vlprompt._io import atomic_save_safetensors, atomic_write_json
from vlprompt.engine import pipeline as P
from vlprompt.engine.spec import RunSpec
from vlprompt.errors import ArtifactError, ConfigError
from vlprompt.runs.folder import RunInputs, base_config, load_inputs, log_eval_only, prepare_out, test_features

_logger = logging.getLogger(__name__)

LINEAR_PROBE_METHOD = "linear-probe"
LINEAR_PROBE_LABEL = "Linear probe"
PROBE_WEIGHTS = "probe.safetensors"
PROBE_JSON = "probe.json"


def linear_probe_run(
    spec: RunSpec, progress: bool = False, backbone=None, *, num_steps: int = 8, max_iter: int = 1000
) -> dict:
    """Fit the linear probe on the few-shot subset of ``spec`` and evaluate it on the test split; writes a run folder.

    Features of the few-shot train and val images and of the test images come from the feature cache (test
    transform, unnormalised), under the same cache keys as CoOp's evaluation features, so a benchmark extracts them
    once for every method.

    Args:
        spec: the run (left unchanged; the run records ``method`` ``linear-probe`` and the probe settings as its
            ``learner``); ``spec.train`` only contributes ``precision``/``eval_batch_size``/``num_workers``.
        progress: show feature-extraction progress bars.
        backbone: reuse an already-built backbone (must be ``spec.backbone``).
        num_steps: rounds of the log-space search on ``C`` (official: 8).
        max_iter: L-BFGS iteration cap (official: 1000).

    Returns:
        The metrics written to ``metrics.json``: test ``accuracy``/``macro_f1``/``per_class_accuracy``/``num_test``,
        ``val_accuracy`` (of the chosen probe on the selection set), ``C``, ``selection``, ``train_seconds`` (feature
        extraction of the few-shot images + the C search), ``eval_seconds``, ``peak_memory_mb``.

    Raises:
        ConfigError: the dataset has no training images, or fewer than two classes in the few-shot subset.
    """
    from vlprompt.eval.linear_probe import linear_probe_metrics

    if spec.tensorboard:
        from vlprompt.runs.tracking import require_tensorboard

        require_tensorboard()
    out = prepare_out(spec.out, spec.overwrite)
    for name in (PROBE_WEIGHTS, PROBE_JSON):
        (out / name).unlink(missing_ok=True)  # an unfinished earlier attempt must not leave a stale probe behind
    # the run's own spec, derived (the caller's is frozen and stays as given)
    spec = replace(spec, method=LINEAR_PROBE_METHOD, learner=_probe_settings(num_steps, max_iter))
    inputs = load_inputs(spec, backbone)
    device, data, backbone = inputs.device, inputs.data, inputs.backbone
    P.seed_everything(spec.seed)
    config = base_config(spec, data, backbone, None, spec.label or LINEAR_PROBE_LABEL)
    atomic_write_json(out / "config.json", config)
    if not data.train:
        raise ConfigError(f"dataset '{spec.dataset}' has no training images for the linear probe.")

    t0 = time.perf_counter()
    result = _fit_probe(spec, inputs, out, progress, num_steps, max_iter)
    train_seconds = time.perf_counter() - t0

    t1 = time.perf_counter()
    test_x = test_features(spec, backbone, data, "test", data.splits.test, progress)
    metrics = linear_probe_metrics(result, test_x, P.labels_of(data.splits.test), data.splits.num_classes)
    metrics.update(val_accuracy=result.val_accuracy, C=result.C, selection=result.selection,
                   train_seconds=train_seconds, eval_seconds=time.perf_counter() - t1,
                   peak_memory_mb=P.peak_memory_mb(device))
    log_eval_only(spec, out, metrics, config)  # --tensorboard: eval/* (accuracy, macro_f1, val_accuracy) at step 0
    atomic_write_json(out / "metrics.json", metrics)
    return metrics


def _probe_settings(num_steps: int, max_iter: int) -> dict:
    """The probe's settings, recorded as the run's ``learner`` in ``config.json``."""
    return {"classifier": "LogisticRegression(solver=lbfgs, penalty=l2)", "num_steps": num_steps,
            "max_iter": max_iter, "features": "unnormalised image embedding, test transform",
            "fewshot": "same subsets as CoOp (vlprompt sampler), not the official lpclip NumPy draw"}


def _fit_probe(spec: RunSpec, inputs: RunInputs, out: Path, progress: bool, num_steps: int, max_iter: int):
    """Fit the probe on the few-shot train features, ``C`` chosen on :func:`selection_set`, and save it into
    ``out`` (``probe.safetensors`` + ``probe.json``); returns the
    :class:`~vlprompt.eval.linear_probe.LinearProbeResult`."""
    from vlprompt.eval.linear_probe import fit_linear_probe

    data, backbone = inputs.data, inputs.backbone
    # (N, E) each; cache splits named as in train_run so CoOp runs (--augment none) and probes share them.
    train_x = test_features(spec, backbone, data, "train-fewshot", data.train, progress)
    val, val_split = selection_set(data, spec.shots, spec.seed)
    val_x = test_features(spec, backbone, data, val_split, val, progress) if val else None
    result = fit_linear_probe(train_x, P.labels_of(data.train), val_x, P.labels_of(val) if val else None,
                              num_steps=num_steps, max_iter=max_iter)
    save_probe(out, result, data.splits.classnames, backbone.identity(),
               {"selection_split": val_split, "selection_images": P.relative_paths(val, data.splits.root)})
    return result


def selection_set(data: P.FewShotData, shots: int | None, seed: int) -> tuple[list, str]:
    """The images ``C`` is chosen on and their feature-cache split name.

    Normally the few-shot val set CoOp's sampler drew (``min(K, 4)`` per class). Where val *is* the test set
    (ImageNet, whose official val = test), the run keeps val whole; choosing ``C`` on all of it would select on the
    test set, so ``min(K, 4)`` images per class are drawn from it with the explicitly seeded sampler instead — the
    official probe also draws its ``min(K, 4)`` val shots per class from ImageNet's val (= test) features.
    """
    if not data.splits.val_is_test or not data.val:
        return data.val, "val-fewshot"
    from vlprompt.data.fewshot import sample_few_shot

    k = min(shots, 4) if shots and shots > 0 else 4
    return sample_few_shot(data.val, k, seed), "val-probe"


def save_probe(
    run_dir: str | Path, result, classnames: list[str], backbone_identity: dict, extra: dict | None = None
) -> None:
    """Write ``probe.safetensors`` (coef ``float64[K, E]``, intercept ``float64[K]``, classes ``int64[n]``), then
    ``probe.json`` (the search, class names, backbone identity, and ``extra``), atomically."""
    run_dir = Path(run_dir)
    atomic_save_safetensors(run_dir / PROBE_WEIGHTS, result.tensors(), metadata={"format": "vlprompt-linear-probe"})
    atomic_write_json(run_dir / PROBE_JSON, {**result.to_dict(), "classnames": list(classnames),
                                             "backbone": backbone_identity, "feature_dim": int(result.coef.shape[1]),
                                             "features": "unnormalised image embedding, test transform",
                                             **(extra or {})})


def load_probe(run_dir: str | Path):
    """Read the probe of a linear-probe run folder.

    Returns:
        ``(result, meta)``: a :class:`vlprompt.eval.linear_probe.LinearProbeResult` ready for
        :func:`vlprompt.eval.linear_probe.predict`, and the ``probe.json`` content (class names, backbone identity).

    Raises:
        ArtifactError: the files are missing or damaged.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from vlprompt.eval.linear_probe import LinearProbeResult

    run_dir = Path(run_dir)
    try:
        meta = json.loads((run_dir / PROBE_JSON).read_text())
        tensors = load_file(str(run_dir / PROBE_WEIGHTS))
        return LinearProbeResult.from_saved(tensors, meta), meta
    except (OSError, json.JSONDecodeError, SafetensorError, KeyError) as e:
        raise ArtifactError(f"'{run_dir}' holds no readable linear probe ({PROBE_JSON} + {PROBE_WEIGHTS}): {e}; "
                            "run `vlprompt linear-probe` into it again.") from e


__all__ = ["LINEAR_PROBE_LABEL", "LINEAR_PROBE_METHOD", "linear_probe_run", "load_probe", "save_probe"]
