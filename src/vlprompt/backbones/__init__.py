"""Backbones: adapters that turn third-party CLIPs into one narrow protocol.

``create_backbone(name, pretrained)`` is the single entry point:

- ``"microclip"``: vlprompt's bundled micro-CLIP (``pretrained`` = ``None``/``"shipped"``/``"v2"`` for the shipped
  micro-CLIP v2, ``"v1"`` for the old ResNet micro-CLIP (source checkout only), a ``.safetensors`` path, or
  ``"random"``);
- any open_clip architecture name (``"RN50"``, ``"ViT-B-16"``, …, and any of them with the ``-quickgelu`` suffix)
  with ``pretrained`` = an open_clip tag (``"openai"``, LAION tags), a local checkpoint path, ``"random"`` (seeded
  random weights, on purpose) or ``None`` (the paper's weights: ``"openai"`` where the architecture has them,
  otherwise an error listing its tags). A tag is built as open_clip's pretrained config describes it (QuickGELU
  for ``openai``; mean/std/interpolation/resize mode): see :mod:`vlprompt.backbones.loading`;
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
from vlprompt.types import PRECISIONS, Precision

_logger = logging.getLogger(__name__)

#: ``--pretrained`` value asking for seeded random weights (recorded as such in ``config.json`` and reports).
RANDOM = "random"

__all__ = ["Backbone", "PreprocessCfg", "OpenClipBackbone", "create_backbone", "list_backbones", "PRECISIONS",
           "RANDOM", "recorded_pretrained"]


def list_backbones(pattern: str | None = None) -> list[str]:
    """Names accepted by :func:`create_backbone` (optionally filtered by a substring)."""
    import open_clip

    names = ["microclip", *open_clip.list_models()]
    return [n for n in names if pattern is None or pattern.lower() in n.lower()]


def _is_checkpoint_path(pretrained: str) -> bool:
    return os.path.exists(pretrained) or os.sep in pretrained or pretrained.endswith(
        (".pt", ".pth", ".bin", ".safetensors")
    )


def _warn_random(name: str) -> None:
    _logger.warning(
        "--backbone %s --pretrained random: RANDOM weights (seeded), not pretrained ones; results are near chance "
        "and the run is marked 'random weights' in config.json and reports.", name,
    )


def _build_model(name: str, pretrained: str | None):
    """``(model, tokenizer, preprocess or None, the pretrained value to record)``."""
    import open_clip

    from vlprompt.backbones import loading

    if name == "microclip":
        from vlprompt.backbones import microclip as mc

        preprocess = PreprocessCfg(
            image_size=mc.MICROCLIP_IMAGE_SIZE, mean=tuple(mc.MICROCLIP_MEAN), std=tuple(mc.MICROCLIP_STD)
        )
        if pretrained == RANDOM:
            _warn_random(name)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = mc.build_microclip(None)
        else:  # recorded by name: None/"shipped" → "v2", so that a later default cannot change what it means
            pretrained, _ = mc.resolve_weights("shipped" if pretrained is None else pretrained)
            model = mc.build_microclip(pretrained)
        return model, open_clip.get_tokenizer("RN50"), preprocess, pretrained
    if not loading.is_architecture(name):
        close = difflib.get_close_matches(name, list_backbones(), n=5)
        raise BackboneError(
            f"--backbone '{name}' is not a known architecture. Did you mean: {', '.join(close) or '-'}? "
            "`vlprompt train --help` explains; all names: microclip, hf:ORG/NAME or hf:DIR (Hugging Face CLIP), "
            + ", ".join(open_clip.list_models()[:20]) + ", …"
        )
    tokenizer = open_clip.get_tokenizer(loading.resolve_architecture(name)[0])
    if pretrained is None:
        pretrained = loading.default_tag(name)  # the paper's weights, never silently random (issue 12 §3)
        _logger.info("--backbone %s: no --pretrained given, using the '%s' weights", name, pretrained)
    if pretrained == RANDOM:
        _warn_random(name)
        return loading.build_random(name), tokenizer, None, pretrained
    if _is_checkpoint_path(pretrained):
        model, overrides = loading.load_checkpoint_file(name, pretrained)
        return model, tokenizer, _preprocess_with(model, overrides), pretrained
    return loading.load_pretrained_tag(name, pretrained), tokenizer, None, pretrained


def _preprocess_with(model, overrides: dict) -> PreprocessCfg | None:
    """The model's own preprocessing with ``overrides`` (from a checkpoint's ``open_clip_config.json``) applied."""
    if not overrides:
        return None
    from vlprompt.backbones.open_clip import preprocess_of

    base = preprocess_of(model)
    return PreprocessCfg(
        image_size=base.image_size,
        mean=tuple(overrides.get("mean", base.mean)),
        std=tuple(overrides.get("std", base.std)),
        interpolation=str(overrides.get("interpolation", base.interpolation)),
        resize_mode=str(overrides.get("resize_mode", base.resize_mode)),
    )


def recorded_pretrained(ident: dict) -> str | None:
    """The ``pretrained`` to rebuild a recorded backbone identity with (``learner.json``/``config.json``).

    vlprompt 0.1.0 recorded ``None`` for the random weights of an open_clip architecture; ``None`` now means the
    paper's weights, so such records map to ``"random"``. micro-CLIP records made before v2 became the default
    recorded ``None`` (or ``"shipped"``) for the v1 checkpoint; new ones record ``"v2"``/``"v1"`` by name, so such
    records map to ``"v1"`` (never silently to v2: the weights fingerprint would then refuse them).
    """
    name, pretrained = str(ident.get("name", "")), ident.get("pretrained")
    from vlprompt.backbones.microclip import LEGACY_DEFAULT_WEIGHTS, records_old_default

    if records_old_default(name, pretrained):
        return LEGACY_DEFAULT_WEIGHTS
    if pretrained is None and name != "microclip" and not name.startswith(HF_PREFIX):
        from vlprompt.backbones.loading import is_architecture

        if is_architecture(name):
            return RANDOM
    return pretrained


def create_backbone(
    name: str,
    pretrained: str | None = None,
    *,
    device: str | torch.device = "cpu",
    precision: Precision = "fp32",
) -> Backbone:
    """Build a frozen backbone.

    Args:
        name: ``"microclip"``, an open_clip architecture name, or ``"hf:ORG/NAME"`` / ``"hf:DIR"`` (transformers).
        pretrained: for open_clip architectures: a weights tag (built with the activation and preprocessing of
            its pretrained config), a local checkpoint path, ``"random"`` (random weights, seeded so that the same
            name always gives the same weights; logged as a warning and recorded), or ``None``: the paper's weights,
            ``"openai"`` where the architecture has them (as the CLI's default), else a :class:`BackboneError`
            listing its tags. QuickGELU is chosen with an architecture name ending in ``-quickgelu``. For
            microclip: ``None``/``"shipped"``/``"v2"`` (the shipped micro-CLIP v2, recorded as ``"v2"``), ``"v1"`` (the
            ResNet micro-CLIP, the default before v2; source checkout only), a ``.safetensors`` path or
            ``"random"``. For ``hf:`` names:
            ``None`` or the local directory the model's files are in now.
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
    model, tokenizer, preprocess, pretrained = _build_model(name, pretrained)
    backbone = OpenClipBackbone(model, tokenizer, name=name, pretrained=pretrained, preprocess=preprocess)
    if precision == "fp16":
        from open_clip.model import convert_weights_to_lp

        convert_weights_to_lp(backbone.model, torch.float16)
    return backbone.to(device)
