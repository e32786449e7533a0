"""Compatibility import: moved to :mod:`vlprompt.backbones.torch_normal` with the micro-CLIP model."""

from __future__ import annotations

from vlprompt.backbones.torch_normal import torch_normal

__all__ = ["torch_normal"]
