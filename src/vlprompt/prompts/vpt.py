"""VPT-deep: deep visual prompt tuning on CLIP (Jia et al., "Visual Prompt Tuning", ECCV 2022, arXiv 2203.12119),
the vision-only baseline of Khattak et al., MaPLe, CVPR 2023 (Table 1, "VPT").

Official code: ``muzairkhattak/multimodal-prompt-learning`` (69bce21) ``trainers/vpt.py`` and ``clip/model.py``
(``VisionTransformer``, ``ResidualAttentionBlock_IVLP``, built with ``design_details`` ``trainer "VPT"``,
``language_depth 0``). The image tower appends ``N_CTX_VISION`` learned tokens before ``ln_pre`` and each vision
block ``1 … J_v − 1`` replaces them with its own (the same vision tokens as IVLP's). Nothing is learned on the text
side: ``FixedEmbeddings`` (l.67–89) encodes the hand-crafted prompts ``"a photo of a {name}."`` once with the frozen
CLIP (``clip_model.encode_text``) and ``CustomCLIP.forward`` (l.101–114) uses those features for every image. Here
they are computed once per class list (:meth:`VPT.set_classnames`, a non-persistent buffer) and handed to the engine
by :meth:`VPT.fixed_text_features`; :meth:`VPT.forward` returns the same prompts' embeddings, for code that encodes
prompts itself.

Trained parameters: the vision tokens only (``VPT.build_model`` l.139–145 keeps trainable only the parameters
whose name contains ``"VPT"``: ``visual.VPT`` and the vision blocks' ``VPT_shallow``); Dassl's SGD (momentum 0.9,
weight decay 5e-4).

Official recipe (``configs/trainers/VPT/vit_b16_c2_ep5_batch4_4.yaml``, used by every script in ``scripts/vpt/``):
``N_CTX_VISION 8`` (l.34), ``PROMPT_DEPTH_VISION 12`` (l.37), batch 4 (l.4), SGD lr 0.0025 (l.17–18), 5 epochs
(l.19), cosine (l.20), one constant warm-up epoch at 1e-5 (l.21–23). ``CTX_INIT`` (l.35) is unused by the trainer
(the text prompt is hard-coded, l.73).

Differences from the official code: ``PREC "fp16"`` (l.36) is not the default here (fp32; the official
``load_clip_to_cpu`` returns ``model.float()`` anyway, l.41, so its runs are fp32 apart from the tokens' ``.half()``,
kept by ``half_tokens``); a depth above the image tower's block count is refused (the official code prompts every
block then).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vlprompt.backbones.base import Backbone
from vlprompt.backbones.deep_prompts import DeepPrompts, check_prompts
from vlprompt.backbones.text import zero_shot_weights
from vlprompt.errors import ConfigError
from vlprompt.prompts.base import PromptLearner, register_prompt_learner
from vlprompt.prompts.deep import check_depths
from vlprompt.template import check_template


@dataclass(frozen=True)
class VPTConfig:
    """VPT-deep options, defaults from ``configs/trainers/VPT/vit_b16_c2_ep5_batch4_4.yaml`` (l.33–37).

    Attributes:
        n_ctx_vision: vision tokens per layer (``N_CTX_VISION 8``).
        depth_vision: ``PROMPT_DEPTH_VISION 12`` (input layer included; the official trainer asserts ≥ 1); at
            most the image tower's block count.
        text_template: the fixed hand-crafted prompt (``trainers/vpt.py`` l.73, 80: ``"a photo of a " + name +
            "."``), the same for every dataset.
        init_std: std of the tokens' ``N(0, std²)`` initialisation (0.02, ``clip/model.py`` l.220, 377).
        half_tokens: pass the tokens through fp16 after broadcasting, as the official ``.half()`` does even in fp32.
    """

    n_ctx_vision: int = 8
    depth_vision: int = 12
    text_template: str = "a photo of a {}."
    init_std: float = 0.02
    half_tokens: bool = True

    def __post_init__(self) -> None:
        if self.depth_vision < 1 or self.n_ctx_vision < 1:
            raise ConfigError(f"depth_vision={self.depth_vision}, n_ctx_vision={self.n_ctx_vision}: VPT-deep learns "
                              "vision tokens only, so both must be ≥ 1 (as the official assert).")
        if self.init_std <= 0:
            raise ConfigError(f"init_std must be > 0, got {self.init_std}.")
        check_template(self.text_template, "VPT text_template")


@register_prompt_learner
class VPT(PromptLearner):
    """VPT-deep prompt learner: vision tokens ``deep_vision`` ``(J_v, n_ctx_vision, D_v)``, ``N(0, 0.02²)``; the
    class text features are the frozen model's, of ``text_template``.

    Args:
        backbone: the frozen backbone (a ViT image tower); also encodes the hand-crafted prompts, once.
        classnames: class names; ``_`` becomes a space.
        config: :class:`VPTConfig`.

    Buffers (not saved; rebuilt from the class names): ``hand_features`` ``(C, E)`` L2-normalised fixed text
    features, ``token_ids`` ``(C, L)`` and ``fixed_embeds`` ``(C, L, D_t)`` of the hand-crafted prompts.
    """

    method = "vpt"
    config_class = VPTConfig
    display_name = "VPT-deep"
    prompts_image = True
    #: ``configs/trainers/VPT/vit_b16_c2_ep5_batch4_4.yaml``: BATCH_SIZE 4 (l.4), LR 0.0025 (l.18), MAX_EPOCH 5
    #: (l.19); cosine with one constant warm-up epoch at 1e-5 (l.20–23) are the defaults.
    recipe = {"epochs": 5, "batch_size": 4, "lr": 0.0025}

    def __init__(self, backbone: Backbone, classnames: list[str], config: VPTConfig | None = None):
        super().__init__(config or VPTConfig())
        cfg = self.config
        check_depths(backbone, {"depth_vision": cfg.depth_vision}, {"depth_vision": ("vision", backbone.vision_layers)})
        tokens = torch.empty((cfg.depth_vision, cfg.n_ctx_vision, backbone.vision_width), device=backbone.device)
        nn.init.normal_(tokens, std=cfg.init_std)  # clip/model.py l.376–377 (visual.VPT), l.218–221 (VPT_shallow)
        self.deep_vision = nn.Parameter(tokens)
        check_prompts(backbone, self.deep_prompts())
        self.set_classnames(backbone, classnames)

    def set_classnames(self, backbone: Backbone, classnames: list[str]) -> None:  # noqa: D102
        if not classnames:
            raise ConfigError("no class names given to the prompt learner.")
        template = self.config.text_template
        ids = backbone.tokenize([template.format(c.replace("_", " ")) for c in classnames])  # (C, 77)
        if backbone.causal:  # nothing after the longest EOS reaches a pooled feature under the causal mask
            ids = ids[:, : int(backbone.eos_positions(ids).max()) + 1]
        ids = ids.to(backbone.device)
        with torch.no_grad():
            embeds = backbone.embed_tokens(ids).to(backbone.dtype)  # (C, L, D_t)
            hand = zero_shot_weights(backbone, classnames, [template])  # (C, E), L2-normalised, fp32
        self._classnames = list(classnames)
        self.register_buffer("token_ids", ids, persistent=False)
        self.register_buffer("fixed_embeds", embeds, persistent=False)
        self.register_buffer("hand_features", hand, persistent=False)

    def forward(self, image_features: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The hand-crafted prompts' embeddings ``(C, L, D_t)`` and ids ``(C, L)`` (nothing learned): encoding them
        gives :meth:`fixed_text_features` up to normalisation."""
        return self.fixed_embeds, self.token_ids

    def fixed_text_features(self) -> torch.Tensor:  # noqa: D102
        return self.hand_features

    def deep_prompts(self) -> DeepPrompts:  # noqa: D102
        return DeepPrompts(vision=self.deep_vision)

    @property
    def prompt_cast(self) -> torch.dtype | None:  # noqa: D102
        return torch.float16 if self.config.half_tokens else None


__all__ = ["VPT", "VPTConfig"]
