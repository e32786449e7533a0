"""Backbones: adapters that turn third-party CLIPs into one narrow protocol.

``create_backbone(name, pretrained)`` is the single entry point:

- ``"microclip"``: vlprompt's bundled micro-CLIP (``pretrained`` = ``None``/``"shipped"`` for the shipped weights,
  or a ``.safetensors`` path);
- any open_clip architecture name (``"RN50"``, ``"ViT-B-16"``, …) with ``pretrained`` = ``None`` (random weights),
  an open_clip tag (``"openai"``, LAION tags) or a local checkpoint path;
- ``"hf:ORG/NAME"`` or ``"hf:DIR"``: a Hugging Face transformers ``CLIPModel`` (optional extra
  ``pip install vlprompt[hf]``), with ``pretrained`` = ``None`` or a local directory holding its files.
"""

from __future__ import annotations

import difflib
import logging
import os

import torch

from vlprompt.backbones.base import Backbone, PreprocessCfg
from vlprompt.backbones.hf_loading import HF_PREFIX
from vlprompt.backbones.open_clip import OpenClipBackbone
from vlprompt.errors import BackboneError, ConfigError

_logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "amp", "fp16")

__all__ = ["Backbone", "PreprocessCfg", "OpenClipBackbone", "create_backbone", "list_backbones", "PRECISIONS"]


def list_backbones(pattern: str | None = None) -> list[str]:
    """Names accepted by :func:`create_backbone` (optionally filtered by a substring)."""
    import open_clip

    names = ["microclip", *open_clip.list_models()]
    return [n for n in names if pattern is None or pattern.lower() in n.lower()]


def _build_model(name: str, pretrained: str | None):
    import open_clip

    from vlprompt.backbones.loading import load_checkpoint_file, load_pretrained_tag

    if name == "microclip":
        from vlprompt.microclip import model as mc

        weights = "shipped" if pretrained in (None, "shipped") else pretrained
        preprocess = PreprocessCfg(
            image_size=mc.MICROCLIP_IMAGE_SIZE, mean=tuple(mc.MICROCLIP_MEAN), std=tuple(mc.MICROCLIP_STD)
        )
        return mc.build_microclip(weights), open_clip.get_tokenizer("RN50"), preprocess
    if name not in open_clip.list_models():
        close = difflib.get_close_matches(name, list_backbones(), n=5)
        raise BackboneError(
            f"--backbone '{name}' is not a known architecture. Did you mean: {', '.join(close) or '-'}? "
            "`vlprompt train --help` explains; all names: microclip, hf:ORG/NAME or hf:DIR (Hugging Face CLIP), "
            + ", ".join(open_clip.list_models()[:20]) + ", …"
        )
    if pretrained is None:
        # Random weights, but reproducible (seed 0, global RNG untouched): a prompt trained on them can be reloaded.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = open_clip.create_model(name, pretrained=None).eval()
    elif os.path.exists(pretrained) or os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")):
        model = load_checkpoint_file(name, pretrained)
    else:
        model = load_pretrained_tag(name, pretrained)
    return model, open_clip.get_tokenizer(name), None


def create_backbone(
    name: str,
    pretrained: str | None = None,
    *,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
) -> Backbone:
    """Build a frozen backbone.

    Args:
        name: ``"microclip"``, an open_clip architecture name, or ``"hf:ORG/NAME"`` / ``"hf:DIR"`` (transformers).
        pretrained: weights tag, local checkpoint path, or ``None``: random weights, seeded so that the same name
            always gives the same weights (shipped weights for microclip). For ``hf:`` names: ``None`` or the local
            directory the model's files are in now.
        device: where to put it.
        precision: ``"fp32"``; ``"amp"`` (fp32 weights, autocast is applied by the caller on GPU); or ``"fp16"``
            (the official CoOp default: Conv/Linear/attention weights and projections cast to fp16, LayerNorm in
            fp32, token embeddings fp32).

    Returns:
        An :class:`OpenClipBackbone` (or ``HFClipBackbone`` for ``hf:`` names) in eval mode with every parameter
        frozen.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision '{precision}' is not one of {', '.join(PRECISIONS)}.")
    if name.startswith(HF_PREFIX):
        from vlprompt.backbones.hf import create_hf_backbone

        return create_hf_backbone(name, pretrained, precision=precision).to(device)
    model, tokenizer, preprocess = _build_model(name, pretrained)
    backbone = OpenClipBackbone(model, tokenizer, name=name, pretrained=pretrained, preprocess=preprocess)
    if precision == "fp16":
        from open_clip.model import convert_weights_to_lp

        convert_weights_to_lp(backbone.model, torch.float16)
    return backbone.to(device)
