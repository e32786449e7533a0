"""Prompt-learner base class and registry.

A prompt learner is a plain ``nn.Module`` that, given the class names and a frozen backbone, produces the
prompt *embeddings* fed to the backbone's text tower. The trainer never branches on the method's name: it calls
``learner(image_features)`` and ``backbone.encode_text_embeddings``.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict
from typing import Any, ClassVar

import torch
from torch import nn

from vlprompt.backbones.base import Backbone
from vlprompt.errors import ConfigError

_REGISTRY: dict[str, type[PromptLearner]] = {}


def register_prompt_learner(cls: type[PromptLearner]) -> type[PromptLearner]:
    """Class decorator: make ``cls`` available under ``cls.method``."""
    _REGISTRY[cls.method] = cls
    return cls


def list_prompt_learners() -> list[str]:
    """Registered method names."""
    return sorted(_REGISTRY)


def get_prompt_learner_class(method: str) -> type[PromptLearner]:
    """Look up a learner class by method name, with a helpful error for unknown names."""
    if method not in _REGISTRY:
        close = difflib.get_close_matches(method, list(_REGISTRY), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"--method '{method}' is unknown.{hint} Choices: {', '.join(list_prompt_learners())}.")
    return _REGISTRY[method]


def create_prompt_learner(
    method: str, backbone: Backbone, classnames: list[str], config: dict[str, Any] | None = None
) -> PromptLearner:
    """Build the learner ``method`` for ``classnames`` on ``backbone`` from a config dict (unknown keys refused)."""
    cls = get_prompt_learner_class(method)
    config = dict(config or {})
    fields = set(cls.config_class.__dataclass_fields__)
    unknown = sorted(set(config) - fields)
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for method '{method}'; valid: {sorted(fields)}.")
    return cls(backbone, classnames, cls.config_class(**config))


class PromptLearner(nn.Module):
    """Base class of prompt learners.

    Subclasses set ``method`` and ``config_class`` and implement :meth:`forward` and :meth:`set_classnames`.
    Fixed token embeddings must be registered as non-persistent buffers, so that only what was learned is saved
    and a saved prompt can be rebuilt for other class names.
    """

    method: ClassVar[str]
    config_class: ClassVar[type]
    #: Whether the produced prompts depend on the image (then ``forward`` needs ``image_features``).
    conditional: ClassVar[bool] = False

    def __init__(self, config: Any):
        super().__init__()
        self.config = config

    def forward(self, image_features: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(embeds, ids)``: ``embeds`` ``[C, L, D]`` prompt embeddings and ``ids`` ``[C, L]`` token ids
        (these drive EOS pooling)."""
        raise NotImplementedError

    def set_classnames(self, backbone: Backbone, classnames: list[str]) -> None:
        """Rebuild the fixed (class-name) parts of the prompts for a new list of class names."""
        raise NotImplementedError

    @property
    def classnames(self) -> list[str]:
        """Current class names."""
        return list(self._classnames)

    def config_dict(self) -> dict[str, Any]:
        """JSON-serialisable config that rebuilds this learner (with :func:`create_prompt_learner`)."""
        return asdict(self.config)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only what was learned (the persistent state: parameters, no fixed buffers)."""
        return {k: v.detach() for k, v in self.state_dict().items()}
