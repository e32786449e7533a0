"""CoCoOp: conditional context optimisation (Zhou et al., "Conditional Prompt Learning for Vision-Language
Models", CVPR 2022, arXiv 2203.05557; official code ``CoOp:trainers/cocoop.py``, reference §7).

CoOp's unified context ``[V]_1 … [V]_M`` is shifted, per image, by a meta-net output ``π(x)``: the prompt of class
*i* for image *x* is ``[SOS] [V]_1 + π(x) … [V]_M + π(x) [CLASS_i] [.] [EOS]``, with
``π = Linear(E, E // 16) → ReLU → Linear(E // 16, D)`` applied to the L2-normalised image feature (``E`` the joint
embedding width, ``D`` the text width). Logits are ``logits[b, i] = exp(logit_scale) · cos(f(x_b), g(t_{b,i}))``.

Differences from the official code:

- The official ``CustomCLIP.forward`` runs the text encoder once per image in a Python loop. Here the ``B × C``
  prompts of a batch go through the text encoder together (``PromptModel.encode_prompts``), cut after their EOS in
  per-length buckets and chunked by ``text_chunk``; the logits equal the loop's to float tolerance
  (``tests/methods/test_cocoop.py::test_batched_equals_official_per_image_loop``; the official code's own figures:
  ``tests/fidelity/test_official_figures.py``; ``benchmarks/cocoop_batched.py``). :func:`per_image_logits` is
  the loop, kept for those comparisons.

The official recipe (batch 1, 10 epochs, SGD 0.002, M = 4 from "a photo of a") is the default wherever the user
passes no value, from the Python API (:func:`vlprompt.engine.run.train_run`) as from ``vlprompt train``
(:attr:`CoCoOp.recipe`, :class:`CoCoOpConfig`, :func:`vlprompt.engine.recipe.resolve_train_config`). The whole
learner is optimised: ``ctx`` and the meta-net (``trainers/cocoop.py`` l.217–235: ``build_optimizer`` over
``prompt_learner``).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.backbones.base import Backbone
from vlprompt.errors import ConfigError
from vlprompt.prompts.base import PromptLearner, register_prompt_learner
from vlprompt.prompts.coop import CoOp, CoOpConfig

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CoCoOpConfig(CoOpConfig):
    """CoCoOp options: CoOp's, with the official CoCoOp defaults (M = 4 initialised from "a photo of a").

    The context is always unified and the class name always at the end (as officially): ``csc`` must stay
    ``False`` and ``class_token_position`` ``"end"``.

    Attributes:
        meta_reduction: the meta-net's hidden width is ``E // meta_reduction`` (16, as officially).
    """

    n_ctx: int = 4
    ctx_init: str | None = "a photo of a"
    meta_reduction: int = 16

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.csc:
            raise ConfigError("--csc is not available with --method cocoop: CoCoOp learns one unified context shifted "
                              "per image by the meta-net (as officially); drop --csc.")
        if self.class_token_position != "end":
            raise ConfigError(f"--class-token-position {self.class_token_position} is not available with --method "
                              "cocoop: CoCoOp puts the class name at the end (as officially); drop the option.")
        if self.meta_reduction < 1:
            raise ConfigError(f"meta_reduction must be ≥ 1, got {self.meta_reduction}.")


@register_prompt_learner
class CoCoOp(CoOp):
    """CoCoOp prompt learner: CoOp's unified context plus a per-image meta-net shift.

    Args:
        backbone: the frozen backbone.
        classnames: class names; ``_`` becomes a space.
        config: :class:`CoCoOpConfig`.

    Shapes: ``ctx`` is ``(M, D)``; ``meta_net`` maps ``(B, E) → (B, D)``; ``forward(image_features (B, E))`` returns
    embeds ``(B, C, L, D)`` and ids ``(C, L)``. Trainable parameters: ``ctx`` and ``meta_net`` (35,360 for
    ViT-B/16 with M = 4).
    """

    method = "cocoop"
    config_class = CoCoOpConfig
    conditional = True
    #: ``CoOp:configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml``: BATCH_SIZE 1 (l.3), MAX_EPOCH 10 (l.18).
    recipe = {"epochs": 10, "batch_size": 1}
    display_name = "CoCoOp"

    def __init__(self, backbone: Backbone, classnames: list[str], config: CoCoOpConfig | None = None):
        super().__init__(backbone, classnames, config or CoCoOpConfig())
        vis_dim, hidden = backbone.embed_dim, max(1, backbone.embed_dim // self.config.meta_reduction)
        self.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(vis_dim, hidden)),
            ("relu", nn.ReLU(inplace=True)),
            ("linear2", nn.Linear(hidden, backbone.token_dim)),
        ])).to(device=backbone.device, dtype=backbone.dtype)  # fp16 in the official fp16 mode, like ctx

    def forward(self, image_features: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image prompts.

        Args:
            image_features: ``(B, E)`` L2-normalised image features.

        Returns:
            ``(embeds (B, C, L, D), ids (C, L))``.
        """
        if image_features is None:
            raise ConfigError("CoCoOp builds one prompt per image: pass the L2-normalised image features [B, E] "
                              "(its text features cannot be computed once for all images).")
        bias = self.meta_net(image_features.to(self.ctx.dtype))  # (B, D)
        ctx = self.ctx.unsqueeze(0) + bias.unsqueeze(1)  # (B, M, D): π(x) added to every context vector
        n_cls = self.fixed_embeds.shape[0]
        ctx = ctx.unsqueeze(1).expand(-1, n_cls, -1, -1)  # (B, C, M, D)
        return self.assemble(ctx), self.token_ids

    def shared_prefix(self) -> None:
        """Never: the context differs per image, so no prefix is shared by all prompts of a batch."""
        return None


def per_image_logits(backbone: Backbone, learner: PromptLearner, image_features: torch.Tensor) -> torch.Tensor:
    """CoCoOp logits the way the official code computes them: the text encoder runs once per image, in a loop.

    ``CoOp:trainers/cocoop.py`` ``CustomCLIP.forward``; the sequences are not truncated here (build the learner with
    ``truncate=False`` for the official full-length prompts). Kept as the reference for exactness tests and
    benchmarks; training and evaluation use the batched ``PromptModel`` path.

    Args:
        backbone: the frozen backbone.
        learner: a conditional learner.
        image_features: ``(B, E)`` L2-normalised image features.

    Returns:
        ``(B, C)`` logits.
    """
    rows = []
    for img in image_features:  # (E,)
        embeds, ids = learner(img.unsqueeze(0))  # (1, C, L, D), (C, L)
        text = backbone.encode_text_embeddings(embeds[0], ids, truncate=False)  # (C, E)
        text = F.normalize(text.float(), dim=-1)
        rows.append(backbone.logit_scale * text @ img.float())  # (C,)
    return torch.stack(rows)  # (B, C)
