"""Hugging Face transformers adapter: turns a ``transformers`` ``CLIPModel`` into the backbone protocol.

transformers' text model takes token ids, not embeddings, at the top level, so the text tower is driven from its
parts: its embeddings module (position embeddings added to *our* input embeddings), its encoder with an explicit
causal mask, its final LayerNorm, EOS pooling with the model's own rule, and ``text_projection``:

- configs from before transformers PR #24773 carry ``eos_token_id == 2`` and pool at the highest token id (argmax;
  CLIP's EOT 49407 is the largest id);
- newer configs pool at the first ``eos_token_id`` (49407).

For CLIP-BPE ids (vlprompt's tokenizer, :mod:`vlprompt.backbones.clip_bpe`) both select the EOT position.

Version notes (checked against transformers 4.x and 5.x sources):

- ``model.text_model`` is a ``CLIPTextTransformer`` in 4.x and a ``CLIPTextModel`` in 5.x; both hold
  ``embeddings`` / ``encoder`` / ``final_layer_norm`` / ``eos_token_id``.
- In 4.x (tested: 4.40, 4.46, 4.57) the encoder takes the causal mask as a separate ``causal_attention_mask``;
  5.x takes one ``attention_mask`` (built by ``create_causal_mask``, whose signature differs between late 4.x and
  5.x dev versions). vlprompt passes its own additive ``[N, 1, L, L]`` causal mask through whichever argument the
  installed encoder has, which the ``eager`` and ``sdpa`` attention implementations both apply; other
  implementations (flash, flex) are refused.
- ``get_text_features`` / ``get_image_features`` return a tensor in 4.x and a model output (``pooler_output``)
  in 5.x; :func:`features_tensor` accepts both.

The exact shared-prefix path (:mod:`vlprompt.backbones.shared_prefix`) writes ``CLIPEncoderLayer`` out with its own
weights (:func:`hf_clip_block`); other layer types fall back to the plain path.
"""

from __future__ import annotations

import inspect
import logging

import torch
import torch.nn.functional as F
from torch import nn

from vlprompt.backbones.base import Backbone, PreprocessCfg, weights_fingerprint
from vlprompt.backbones.clip_bpe import CLIP_VOCAB_SIZE, EOT_ID, SOT_ID, ClipBpeTextMixin, clip_bpe_tokenizer
from vlprompt.backbones.deep_prompts import (
    DeepPrompts,
    check_prompts,
    check_text_positions,
    expand_tokens,
    replace_text,
    replace_vision,
    run_blocks,
)
from vlprompt.backbones.shared_prefix import SharedPrefixMixin, attend, split_heads
from vlprompt.errors import BackboneError

_logger = logging.getLogger(__name__)

#: Attention implementations that apply an explicit additive attention mask.
_MASKED_ATTENTION = ("eager", "sdpa")
#: ``eos_token_id`` of configs from before transformers PR #24773 (they pool with argmax).
LEGACY_EOS_ID = 2


def features_tensor(out: torch.Tensor | object) -> torch.Tensor:
    """The ``[N, E]`` features of ``get_text_features``/``get_image_features`` (a tensor in 4.x, an output in 5.x)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def causal_mask(n: int, length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Additive causal mask ``[N, 1, L, L]``: 0 on and below the diagonal, the dtype's minimum above (as HF's)."""
    mask = torch.full((length, length), torch.finfo(dtype).min, dtype=dtype, device=device).triu(1)  # (L, L)
    return mask[None, None].expand(n, 1, length, length)


