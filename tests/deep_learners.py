"""A small learner that prompts the image tower, registered only while a test runs (issue 15's application paths are
tested with it before the real methods land): IVLP-style independent text and vision tokens
(:class:`~vlprompt.prompts.deep.IndependentDeepPrompts`) at depth 2 in both towers of ``vlp-tiny-vit``, fp32 tokens,
and a persistent ``epochs_seen`` buffer (changed by ``on_epoch_end``) so that resuming must restore learner state
that is not a parameter.

``with registered(): ...`` registers it as ``test-deep`` and removes it afterwards; a child process calls
:func:`register` (after putting this folder on ``sys.path``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from vlprompt.prompts import base as prompt_base
from vlprompt.prompts.deep import IndependentDeepPrompts, IndependentPromptConfig

METHOD = "test-deep"


@dataclass(frozen=True)
class TinyDeepConfig(IndependentPromptConfig):
    """Depth 2 in both towers (``vlp-tiny-vit`` has 2 + 2 layers), fp32 tokens."""

    depth_text: int = 2
    depth_vision: int = 2
    half_tokens: bool = False


class TinyDeepPrompts(IndependentDeepPrompts):
    """IVLP-style deep prompts under a test-only name."""

    method = METHOD
    config_class = TinyDeepConfig
    display_name = "TestDeep"

    def __init__(self, backbone, classnames, config):
        super().__init__(backbone, classnames, config)
        self.register_buffer("epochs_seen", torch.zeros((), dtype=torch.float32))  # persistent: saved and resumed

    def on_epoch_end(self, epoch: int, epochs: int) -> None:  # noqa: D102
        self.epochs_seen += 1


def register() -> None:
    """Register ``test-deep`` (for a child process)."""
    prompt_base.register_prompt_learner(TinyDeepPrompts)


@contextlib.contextmanager
def registered():
    """``test-deep`` registered for the ``with`` block, removed after it."""
    register()
    try:
        yield METHOD
    finally:
        prompt_base._REGISTRY.pop(METHOD, None)
