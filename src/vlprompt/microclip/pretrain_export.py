"""Look inside a micro-CLIP pretraining run: the model of its latest checkpoint or of a kept training snapshot, and
its export as a compact micro-CLIP file (to try an unfinished run with the acceptance table or the demo)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vlprompt.backbones.microclip import save_compact
from vlprompt.microclip.pretrain import PretrainConfig, Trainer, vocabulary_token_ids


def _run_config(out: str | Path) -> tuple[dict, PretrainConfig]:
    info = json.loads((Path(out) / "checkpoint.json").read_text())
    return info, PretrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in info["config"].items()})


def model_from_checkpoint(out: str | Path, model_file: str | Path | None = None) -> torch.nn.Module:
    """The stock micro-CLIP (eval mode) held by the latest training checkpoint in ``out`` (to inspect a run), or by
    ``model_file``: a kept copy of one of the run's ``ckpt/model-<step>.safetensors`` (the training form)."""
    from safetensors.torch import load_file

    _, cfg = _run_config(out)
    trainer = Trainer(cfg)
    if model_file is None:
        trainer.load(Path(out))
    else:
        trainer.load_snapshot(load_file(str(model_file)))
    return trainer.full_model()


def export_checkpoint(out: str | Path, path: str | Path, model_file: str | Path | None = None) -> Path:
    """Write the latest training checkpoint in ``out`` (or ``model_file``, as in :func:`model_from_checkpoint`) as a
    compact micro-CLIP file ``path`` (to try an unfinished run with the acceptance table or the demo)."""
    info, cfg = _run_config(out)
    step = str(info["step"]) if model_file is None else Path(model_file).stem.rpartition("-")[2]
    save_compact(path, model_from_checkpoint(out, model_file), vocabulary_token_ids(cfg.world), cfg.seed,
                 config=cfg.model_config, extra_metadata={"pretrain_config": json.dumps(info["config"]), "step": step,
                                                          "world_fingerprint": cfg.world.world_fingerprint()})  # fmt: skip
    return Path(path)
