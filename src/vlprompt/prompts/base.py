"""Prompt-learner base class and registry.

A prompt learner is a plain ``nn.Module`` that, given the class names and a frozen backbone, produces the
prompt *embeddings* fed to the backbone's text tower. The trainer never branches on the method's name: it calls
``learner(image_features)`` and ``backbone.encode_text_embeddings``, and adds the learner's optional
:meth:`PromptLearner.regularizer` to the loss. What differs between methods is declared on the class:

- ``conditional``: the prompts depend on the image (CoCoOp); ``forward`` then takes the image features and returns
  one set of prompts per image, and text features cannot be computed once for all images;
- ``recipe``: the method's own official training settings where they differ from CoOp's (e.g. CoCoOp's batch 1
  and 10 epochs), applied where the user did not choose a value;
- ``display_name``: how reports name the method;
- ``prompts_image``: the learner puts tokens into the image tower (deep vision prompts: VPT-deep, IVLP, MaPLe,
  PromptSRC). The trainer then runs the image tower with autograd on every training batch, passing the learner's
  :meth:`PromptLearner.deep_prompts`; image features cannot be cached, and evaluation encodes images with the prompts.

Deep prompts (tokens between the transformer blocks of either tower, :mod:`vlprompt.backbones.deep_prompts`) come
from :meth:`PromptLearner.deep_prompts`, called once per training step so that both towers see the same tokens in
one autograd graph (MaPLe derives its vision tokens from its text tokens). Losses beyond the cross-entropy come
from :meth:`PromptLearner.training_terms` (which sees the whole step: PromptSRC's consistency terms), and methods
that change their parameters over epochs (PromptSRC's Gaussian prompt aggregation) use
:meth:`PromptLearner.on_epoch_end` and :meth:`PromptLearner.finalize`.

Adding a method is one module: subclass :class:`PromptLearner` (usually :class:`~vlprompt.prompts.coop.CoOp`),
decorate it with :func:`register_prompt_learner` and import it in ``vlprompt/prompts/__init__.py``.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from vlprompt.backbones.base import Backbone
from vlprompt.backbones.deep_prompts import DeepPrompts
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
    method: str,
    backbone: Backbone,
    classnames: list[str],
    config: dict[str, Any] | None = None,
    *,
    template: str | None = None,
) -> PromptLearner:
    """Build the learner ``method`` for ``classnames`` on ``backbone`` from a config dict (unknown keys refused).

    ``template``: the dataset's hand-crafted prompt (e.g. ``"a photo of a {}."``), given to methods whose config has
    a ``template`` option (KgCoOp) when ``config`` does not set it.
    """
    cls = get_prompt_learner_class(method)
    config = dict(config or {})
    fields = set(cls.config_class.__dataclass_fields__)
    unknown = sorted(set(config) - fields)
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for method '{method}'; valid: {sorted(fields)}.")
    if template is not None and "template" in fields and config.get("template") is None:
        config["template"] = template
    return cls(backbone, classnames, cls.config_class(**config))


@dataclass(frozen=True)
class TrainingStep:
    """What one training step computed, handed to :meth:`PromptLearner.training_terms`.

    Attributes:
        text_features: the learned prompts' L2-normalised text features, ``[C, E]`` (``[B, C, E]`` for a
            conditional learner), with autograd.
        image_features: L2-normalised image features ``[B, E]`` (with autograd when the image tower is prompted).
        logits: ``[B, C]`` logits of the step (``logit_scale`` applied).
        labels: ``LongTensor[B]``.
        images: the preprocessed images ``[B, 3, H, W]`` when the batch holds images (always for a learner that
            ``prompts_image``), ``None`` when it holds cached features.
        backbone: the frozen backbone (e.g. to encode ``images`` without prompts, under ``torch.no_grad``).
    """

    text_features: torch.Tensor
    image_features: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor
    images: torch.Tensor | None
    backbone: Backbone


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
    #: The method's official training settings that differ from CoOp's (``TrainConfig`` field names, e.g.
    #: ``{"epochs": 10, "batch_size": 1}``); used where the user did not pass a value.
    recipe: ClassVar[dict[str, Any]] = {}
    #: The method's name in reports (``CoOp``, ``CoCoOp``, …); defaults to ``method``.
    display_name: ClassVar[str] = ""
    #: Whether :meth:`deep_prompts` holds vision tokens: the image tower then runs with autograd on every training
    #: batch (images, not cached features) and evaluation encodes images with the prompts.
    prompts_image: ClassVar[bool] = False

    def __init__(self, config: Any):
        super().__init__()
        self.config = config

    def forward(self, image_features: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(embeds, ids)``: ``embeds`` ``[C, L, D]`` prompt embeddings and ``ids`` ``[C, L]`` token ids
        (these drive EOS pooling). A ``conditional`` learner takes L2-normalised ``image_features`` ``[B, E]`` and
        returns ``embeds`` ``[B, C, L, D]`` (one prompt per image and class) with the same ``ids`` ``[C, L]``."""
        raise NotImplementedError

    def regularizer(self, text_features: torch.Tensor) -> torch.Tensor | None:
        """An extra loss term added to the cross-entropy during training, or ``None`` (the default: none).

        Args:
            text_features: the learned prompts' L2-normalised text features of this step, ``[C, E]`` (``[B, C, E]``
                for a conditional learner), with autograd.
        """
        return None

    def deep_prompts(self) -> DeepPrompts | None:
        """The tokens this learner inserts between transformer blocks, or ``None`` (the default: none).

        Text ``[J_t − 1, n_t, D_t]`` and vision ``[J_v, n_v, D_v]`` tokens as in
        :class:`~vlprompt.backbones.deep_prompts.DeepPrompts`, with autograd; called once per step (and once per
        evaluation), and the same object is given to both towers.
        """
        return None

    def fixed_text_features(self) -> torch.Tensor | None:
        """Class text features ``[C, E]`` that nothing learned changes (VPT-deep's hand-crafted prompts), computed
        once per class list; the engine then uses them instead of encoding :meth:`forward`'s prompts. ``None`` (the
        default): the text features are encoded from the prompts."""
        return None

    @property
    def prompt_cast(self) -> torch.dtype | None:
        """dtype the deep tokens pass through after broadcasting (``torch.float16``: the official code's
        ``.half()``), or ``None`` (the default: as given)."""
        return None

    def training_terms(self, step: TrainingStep) -> torch.Tensor | None:
        """Loss terms added to the cross-entropy, or ``None``; the default is :meth:`regularizer` of the step's text
        features. Override it for terms that need more of the step (image features, logits, the images)."""
        return self.regularizer(step.text_features)

    def on_epoch_end(self, epoch: int, epochs: int) -> None:
        """Called after each training epoch ``epoch`` (1-based) of ``epochs``, before the resumable state is saved
        (state kept across epochs must live in persistent buffers so that a resumed run continues it)."""

    def finalize(self) -> None:
        """Called once when training ends (also after a resume that had no epoch left): turn the training state
        into the learned prompt (e.g. PromptSRC's aggregated prompts). The default does nothing."""

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
