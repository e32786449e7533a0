"""The prompt model: frozen backbone + prompt learner → class text features and logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.backbones.base import Backbone
from vlprompt.prompts.base import PromptLearner


class PromptModel(nn.Module):
    """CoOp's ``CustomCLIP`` without the image encoder in the hot path.

    Logits are ``exp(logit_scale) · cos(f(x), w_i)`` where ``w_i`` are the learned prompts' text features.

    Args:
        backbone: frozen backbone.
        learner: prompt learner (the only trainable part).
    """

    def __init__(self, backbone: Backbone, learner: PromptLearner):
        super().__init__()
        self.backbone = backbone
        self.learner = learner

    def text_features(self, image_features: torch.Tensor | None = None) -> torch.Tensor:
        """L2-normalised class text features ``[C, E]`` (fp32)."""
        embeds, ids = self.learner(image_features)  # (C, L, D), (C, L)
        return F.normalize(self.backbone.encode_text_embeddings(embeds, ids).float(), dim=-1)

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, C]`` logits from L2-normalised image features ``[B, E]`` (text features computed if not given)."""
        if text_features is None:
            text_features = self.text_features(image_features)
        return self.backbone.logit_scale * image_features.float() @ text_features.t()

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised image features ``[B, E]`` (fp32) from preprocessed images."""
        return F.normalize(self.backbone.encode_image(images).float(), dim=-1)
