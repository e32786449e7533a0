"""Saving and loading a learned prompt: ``learner.json`` + ``learner.safetensors`` (only what was learned).

``learner.json`` records what rebuilds the learner (method, config, class names) and the backbone identity
(name, pretrained tag/path, weights fingerprint, widths); loading checks all of it and refuses a mismatch.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from vlprompt import __version__
from vlprompt._io import atomic_save_safetensors, atomic_write_json
from vlprompt.backbones.base import Backbone
from vlprompt.errors import ArtifactError
from vlprompt.prompts.base import PromptLearner, create_prompt_learner

_logger = logging.getLogger(__name__)

LEARNER_JSON = "learner.json"
LEARNER_WEIGHTS = "learner.safetensors"


def save_learner(run_dir: str | Path, learner: PromptLearner, backbone: Backbone) -> None:
    """Write ``learner.safetensors`` then ``learner.json`` (atomically) into ``run_dir``."""
    run_dir = Path(run_dir)
    atomic_save_safetensors(run_dir / LEARNER_WEIGHTS, learner.trainable_state_dict(), metadata={"format": "vlprompt"})
    atomic_write_json(
        run_dir / LEARNER_JSON,
        {
            "vlprompt_version": __version__,
            "method": learner.method,
            "config": learner.config_dict(),
            "classnames": learner.classnames,
            "backbone": backbone.identity(),
        },
    )


def read_learner_json(run_dir: str | Path) -> dict:
    """Read and validate ``learner.json`` of a run folder."""
    path = Path(run_dir) / LEARNER_JSON
    if not path.exists():
        raise ArtifactError(
            f"'{path}' not found: '{run_dir}' is not a finished vlprompt training run (train one with `vlprompt train`)."
        )
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ArtifactError(f"'{path}' is not valid JSON ({e}); the run folder is damaged — retrain it.") from e
    for key in ("method", "config", "classnames", "backbone"):
        if key not in meta:
            raise ArtifactError(f"'{path}' lacks the '{key}' entry; the run folder is damaged — retrain it.")
    return meta


def check_backbone(meta: dict, backbone: Backbone, where: str) -> None:
    """Refuse to load a prompt into a backbone other than the one it was trained on."""
    want = meta["backbone"]
    have = backbone.identity()
    diffs = [k for k in ("name", "fingerprint", "token_dim", "embed_dim") if want.get(k) != have.get(k)]
    if diffs:
        raise ArtifactError(
            f"the prompt in '{where}' was trained on backbone {want.get('name')} (pretrained={want.get('pretrained')}, "
            f"weights {want.get('fingerprint')}), but the backbone given is {have['name']} "
            f"(pretrained={have['pretrained']}, weights {have['fingerprint']}); differing: {', '.join(diffs)}. Learned "
            "context vectors only make sense in the embedding space they were trained in: load it with the same "
            "--backbone and --pretrained."
        )


def load_learner(run_dir: str | Path, backbone: Backbone, classnames: list[str] | None = None) -> PromptLearner:
    """Rebuild a saved learner on ``backbone`` (for ``classnames``, default: the trained ones) and load its weights."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    meta = read_learner_json(run_dir)
    check_backbone(meta, backbone, str(run_dir))
    learner = create_prompt_learner(meta["method"], backbone, meta["classnames"], meta["config"])
    path = run_dir / LEARNER_WEIGHTS
    try:
        state = load_file(str(path), device=str(backbone.device))
    except (OSError, SafetensorError) as e:
        raise ArtifactError(f"'{path}' could not be read ({e}); the run folder is damaged — retrain it.") from e
    expected = learner.state_dict()
    if set(state) != set(expected):
        raise ArtifactError(
            f"'{path}' holds {sorted(state)} but a {meta['method']} learner with this config needs {sorted(expected)}; "
            "the file does not belong to this learner.json."
        )
    for k, v in state.items():
        if v.shape != expected[k].shape or v.dtype != expected[k].dtype:
            raise ArtifactError(
                f"'{path}': tensor '{k}' is {tuple(v.shape)} {v.dtype}, expected {tuple(expected[k].shape)} "
                f"{expected[k].dtype}; the file is damaged or from another run."
            )
        if not torch.isfinite(v.float()).all():
            raise ArtifactError(f"'{path}': tensor '{k}' contains NaN or Inf values; the run diverged or the file is damaged.")
    learner.load_state_dict(state)
    if classnames is not None and list(classnames) != learner.classnames:
        learner.set_classnames(backbone, classnames)
    return learner.eval()
