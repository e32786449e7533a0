"""open_clip adapter: turns an ``open_clip`` CLIP into the :class:`~vlprompt.backbones.base.Backbone` protocol.

Handles the two model families open_clip ships with a text transformer: OpenAI-style ``CLIP`` (text tower as
top-level attributes) and ``CustomTextCLIP`` (tower under ``model.text``), with argmax (OpenAI) or eos pooling,
and any image tower (ModifiedResNet, ViT, timm). Text towers that CoOp cannot drive are refused: no causal mask
(SigLIP-style bidirectional towers), last/first-token or CLS pooling (SigLIP, CoCa), or Hugging Face text towers.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.backbones.base import OPENAI_MEAN, OPENAI_STD, Backbone, PreprocessCfg, weights_fingerprint
from vlprompt.backbones.clip_bpe import ClipBpeTextMixin
from vlprompt.backbones.deep_prompts import (
    DeepPrompts,
    check_prompts,
    check_text_positions,
    open_clip_image,
    replace_text,
    run_transformer,
    vision_unsupported_reason,
)
from vlprompt.backbones.shared_prefix import SharedPrefixMixin, open_clip_block
from vlprompt.errors import BackboneError

_logger = logging.getLogger(__name__)


def preprocess_of(model: nn.Module) -> PreprocessCfg:
    """The preprocessing open_clip attached to ``model`` (``model.visual.preprocess_cfg``, set by ``create_model``
    from the weights tag's pretrained config: mean, std, interpolation, resize mode), at the image tower's size."""
    size = getattr(model.visual, "image_size", 224)
    size = size[0] if isinstance(size, (tuple, list)) else int(size)
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    return PreprocessCfg(
        image_size=size,
        mean=tuple(cfg.get("mean", OPENAI_MEAN)),
        std=tuple(cfg.get("std", OPENAI_STD)),
        interpolation=cfg.get("interpolation", "bicubic"),
        resize_mode=cfg.get("resize_mode", "shortest"),
    )


def activation_of(model: nn.Module) -> str:
    """``"quick_gelu"`` if the model's MLPs use open_clip's ``QuickGELU``, else ``"gelu"`` (read from the modules
    actually built, so it is right whatever path built them: tag, checkpoint, TorchScript rebuild)."""
    from open_clip.transformer import QuickGELU

    return "quick_gelu" if any(isinstance(m, QuickGELU) for m in model.modules()) else "gelu"


class _TextTower:
    """Uniform view over the text parts of ``CLIP`` and ``CustomTextCLIP`` (plain references, not a module)."""

    def __init__(self, model: nn.Module, model_name: str):
        from open_clip.transformer import TextTransformer

        text = getattr(model, "text", None)
        if text is not None:
            if not isinstance(text, TextTransformer):
                raise BackboneError(
                    f"backbone '{model_name}': its text tower is {type(text).__name__} (a Hugging Face or custom "
                    "encoder), not open_clip's TextTransformer; CoOp needs to feed learned embeddings into a causal "
                    "CLIP-style text transformer and pool at the EOS token. Use a CLIP-style model (e.g. RN50, "
                    "ViT-B-16)."
                )
            if text.cls_emb is not None:
                raise BackboneError(
                    f"backbone '{model_name}': its text tower appends a CLS token and pools it (CoCa-style), so "
                    "CoOp's EOS pooling does not apply. Use a CLIP-style model (e.g. RN50, ViT-B-16)."
                )
            self.transformer = text.transformer
            self.token_embedding = text.token_embedding
            self.positional_embedding = text.positional_embedding
            self.ln_final = text.ln_final
            self.text_projection = text.text_projection
            self.pool_type = text.pool_type
            self.eos_id = text.eos_id
            self.attn_mask = text.attn_mask
        else:
            self.transformer = model.transformer
            self.token_embedding = model.token_embedding
            self.positional_embedding = model.positional_embedding
            self.ln_final = model.ln_final
            self.text_projection = model.text_projection
            self.pool_type = getattr(model, "text_pool_type", "argmax")
            self.eos_id = getattr(model, "text_eos_id", None)
            self.attn_mask = getattr(model, "attn_mask", None)
        if self.attn_mask is None:
            raise BackboneError(
                f"backbone '{model_name}': its text tower has no causal mask (bidirectional, SigLIP-style). CoOp pools "
                "the EOS token of a causal text transformer, whose feature depends only on the tokens before it; "
                "without the causal mask that pooling (and the learned-context method) does not apply. Use a "
                "CLIP-style model (e.g. RN50, ViT-B-16)."
            )
        if self.pool_type not in ("argmax", "eos"):
            raise BackboneError(
                f"backbone '{model_name}': its text tower pools with '{self.pool_type}' (last/first-token pooling, "
                "SigLIP-style), not at the EOS token, so CoOp's EOS pooling does not apply. Use a CLIP-style model "
                "(e.g. RN50, ViT-B-16)."
            )


class OpenClipBackbone(ClipBpeTextMixin, SharedPrefixMixin, Backbone):
    """A frozen open_clip model behind the backbone protocol.

    Args:
        model: an open_clip ``CLIP`` or ``CustomTextCLIP``.
        tokenizer: its ``open_clip.tokenizer.SimpleTokenizer`` (the CLIP BPE).
        name: registry name (recorded in artifacts).
        pretrained: pretrained tag or checkpoint path, ``"random"`` for seeded random weights.
        preprocess: image preprocessing; read from the model when omitted (:func:`preprocess_of`).

    ``activation`` (recorded in :meth:`identity`) is read from the built modules (:func:`activation_of`).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        name: str,
        pretrained: str | None = None,
        preprocess: PreprocessCfg | None = None,
    ):
        super().__init__()
        from open_clip.tokenizer import SimpleTokenizer

        if not isinstance(tokenizer, SimpleTokenizer):
            raise BackboneError(
                f"backbone '{name}': uses tokenizer {type(tokenizer).__name__}; vlprompt supports the CLIP BPE "
                "tokenizer (SimpleTokenizer), which CoOp's placeholder and EOS handling rely on."
            )
        if getattr(model, "logit_bias", None) is not None:
            raise BackboneError(
                f"backbone '{name}': has a logit bias (sigmoid-loss SigLIP-style model); CoOp's softmax over "
                "cosine logits and EOS pooling do not apply. Use a CLIP-style model (e.g. RN50, ViT-B-16)."
            )
        self.model = model.eval().requires_grad_(False)
        self.text = _TextTower(model, name)
        self.tokenizer = tokenizer
        self.name = name
        self.pretrained = pretrained
        self.context_length = int(self.text.positional_embedding.shape[0])
        self.token_dim = int(self.text.token_embedding.weight.shape[1])
        proj = self.text.text_projection
        if proj is None:
            self.embed_dim = self.token_dim
        elif isinstance(proj, nn.Linear):
            self.embed_dim = int(proj.out_features)
        else:
            self.embed_dim = int(proj.shape[1])
        self.causal = True  # checked in _TextTower
        self.preprocess = preprocess if preprocess is not None else preprocess_of(model)
        self.activation = activation_of(model)
        self.fingerprint = weights_fingerprint(model)

    # --- text ----------------------------------------------------------------------------------------------
    @property
    def token_embedding_weight(self) -> torch.Tensor:  # noqa: D102
        return self.text.token_embedding.weight

    @property
    def dtype(self) -> torch.dtype:  # noqa: D102
        return self.text.transformer.get_cast_dtype()

    def eos_positions(self, ids: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if self.text.pool_type == "argmax":
            return ids.argmax(dim=-1)  # EOT has the largest id in CLIP's vocabulary
        return (ids == self.text.eos_id).int().argmax(dim=-1)

    def encode_text_embeddings(  # noqa: D102
        self, embeds: torch.Tensor, ids: torch.Tensor, truncate: bool = True, deep_text: torch.Tensor | None = None,
        prompt_cast: torch.dtype | None = None,
    ) -> torch.Tensor:
        embeds, eos = self._pool_and_cut(embeds, ids, truncate)  # (N, L, D), (N,)
        length = embeds.shape[1]
        dtype = self.dtype
        x = embeds.to(dtype) + self.text.positional_embedding[:length].to(dtype)  # (N, L, D)
        mask = self.text.attn_mask[:length, :length]
        if deep_text is None:
            x = self.text.transformer(x, attn_mask=mask)  # (N, L, D)
        else:  # the same blocks, positions 1..n replaced between them (backbones/deep_prompts.py)
            self._check_deep_text(deep_text)
            check_text_positions(self.name, deep_text.shape[1], eos)
            x = run_transformer(self.text.transformer, x, mask, deep_text, replace_text, prompt_cast)  # (N, L, D)
        return self._pool_project(x, eos)

    # --- deep prompts (backbones/deep_prompts.py) ------------------------------------------------------------
    @property
    def text_layers(self) -> int:
        """Number of text transformer blocks."""
        return len(self.text.transformer.resblocks)

    @property
    def text_width(self) -> int:
        """Text transformer width (``token_dim``)."""
        return self.token_dim

    @property
    def vision_prompt_unsupported(self) -> str | None:
        """Why the image tower cannot take vision prompts, or ``None`` when it can."""
        return vision_unsupported_reason(self.model.visual)

    @property
    def vision_layers(self) -> int | None:
        """Number of image transformer blocks (``None`` for a non-ViT tower)."""
        return None if self.vision_prompt_unsupported else len(self.model.visual.transformer.resblocks)

    @property
    def vision_width(self) -> int | None:
        """Image transformer width (``None`` for a non-ViT tower)."""
        return None if self.vision_prompt_unsupported else int(self.model.visual.transformer.width)

    @property
    def vision_heads(self) -> int | None:
        """Attention heads of the image transformer (``None`` for a non-ViT tower)."""
        if self.vision_prompt_unsupported:
            return None
        return int(self.model.visual.transformer.resblocks[0].attn.num_heads)

    def _check_deep_text(self, deep_text: torch.Tensor) -> None:
        check_prompts(self, DeepPrompts(text=deep_text))

    def _pool_project(self, x: torch.Tensor, eos: torch.Tensor) -> torch.Tensor:
        """Final LayerNorm, EOS pooling and text projection: ``[N, L, D]`` hidden states → ``[N, E]``."""
        x = self.text.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eos]  # (N, D) EOS pooling
        proj = self.text.text_projection
        if proj is not None:
            x = proj(x) if isinstance(proj, nn.Linear) else x @ proj  # (N, E)
        return x

    # --- shared prefix (exact; hooks of SharedPrefixMixin, see backbones/shared_prefix.py) -----------------
    def _prefix_unsupported_reason(self) -> str | None:
        from vlprompt.backbones.shared_prefix import unsupported_reason

        return unsupported_reason(self.text.transformer, self.text.attn_mask)

    def _prefix_blocks(self) -> nn.ModuleList:
        return self.text.transformer.resblocks

    def _prefix_block(self, blk, x, past):
        return open_clip_block(blk, x, past)

    def _add_positions(self, x: torch.Tensor, offset: int) -> torch.Tensor:
        return x + self.text.positional_embedding[offset : offset + x.shape[1]].to(x.dtype)  # (N, S, D)

    # --- image ---------------------------------------------------------------------------------------------
    def encode_image(  # noqa: D102
        self, images: torch.Tensor, vision_prompts: torch.Tensor | None = None, prompt_cast: torch.dtype | None = None
    ) -> torch.Tensor:
        images = images.to(device=self.device, dtype=self.dtype)
        if vision_prompts is None:
            return self.model.encode_image(images)
        check_prompts(self, DeepPrompts(vision=vision_prompts))
        return open_clip_image(self.model.visual, images, vision_prompts, prompt_cast)  # (B, E)

    @property
    def logit_scale(self) -> torch.Tensor:  # noqa: D102
        return self.model.logit_scale.detach().float().exp().reshape(())


def normalize(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise along the last dimension (in fp32 for stability)."""
    return F.normalize(x.float(), dim=-1)
