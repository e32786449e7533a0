"""Run folders that train nothing (DESIGN.md §7): zero-shot CLIP on a dataset, and a saved prompt evaluated on
another dataset. Moved here from ``engine/run.py`` by issue 13 (that path re-exports :func:`zeroshot_run` and
:func:`eval_run`).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from vlprompt._io import atomic_write_json
from vlprompt.engine import pipeline as P
from vlprompt.engine.execution import Execution, open_execution
from vlprompt.engine.spec import RunSpec
from vlprompt.errors import ConfigError
from vlprompt.eval.metrics import classification_metrics
from vlprompt.runs import state as TS
from vlprompt.runs import tracking as T
from vlprompt.runs.folder import (
    base_config,
    evaluate_split,
    load_inputs,
    log_eval_only,
    prepare_out,
    refuse_finished,
    test_features,
)


def zeroshot_run(spec: RunSpec, templates: list[str], progress: bool = False, backbone=None) -> dict:
    """Zero-shot CLIP with ``templates`` on the test split of ``spec.dataset``; writes a run folder."""
    from vlprompt.data.templates import check_template
    from vlprompt.eval.zeroshot import zero_shot_weights

    if not templates:
        raise ConfigError("no zero-shot templates given.")
    for t in templates:
        check_template(t)
    if spec.tensorboard:
        T.require_tensorboard()
    refuse_finished(spec)
    spec = replace(spec, method="zeroshot", learner={"templates": list(templates)})  # a derived copy: see RunSpec
    inputs = load_inputs(spec, backbone)
    device, data, backbone = inputs.device, inputs.data, inputs.backbone
    out = prepare_out(spec.out, spec.overwrite)  # after the inputs are validated: a failed call leaves no folder
    label = spec.label or ("Zero-shot CLIP" if len(templates) == 1 else f"Zero-shot CLIP ({len(templates)} templates)")
    config = base_config(spec, data, backbone, None, label)
    atomic_write_json(out / "config.json", config)
    t1 = time.perf_counter()
    weights = zero_shot_weights(backbone, data.splits.classnames, templates)
    metrics, _ = P.evaluate_features(weights, test_features(spec, backbone, data, "test", data.splits.test, progress),
                                     P.labels_of(data.splits.test), backbone.logit_scale)
    metrics.update(train_seconds=0.0, eval_seconds=time.perf_counter() - t1, peak_memory_mb=P.peak_memory_mb(device))
    log_eval_only(spec, out, metrics, config)
    atomic_write_json(out / "metrics.json", metrics)
    return metrics


def eval_run(run_dir: str, spec: RunSpec, progress: bool = False, *, backbone=None) -> dict:
    """Evaluate the prompt saved in ``run_dir`` on the test split of ``spec.dataset``; writes ``spec.out``.

    ``backbone`` reuses a built one (a grid's: the prompt's own backbone in fp32, which the identity check of
    :func:`~vlprompt.engine.checkpoint.load_learner` verifies); ``None`` builds it from the run folder's record.
    Launched with torchrun, the ranks share the feature extraction and only rank 0 writes ``spec.out``.
    """
    with open_execution(P.resolve_device(spec.device)) as ex:
        return _eval(run_dir, spec, progress and ex.is_main, ex, backbone)


def _eval(run_dir: str, spec: RunSpec, progress: bool, ex: Execution, backbone=None) -> dict:
    from vlprompt.api import PromptClassifier

    src = TS.read_json(Path(run_dir) / "config.json") if (Path(run_dir) / "config.json").exists() else {}
    refuse_finished(spec)
    device = ex.device
    data = P.prepare_data(spec.dataset, spec.root, None, spec.seed, subsample=spec.subsample,
                          classnames_file=spec.classnames_file, strict=spec.strict,
                          allow_outside_root=spec.allow_outside_root)
    clf = PromptClassifier.load(run_dir, device=device, classnames=data.splits.classnames,
                                pretrained=spec.pretrained, execution=ex, backbone=backbone)
    spec = replace(spec, method=clf.method, backbone=clf.backbone.name)  # a derived copy: see RunSpec
    out = ex.on_main(prepare_out, spec.out, spec.overwrite)  # after the inputs are validated: no folder on failure
    config = {**base_config(spec, data, clf.backbone, None, src.get("label", clf.method)),
              "shots": src.get("shots"), "seed": src.get("seed", spec.seed), "learner": clf.learner_config,
              "evaluated_from": str(Path(run_dir).resolve()), "source_dataset": src.get("dataset", {}).get("name")}
    ex.on_main(atomic_write_json, out / "config.json", config)
    t1 = time.perf_counter()
    if clf.prompts_image:  # its image features depend on the learned vision tokens: the prompted tower, no cache
        _, logits = evaluate_split(spec, clf.model, data, "test", data.splits.test, progress, ex,
                                   clf.baked_text_features)
    else:
        logits = clf.feature_logits(test_features(spec, clf.backbone, data, "test", data.splits.test, progress, ex))
    metrics = classification_metrics(logits.argmax(-1).cpu(), P.labels_of(data.splits.test), logits.shape[1])
    metrics.update(train_seconds=0.0, eval_seconds=time.perf_counter() - t1, peak_memory_mb=P.peak_memory_mb(device))
    ex.on_main(atomic_write_json, out / "metrics.json", metrics)
    return metrics


__all__ = ["eval_run", "zeroshot_run"]
