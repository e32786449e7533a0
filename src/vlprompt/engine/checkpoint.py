"""Saving and loading a learned prompt (``learner.json`` + ``learner.safetensors``) and the training state.

``learner.json`` records what rebuilds the learner (method, config, class names) and the backbone identity
(name, pretrained tag/path, weights fingerprint, widths); loading checks all of it and refuses a mismatch. The
safetensors header repeats the method, the backbone fingerprint and a hash of the class list, so a
``learner.json`` edited to name another backbone or class list is detected too. Every defect of these files
(invalid JSON, wrong types, missing or extra tensors, wrong shapes or dtypes, NaN values, truncation) is an
:class:`~vlprompt.errors.ArtifactError` naming the file, never an exception from deep inside torch.

The *training state* (see :func:`save_train_state`) is what resuming an interrupted run needs after each epoch.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

from vlprompt import __version__
from vlprompt._io import atomic_save_safetensors, atomic_write_json, read_json_object
from vlprompt.backbones.base import Backbone
from vlprompt.errors import ArtifactError, VLPromptError
from vlprompt.prompts.base import PromptLearner, create_prompt_learner

_logger = logging.getLogger(__name__)

LEARNER_JSON = "learner.json"
LEARNER_WEIGHTS = "learner.safetensors"


def classnames_digest(classnames: list[str]) -> str:
    """SHA-256 of a class list (order matters), recorded in the weights file to bind it to ``learner.json``."""
    return hashlib.sha256(json.dumps(list(classnames)).encode()).hexdigest()


def save_learner(run_dir: str | Path, learner: PromptLearner, backbone: Backbone) -> None:
    """Write ``learner.safetensors`` then ``learner.json`` (atomically) into ``run_dir``."""
    run_dir = Path(run_dir)
    ident = backbone.identity()
    # The header binds the weights to what learner.json says (checked by load_learner).
    binding = {"format": "vlprompt", "method": learner.method,
               "classnames_sha256": classnames_digest(learner.classnames),
               "backbone_name": str(ident.get("name")), "backbone_fingerprint": str(ident.get("fingerprint"))}
    atomic_save_safetensors(run_dir / LEARNER_WEIGHTS, learner.trainable_state_dict(), metadata=binding)
    atomic_write_json(
        run_dir / LEARNER_JSON,
        {
            "vlprompt_version": __version__,
            "method": learner.method,
            "config": learner.config_dict(),
            "classnames": learner.classnames,
            "backbone": ident,
        },
    )


def read_learner_json(run_dir: str | Path) -> dict:
    """Read and validate ``learner.json`` of a run folder (presence and type of every entry)."""
    path = Path(run_dir) / LEARNER_JSON
    if not path.is_file():
        raise ArtifactError(
            f"'{path}' not found: '{run_dir}' is not a finished vlprompt training run (train one with "
            "`vlprompt train`)."
        )
    meta = read_json_object(path, "the run folder is damaged — retrain it")
    for key in ("method", "config", "classnames", "backbone"):
        if key not in meta:
            raise ArtifactError(f"'{path}' lacks the '{key}' entry; the run folder is damaged — retrain it.")
    names = meta["classnames"]
    problems = []
    if not isinstance(meta["method"], str):
        problems.append("'method' must be a string")
    if not isinstance(meta["config"], dict):
        problems.append("'config' must be an object")
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        problems.append("'classnames' must be a non-empty list of strings")
    elif len(set(names)) != len(names):
        problems.append("'classnames' lists a class twice")
    if not (isinstance(meta["backbone"], dict) and isinstance(meta["backbone"].get("name"), str)):
        problems.append("'backbone' must be an object with a 'name'")
    if problems:
        raise ArtifactError(f"'{path}': {'; '.join(problems)}; the run folder is damaged — retrain it.")
    return meta


def check_backbone(meta: dict, backbone: Backbone, where: str) -> None:
    """Refuse to load a prompt into a backbone other than the one it was trained on."""
    want = meta["backbone"]
    have = backbone.identity()
    diffs = [k for k in ("name", "fingerprint", "token_dim", "embed_dim") if want.get(k) != have.get(k)]
    # The activation (QuickGELU vs GELU) is invisible to the weights fingerprint; recorded since issue 12, so
    # compared only when both sides have it (folders of 0.1.0 lack it).
    if want.get("activation") and have.get("activation") and want["activation"] != have["activation"]:
        diffs.append(f"activation ({want['activation']} vs {have['activation']})")
    if diffs:
        raise ArtifactError(
            f"the prompt in '{where}' was trained on backbone {want.get('name')} (pretrained={want.get('pretrained')}, "
            f"weights {want.get('fingerprint')}), but the backbone given is {have['name']} "
            f"(pretrained={have['pretrained']}, weights {have['fingerprint']}); differing: {', '.join(diffs)}. Learned "
            "context vectors only make sense in the embedding space they were trained in: load it with the same "
            "--backbone and --pretrained."
        )


def _read_weights(path: Path, device: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise ArtifactError(f"'{path}' not found; the run folder is incomplete — retrain it.")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (OSError, SafetensorError, ValueError, RuntimeError) as e:
        raise ArtifactError(f"'{path}' could not be read ({e}); the file is truncated or damaged — retrain it."
                            ) from e


def _check_binding(path: Path, header: dict[str, str], meta: dict) -> None:
    """Compare the weights file's header with ``learner.json`` (files saved before the binding have none)."""
    expected = {"method": meta["method"], "classnames_sha256": classnames_digest(meta["classnames"]),
                "backbone_name": str(meta["backbone"].get("name")),
                "backbone_fingerprint": str(meta["backbone"].get("fingerprint"))}
    wrong = [k for k, v in expected.items() if k in header and header[k] != v]
    if wrong:
        raise ArtifactError(
            f"'{path}' was saved for another {' and '.join(wrong)} than '{LEARNER_JSON}' names; the two files do not "
            "belong together (edited or mixed up) — use the files of one run, or retrain."
        )