def hf_clip_block(
    layer: nn.Module, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None, causal: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One transformers ``CLIPEncoderLayer`` on ``x`` ``[N, S, D]`` as a shared-prefix block function: pre-norm
    attention (separate q/k/v projections, scale ``hd ** -0.5``) over ``past`` + causal own positions, then the MLP.
    ``causal=False`` (no ``past``): unmasked attention, as in the image tower.
    Returns ``(x_out, k, v)``, ``k``/``v`` ``[N, H, S, hd]``."""
    attn = layer.self_attn
    n, s, d = x.shape
    h = layer.layer_norm1(x)  # (N, S, D)
    q, k, v = (split_heads(proj(h), attn.num_heads) for proj in (attn.q_proj, attn.k_proj, attn.v_proj))  # (N, H, S, hd)
    a = attend(q, k, v, past) if causal else F.scaled_dot_product_attention(q, k, v)  # (N, H, S, hd)
    x = x + attn.out_proj(a.transpose(1, 2).reshape(n, s, d))  # (N, S, D)
    x = x + layer.mlp(layer.layer_norm2(x))
    return x, k, v


def explicit_layers_reason(layers: nn.ModuleList, tower: str) -> str | None:
    """Why :func:`hf_clip_block` cannot reproduce ``layers`` of the ``tower`` (``None`` when it can)."""
    from transformers.models.clip.modeling_clip import CLIPAttention, CLIPEncoderLayer

    for i, layer in enumerate(layers):
        if type(layer) is not CLIPEncoderLayer:
            return f"{tower} layer {i} is {type(layer).__name__}, not transformers' CLIPEncoderLayer"
        attn = layer.self_attn
        if not isinstance(attn, CLIPAttention) or abs(attn.scale - attn.head_dim**-0.5) > 1e-12:
            return f"{tower} layer {i}'s attention is {type(attn).__name__} (not CLIPAttention with scale hd^-0.5)"
    return None


class HFClipBackbone(ClipBpeTextMixin, SharedPrefixMixin, Backbone):
    """A frozen transformers ``CLIPModel`` behind the backbone protocol.

    Args:
        model: a ``transformers.CLIPModel`` with CLIP's 49408-token BPE vocabulary.
        name: registry name (``"hf:ORG/NAME"`` or ``"hf:DIR"``, recorded in artifacts).
        pretrained: where the files were read from when it differs from the name (``--pretrained DIR``), else ``None``.
        preprocess: image preprocessing; CLIP's defaults at the model's image size when omitted.

    Raises:
        BackboneError: another vocabulary, an EOS id that is neither 2 nor CLIP's EOT, or an attention
            implementation that ignores explicit masks (e.g. flash attention).
    """

    def __init__(
        self, model: nn.Module, name: str, pretrained: str | None = None, preprocess: PreprocessCfg | None = None
    ):
        super().__init__()
        text_cfg = model.config.text_config
        if text_cfg.vocab_size != CLIP_VOCAB_SIZE:
            raise BackboneError(
                f"backbone '{name}': its text vocabulary has {text_cfg.vocab_size} tokens, not CLIP's {CLIP_VOCAB_SIZE}"
                "-token BPE vocabulary that vlprompt tokenises with (SOT 49406, EOT 49407); models with another or an "
                "extended tokenizer are not supported."
            )
        eos_id = getattr(model.text_model, "eos_token_id", text_cfg.eos_token_id)
        if eos_id not in (LEGACY_EOS_ID, EOT_ID):
            raise BackboneError(
                f"backbone '{name}': text config eos_token_id={eos_id}; the model pools at the first token {eos_id}, "
                f"which CLIP's BPE never produces. Expected {EOT_ID} (CLIP's end of text) or {LEGACY_EOS_ID} (old "
                "configs, which pool at the highest token id)."
            )
        attn = getattr(text_cfg, "_attn_implementation", None) or "eager"
        if attn not in _MASKED_ATTENTION:
            raise BackboneError(
                f"backbone '{name}': its text tower uses attention implementation '{attn}', which does not apply the "
                "explicit causal mask vlprompt passes; load the model with attn_implementation='sdpa' (or 'eager')."
            )
        self.model = model.eval().requires_grad_(False)
        self.eos_token_id = int(eos_id)
        # transformers 4.x: encoder(inputs_embeds, attention_mask, causal_attention_mask, ...); 5.x: one mask.
        self._separate_causal_mask = "causal_attention_mask" in inspect.signature(
            model.text_model.encoder.forward
        ).parameters
        self.tokenizer = clip_bpe_tokenizer()
        if (self.tokenizer.sot_token_id, self.tokenizer.eot_token_id) != (SOT_ID, EOT_ID):
            raise BackboneError("open_clip's SimpleTokenizer no longer has CLIP's SOT/EOT ids; upgrade vlprompt.")
        self.name = name
        self.pretrained = pretrained
        self.context_length = int(text_cfg.max_position_embeddings)
        self.token_dim = int(text_cfg.hidden_size)
        self.embed_dim = int(model.text_projection.out_features)
        self.causal = True
        # The config's hidden_act ("quick_gelu" for OpenAI's checkpoints) is what transformers' own MLPs apply,
        # and vlprompt runs those modules: recorded, as the fingerprint of the weights cannot see it.
        acts = {str(text_cfg.hidden_act), str(model.config.vision_config.hidden_act)}
        self.activation = acts.pop() if len(acts) == 1 else (
            f"text {text_cfg.hidden_act}, vision {model.config.vision_config.hidden_act}")
        self.preprocess = preprocess or PreprocessCfg(image_size=int(model.config.vision_config.image_size))
        self.fingerprint = weights_fingerprint(model)

    # --- text ----------------------------------------------------------------------------------------------
    @property
    def token_embedding_weight(self) -> torch.Tensor:  # noqa: D102
        return self.model.text_model.embeddings.token_embedding.weight

    @property
    def dtype(self) -> torch.dtype:  # noqa: D102
        return self.model.text_projection.weight.dtype

    def eos_positions(self, ids: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if self.eos_token_id == LEGACY_EOS_ID:
            return ids.argmax(dim=-1)  # EOT has the largest id in CLIP's vocabulary
        return (ids == self.eos_token_id).int().argmax(dim=-1)  # the first EOS

    def encode_text_embeddings(  # noqa: D102
        self, embeds: torch.Tensor, ids: torch.Tensor, truncate: bool = True, deep_text: torch.Tensor | None = None,
        prompt_cast: torch.dtype | None = None,
    ) -> torch.Tensor:
        embeds, eos = self._pool_and_cut(embeds, ids, truncate)  # (N, L, D), (N,)
        n, length = embeds.shape[:2]
        text = self.model.text_model
        x = self._add_positions(embeds.to(self.dtype), 0)  # (N, L, D)
        if deep_text is not None:  # the explicit CLIPEncoderLayer (hf_clip_block), positions 1..n replaced between
            self._check_deep_text(deep_text)
            check_text_positions(self.name, deep_text.shape[1], eos)
            x = run_blocks(self._prefix_blocks(), x, deep_text, replace_text,
                           lambda blk, h: hf_clip_block(blk, h, None)[0], cast=prompt_cast)
            return self._pool_project(x, eos)
        mask = causal_mask(n, length, x.dtype, x.device)  # (N, 1, L, L)
        if self._separate_causal_mask:
            out = text.encoder(inputs_embeds=x, attention_mask=None, causal_attention_mask=mask)
        else:
            out = text.encoder(inputs_embeds=x, attention_mask=mask)
        x = out if isinstance(out, torch.Tensor) else out[0]  # (N, L, D) last hidden state
        return self._pool_project(x, eos)

    def _pool_project(self, x: torch.Tensor, eos: torch.Tensor) -> torch.Tensor:
        """Final LayerNorm, EOS pooling and text projection: ``[N, L, D]`` hidden states → ``[N, E]``."""
        x = self.model.text_model.final_layer_norm(x)
        x = x[torch.arange(x.shape[0], device=x.device), eos]  # (N, D) EOS pooling
        return self.model.text_projection(x)  # (N, E)

    def _add_positions(self, x: torch.Tensor, offset: int) -> torch.Tensor:
        """The model's own embeddings module: ``x`` ``[N, S, D]`` + position embeddings ``offset…offset+S-1``."""
        positions = torch.arange(offset, offset + x.shape[1], device=x.device).unsqueeze(0)  # (1, S)
        return self.model.text_model.embeddings(inputs_embeds=x, position_ids=positions)

    # --- shared prefix (exact; hooks of SharedPrefixMixin, see backbones/shared_prefix.py) -----------------
    def _prefix_unsupported_reason(self) -> str | None:
        return explicit_layers_reason(self._prefix_blocks(), "text")

    def _prefix_blocks(self) -> nn.ModuleList:
        return self.model.text_model.encoder.layers

    def _prefix_block(self, blk, x, past):
        return hf_clip_block(blk, x, past)

    # --- deep prompts (text side; backbones/deep_prompts.py) -------------------------------------------------
    @property
    def text_layers(self) -> int:  # noqa: D102
        return len(self._prefix_blocks())

    @property
    def text_width(self) -> int:  # noqa: D102
        return self.token_dim

    @property
    def vision_prompt_unsupported(self) -> str | None:  # noqa: D102
        return explicit_layers_reason(self.model.vision_model.encoder.layers, "image")

    @property
    def vision_layers(self) -> int | None:  # noqa: D102
        return None if self.vision_prompt_unsupported else len(self.model.vision_model.encoder.layers)

    @property
    def vision_width(self) -> int | None:  # noqa: D102
        return None if self.vision_prompt_unsupported else int(self.model.config.vision_config.hidden_size)

    @property
    def vision_heads(self) -> int | None:  # noqa: D102
        return None if self.vision_prompt_unsupported else int(self.model.config.vision_config.num_attention_heads)

    def _prompted_image(self, pixels: torch.Tensor, vision: torch.Tensor, cast: torch.dtype | None) -> torch.Tensor:
        """``CLIPVisionTransformer`` with vision prompts ``[J_v, n_v, D_v]`` (positions of
        :mod:`vlprompt.backbones.deep_prompts`), its own embeddings, ``pre_layrnorm`` (per token, so applied to the
        tokens separately), layers (explicit, unmasked), CLS pooling, ``post_layernorm``, projection: ``[B, E]``."""
        vm = self.model.vision_model
        x = vm.embeddings(pixels)  # (B, 1 + g², D)
        like = x[:, :1].expand(-1, vision.shape[1], -1)  # (B, n_v, D): n_v may exceed the 1 + g² image tokens
        first = vm.pre_layrnorm(expand_tokens(vision[0], like, 1, cast))  # (B, n_v, D)
        x = torch.cat([vm.pre_layrnorm(x), first], dim=1)  # (B, 1 + g² + n_v, D)
        x = run_blocks(vm.encoder.layers, x, vision[1:], replace_vision,
                       lambda blk, h: hf_clip_block(blk, h, None, causal=False)[0], cast=cast)
        return self.model.visual_projection(vm.post_layernorm(x[:, 0]))  # (B, E)

    def _check_deep_text(self, deep_text: torch.Tensor) -> None:
        reason = self.shared_prefix_unsupported
        if reason:
            raise BackboneError(f"backbone '{self.name}': deep text prompts need the explicit text layers: {reason}.")
        check_prompts(self, DeepPrompts(text=deep_text))

    # --- image ---------------------------------------------------------------------------------------------
    def encode_image(  # noqa: D102
        self, images: torch.Tensor, vision_prompts: torch.Tensor | None = None, prompt_cast: torch.dtype | None = None
    ) -> torch.Tensor:
        pixels = images.to(device=self.device, dtype=self.dtype)  # (B, 3, H, W)
        if vision_prompts is not None:
            check_prompts(self, DeepPrompts(vision=vision_prompts))
            return self._prompted_image(pixels, vision_prompts, prompt_cast)
        return features_tensor(self.model.get_image_features(pixel_values=pixels))  # (B, E)

    @property
    def logit_scale(self) -> torch.Tensor:  # noqa: D102
        return self.model.logit_scale.detach().float().exp().reshape(())


def create_hf_backbone(name: str, pretrained: str | None = None, precision: str = "fp32") -> HFClipBackbone:
    """Build an :class:`HFClipBackbone` from ``hf:ORG/NAME`` or ``hf:DIR`` (see :mod:`vlprompt.backbones.hf_loading`).

    Args:
        name: ``"hf:ORG/NAME"`` (Hub repo, from the local cache) or ``"hf:DIR"`` (a local directory).
        pretrained: a local directory overriding where the files are, or ``None``.
        precision: ``"fp32"``/``"amp"`` (fp32 weights) or ``"fp16"`` (every weight in fp16: transformers'
            LayerNorms, unlike open_clip's, do not accept fp16 inputs with fp32 weights).

    Returns:
        The frozen backbone on the CPU.
    """
    from vlprompt.backbones.hf_loading import canonical_name, check_vocab, load_hf_clip, read_preprocess

    model, src = load_hf_clip(name, pretrained)
    backbone = HFClipBackbone(model, canonical_name(name, pretrained), pretrained, read_preprocess(src, model))
    check_vocab(src, backbone.tokenizer.encoder, name)
    if precision == "fp16":
        model.to(torch.float16)
    return backbone
