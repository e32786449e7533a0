"""What every speed measurement shares (:mod:`vlprompt.speed.worker` and :mod:`vlprompt.speed.onetime` both import
it; neither imports the other's helpers): the configurations, the tiny --quick architectures, real class names, the
backbone and the model of one configuration, and a device sync for wall-clock readings."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

#: What each configuration turns on (``chunk``: the spec's ``chunk`` value; ``image``: online or cached:K).
CONFIGS: dict[str, dict] = {
    "official": {"truncate": False, "shared_prefix": False, "chunk": False, "image": "online"},
    "truncate": {"truncate": True, "shared_prefix": False, "chunk": False, "image": "online"},
    "prefix": {"truncate": True, "shared_prefix": True, "chunk": False, "image": "online"},
    "chunk": {"truncate": True, "shared_prefix": True, "chunk": True, "image": "online"},
    "cached": {"truncate": True, "shared_prefix": True, "chunk": False, "image": "cached"},
}

# Tiny architectures for --quick (open_clip JSON config format).
QUICK_CONFIGS = {
    "vlpbench-tiny-rn": {
        "embed_dim": 32, "quick_gelu": True,
        "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "patch_size": None},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2},
    },
    "vlpbench-tiny-vit": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    },
}


def register_quick_configs(folder: str | os.PathLike) -> None:
    """Write the tiny --quick architectures to ``folder`` and register them with open_clip."""
    import open_clip

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, cfg in QUICK_CONFIGS.items():
        (folder / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(str(folder))


def classnames(n: int) -> list[str]:
    """``n`` real class names: ImageNet's, spread evenly over the 1000 (their BPE lengths are realistic)."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    names = list(IMAGENET_CLASSNAMES)
    if n <= len(names):
        return [names[i * len(names) // n] for i in range(n)]
    return [f"{names[i % len(names)]} {i // len(names)}" for i in range(n)]


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so that a wall-clock reading covers it; a no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


_BACKBONES: dict[tuple, object] = {}  # in-process runs (--quick) reuse backbones across measurements


def setup(spec: dict) -> tuple[torch.device, object]:
    """Thread count, the --quick configs and the (cached) random-weights backbone of ``spec``: ``(device, backbone)``."""
    from vlprompt.backbones import create_backbone

    torch.set_num_threads(spec["threads"])
    if spec.get("model_config_dir"):
        register_quick_configs(spec["model_config_dir"])
    device = torch.device(spec["device"])
    precision = "amp" if spec["precision"] == "amp" else "fp32"
    key = (spec["backbone"], str(device), precision)
    if key not in _BACKBONES:
        _BACKBONES.clear()
        _BACKBONES[key] = create_backbone(spec["backbone"], "random", device=device, precision=precision)
    return device, _BACKBONES[key]


def build_model(backbone, spec: dict, n_classes: int, config: str):
    """``(PromptModel, SGD optimiser)``: a CoOp learner on the first ``n_classes`` of ``spec["classes"]`` names, with
    configuration ``config``'s text path (:data:`CONFIGS`); seeded, so every configuration starts alike."""
    from vlprompt.engine.model import PromptModel
    from vlprompt.prompts import CoOp, CoOpConfig

    cfg = CONFIGS[config]
    torch.manual_seed(0)
    learner = CoOp(backbone, classnames(spec["classes"])[:n_classes],
                   CoOpConfig(n_ctx=spec["n_ctx"], truncate=cfg["truncate"])).to(backbone.device)
    model = PromptModel(backbone, learner, shared_prefix=cfg["shared_prefix"],
                        text_chunk=spec["chunk"] if cfg["chunk"] else None)
    return model, torch.optim.SGD(learner.parameters(), lr=0.002, momentum=0.9, weight_decay=5e-4)


__all__ = ["CONFIGS", "QUICK_CONFIGS", "build_model", "classnames", "register_quick_configs", "setup", "sync"]