def load_learner(run_dir: str | Path, backbone: Backbone, classnames: list[str] | None = None) -> PromptLearner:
    """Rebuild a saved learner on ``backbone`` (for ``classnames``, default: the trained ones) and load its weights."""
    run_dir = Path(run_dir)
    meta = read_learner_json(run_dir)
    check_backbone(meta, backbone, str(run_dir))
    try:
        learner = create_prompt_learner(meta["method"], backbone, meta["classnames"], meta["config"])
    except (VLPromptError, TypeError) as e:
        raise ArtifactError(f"'{run_dir / LEARNER_JSON}' does not describe a valid learner: {e}") from e
    path = run_dir / LEARNER_WEIGHTS
    state, header = _read_weights(path, backbone.device)
    _check_binding(path, header, meta)
    check_state(path, state, learner.state_dict(), meta["method"], len(meta["classnames"]))
    learner.load_state_dict(state)
    if classnames is not None and list(classnames) != learner.classnames:
        learner.set_classnames(backbone, classnames)
    return learner.eval()


def check_state(path: Path, state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], method: str,
                num_classes: int = -1) -> None:
    """Refuse a state dict whose keys, shapes, dtypes or values do not fit the learner it is loaded into.

    ``num_classes`` (when known) explains a class-specific context saved for another number of classes.
    """
    if set(state) != set(expected):
        raise ArtifactError(
            f"'{path}' holds {sorted(state)} but a {method} learner with this config needs {sorted(expected)}; "
            "the file does not belong to this learner.json."
        )
    for k, v in state.items():
        want = expected[k]
        if v.shape != want.shape or v.dtype != want.dtype:
            hint = ""
            if num_classes >= 0 and v.dim() == 3 and want.dim() == 3 and v.shape[0] != want.shape[0]:
                hint = (f" (a class-specific context for {v.shape[0]} classes, but learner.json lists {num_classes} "
                        "class names)")
            raise ArtifactError(
                f"'{path}': tensor '{k}' is {tuple(v.shape)} {v.dtype}, expected {tuple(want.shape)} "
                f"{want.dtype}{hint}; the file is damaged or from another run."
            )
        if v.is_floating_point() and not torch.isfinite(v.float()).all():
            raise ArtifactError(f"'{path}': tensor '{k}' contains NaN or Inf values; the run diverged or the file is "
                                "damaged.")


__all__ = [
    "LEARNER_JSON",
    "LEARNER_WEIGHTS",
    "check_backbone",
    "check_state",
    "classnames_digest",
    "load_learner",
    "read_learner_json",
    "save_learner",
]
