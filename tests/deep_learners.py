"""A small learner that prompts the image tower, registered only while a test runs (issue 15's application paths are
tested with it before the real methods land): IVLP-style independent text and vision tokens
(:class:`~vlprompt.prompts.deep.IndependentDeepPrompts`) at depth 2 in both towers of ``vlp-tiny-vit``, fp32 tokens,
and a persistent ``epochs_seen`` buffer (changed by ``on_epoch_end``) so that resuming must restore learner state
that is not a parameter.

``test-deep12`` has the official IVLP depths (12 and 12), which ``vlp-tiny-vit`` refuses without ``depth_*`` options.
A further one, ``test-coupled``, derives its vision tokens from text tokens through coupling layers (MaPLe's
shape: one ``Linear(text width → vision width)`` per vision layer, on the input-layer context and the deeper text
tokens), so that the artifact must hold module weights as well as token tensors.

``with registered(): ...`` registers them (``test-deep`` is yielded) and removes them afterwards; a child process
calls :func:`register` (after putting this folder on ``sys.path``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from vlprompt.backbones.deep_prompts import DeepPrompts
from vlprompt.prompts import base as prompt_base
from vlprompt.prompts.deep import IndependentDeepPrompts, IndependentPromptConfig

METHOD = "test-deep"
COUPLED = "test-coupled"
FULL_DEPTH = "test-deep12"


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


class TinyCoupledPrompts(IndependentDeepPrompts):
    """Vision tokens coupled to the text tokens: layer 0 ``couple[0](ctx)``, layer 1 ``couple[1](deep_text[0])``
    (``[2, n, D_v]``); no independent vision parameters."""

    method = COUPLED
    config_class = TinyDeepConfig
    display_name = "TestCoupled"

    def __init__(self, backbone, classnames, config):
        super().__init__(backbone, classnames, config)
        self.deep_vision = None  # replaced by the coupling layers
        self.couple = nn.ModuleList(nn.Linear(backbone.text_width, backbone.vision_width) for _ in range(2))

    @property
    def prompts_image(self) -> bool:  # type: ignore[override]  # noqa: D102
        return True

    def deep_prompts(self) -> DeepPrompts:  # noqa: D102
        if "couple" not in self._modules:  # the base's check while building: its independent tokens' shapes
            return super().deep_prompts()
        vision = torch.stack([self.couple[0](self.ctx), self.couple[1](self.deep_text[0])])  # (2, n, D_v)
        return DeepPrompts(text=self.deep_text, vision=vision)


@dataclass(frozen=True)
class FullDepthConfig(IndependentPromptConfig):
    """The official IVLP depths (12 and 12: too deep for ``vlp-tiny-vit``, so it needs ``depth_*`` options), fp32."""

    half_tokens: bool = False


class FullDepthPrompts(IndependentDeepPrompts):
    """IVLP-style deep prompts at the official depths by default."""

    method = FULL_DEPTH
    config_class = FullDepthConfig
    display_name = "TestDeep12"


def vision_tokens(state: dict[str, torch.Tensor]) -> torch.Tensor:
    """The vision tokens ``[J_v, n, D_v]`` a saved ``test-deep`` or ``test-coupled`` state gives (written out here,
    for reference computations)."""
    if "deep_vision" in state:
        return state["deep_vision"]
    lin = [(state[f"couple.{i}.weight"], state[f"couple.{i}.bias"]) for i in range(2)]
    return torch.stack([state["ctx"] @ lin[0][0].t() + lin[0][1], state["deep_text"][0] @ lin[1][0].t() + lin[1][1]])


def register() -> None:
    """Register ``test-deep``, ``test-coupled`` and ``test-deep12`` (for a child process)."""
    prompt_base.register_prompt_learner(TinyDeepPrompts)
    prompt_base.register_prompt_learner(TinyCoupledPrompts)
    prompt_base.register_prompt_learner(FullDepthPrompts)


@contextlib.contextmanager
def registered():
    """``test-deep`` registered for the ``with`` block, removed after it."""
    register()
    try:
        yield METHOD
    finally:
        prompt_base._REGISTRY.pop(METHOD, None)
        prompt_base._REGISTRY.pop(COUPLED, None)
        prompt_base._REGISTRY.pop(FULL_DEPTH, None)
