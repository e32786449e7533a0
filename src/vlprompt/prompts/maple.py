"""MaPLe: multi-modal prompt learning (Khattak, Rasheed, Maaz, Khan, Khan, "MaPLe: Multi-modal Prompt Learning",
CVPR 2023, arXiv 2210.03117; official code ``muzairkhattak/multimodal-prompt-learning`` at 69bce21,
``trainers/maple.py`` ``MultiModalPromptLearner`` / ``CustomCLIP`` / ``MaPLe.build_model``, ``clip/model.py``
``ResidualAttentionBlock_MaPLe``, ``VisionTransformer_MaPLe``).

Text tokens are learned at the first ``J`` layers of the text tower (``PROMPT_DEPTH``, J = 9 officially); the
vision tokens are *not* learned on their own but projected from the text tokens of the same layer, one coupling
``Linear(text width → vision width)`` per layer:

- input layer: the context ``ctx`` ``(n, D_t)`` ("a photo" of the init phrase "a photo of a", learned, with "of a"
  kept fixed: :class:`~vlprompt.prompts.deep.DeepPromptLearner`); its vision tokens are ``proj(ctx)`` ``(n, D_v)``
  (``MultiModalPromptLearner.proj``), appended to the image tokens before ``ln_pre``;
- layers ``j = 1…J − 1``: text tokens ``deep_text[j − 1]`` ``(n, D_t)`` (the official ``compound_prompts_text``)
  replace text positions ``1…n`` before text block ``j``, and ``compound_prompt_projections[j − 1](deep_text[j −
  1])`` ``(n, D_v)`` replace the vision prompt tokens before image block ``j``.

So :meth:`MaPLe.deep_prompts` gives the backbone hook (:mod:`vlprompt.backbones.deep_prompts`) text
``[J − 1, n, D_t]`` and vision ``[J, n, D_v]`` = ``[proj(ctx), proj_1(deep_text[0]), …]``: the official blocks use
``compound_prompts_deeper[counter]`` at block ``i ≥ 1`` with ``counter = i − 1`` while ``counter < J − 1``, which is
the hook's ``deep[j − 1]`` before block ``j`` for ``j = 1…J − 1`` (blocks ``J…`` run unprompted on both towers).

Initialisation, as officially and in the official order, so that one seed gives the official tensors: ``proj``
(``nn.Linear`` default init), then the ``J − 1`` text token sets, each ``N(0, 0.02²)``, then ONE ``nn.Linear``
deep-copied ``J − 1`` times (``_get_clones``): all deeper projections start equal. Everything in the learner is
trained (the official trainer turns on gradients for every parameter whose name holds "prompt_learner": ``ctx``,
``proj``, ``compound_prompts_text``, ``compound_prompt_projections``).

Precision: the official code hard-codes the widths (``nn.Linear(ctx_dim, 768)``, ``torch.empty(n_ctx, 512)``: only
ViT-B; upstream issue #73); here they are the backbone's ``text_width`` and ``vision_width``. It calls
``self.proj.half()`` and casts every replacing token with ``.half()`` after broadcasting it; ``half_tokens`` (default
on) reproduces the token casts (``prompt_cast``). ``proj`` is kept in the backbone's dtype: fp16 under ``--precision
fp16`` (the official ``PREC fp16`` default, where the whole CLIP is fp16), fp32 otherwise — the official
``PREC fp32`` calls ``clip_model.float()`` *before* building the prompt learner, so its ``proj`` stays fp16 while
``ctx`` is fp32, and its first forward fails (``mat1 and mat2 must have the same dtype``); under ``amp``, autocast
runs the fp16 ``proj`` in fp16 (vlprompt's ``amp`` keeps an fp32 ``proj``, autocast computing it in half
precision). In every mode ``proj`` starts from the ``.half()``-rounded init values, as officially. The text
tokens and the deeper projections are fp32 in every mode, as officially (they are never halved). vlprompt's default precision is fp32 (``TrainConfig.precision``: fp16 updates the fp16
context without master weights), a deliberate deviation from the official ``PREC fp16``.

Official recipe (``configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml``): ``N_CTX 2``, ``CTX_INIT "a photo of
a"``, ``PROMPT_DEPTH 9``, batch 4, 5 epochs, SGD lr 0.0035 (momentum 0.9, weight decay 5e-4: Dassl's defaults),
cosine, 1 constant warm-up epoch at 1e-5, ``PREC fp16`` (:attr:`MaPLe.recipe`, :class:`MaPLeConfig`). Deviation:
the lr resolves to the shared 0.002 (the engine's recipes set only epochs and batch size); pass ``--lr 0.0035``.
The official cross-dataset / domain-generalisation runs (``scripts/maple/xd_train_maple.sh``) use another config,
``vit_b16_c2_ep5_batch4_2ctx_cross_datasets.yaml``: ``PROMPT_DEPTH 3``, 2 epochs, lr 0.0026 — not resolved per
protocol here; pass ``--learner-opt depth=3 --epochs 2 --lr 0.0026``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from vlprompt.backbones.base import Backbone
from vlprompt.backbones.deep_prompts import DeepPrompts, check_prompts
from vlprompt.errors import BackboneError, ConfigError
from vlprompt.prompts.base import register_prompt_learner
from vlprompt.prompts.deep import DeepPromptConfig, DeepPromptLearner


@dataclass(frozen=True)
class MaPLeConfig(DeepPromptConfig):
    """MaPLe options: the deep prompt base's (``n_ctx`` 2 from "a photo of a", fp16 token casts) plus the depth.

    Attributes:
        depth: prompt depth ``J`` (``PROMPT_DEPTH``, 9 officially): layers of both towers that get tokens, the
            input layer included (1: input layer only, "shallow" MaPLe). At most the smaller tower's block count.
    """

    depth: int = 9

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.depth < 1:
            raise ConfigError(f"--learner-opt depth={self.depth}: MaPLe's prompt depth must be ≥ 1 (the input layer; "
                              "the official 'PROMPT_DEPTH should be >= 1'); use depth=1 for shallow MaPLe.")


@register_prompt_learner
class MaPLe(DeepPromptLearner):
    """MaPLe prompt learner: text tokens at the first ``depth`` layers, vision tokens coupled to them.

    Args:
        backbone: the frozen backbone; a ViT image tower (vision tokens), whose widths size the couplings.
        classnames: class names; ``_`` becomes a space.
        config: :class:`MaPLeConfig` (default: the official options).

    Parameters: ``ctx`` ``(n, D_t)``; ``proj`` ``Linear(D_t → D_v)``; ``deep_text`` ``(J − 1, n, D_t)`` (``None``
    at depth 1); ``compound_prompt_projections`` ``J − 1`` × ``Linear(D_t → D_v)``.
    """

    method = "maple"
    config_class = MaPLeConfig
    display_name = "MaPLe"
    prompts_image = True
    #: ``configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml``: BATCH_SIZE 4, MAX_EPOCH 5, OPTIM.LR 0.0035.
    recipe = {"epochs": 5, "batch_size": 4, "lr": 0.0035}

    def __init__(self, backbone: Backbone, classnames: list[str], config: MaPLeConfig | None = None):
        config = config or MaPLeConfig()
        _check_depth(backbone, config.depth)
        super().__init__(backbone, classnames, config)  # ctx from the phrase's tokens: no random draw
        j, n, d_t, d_v = config.depth, self.n_ctx, backbone.text_width, backbone.vision_width
        device = backbone.device
        # The official order of draws, on the CPU generator as officially (built on the CPU, then moved): proj, the
        # J − 1 text token sets, then the one linear that is cloned.
        # The official self.proj.half(): fp16-rounded init values in every mode, fp16 weights in fp16 mode.
        self.proj = nn.Linear(d_t, d_v).half().to(device, backbone.dtype)
        deep = [nn.init.normal_(torch.empty(n, d_t), std=config.init_std) for _ in range(j - 1)]  # each (n, D_t)
        self.deep_text = nn.Parameter(torch.stack(deep).to(device)) if deep else None  # (J − 1, n, D_t), fp32
        single = nn.Linear(d_t, d_v).to(device)  # fp32, as officially in every mode
        self.compound_prompt_projections = nn.ModuleList([copy.deepcopy(single) for _ in range(j - 1)])
        check_prompts(backbone, self.deep_prompts())

    def deep_prompts(self) -> DeepPrompts:
        """Text ``[J − 1, n, D_t]`` (``None`` at depth 1) and vision ``[J, n, D_v]`` =
        ``[proj(ctx), proj_1(deep_text[0]), …, proj_{J−1}(deep_text[J − 2])]``, with autograd."""
        first = self.proj(self.ctx)  # (n, D_v), in proj's dtype
        if self.deep_text is None:
            return DeepPrompts(text=None, vision=first.unsqueeze(0))  # (1, n, D_v)
        deeper = [p(t) for p, t in zip(self.compound_prompt_projections, self.deep_text, strict=True)]
        vision = torch.stack([first.to(deeper[0].dtype), *deeper])  # (J, n, D_v); fp16 → fp32 is exact
        return DeepPrompts(text=self.deep_text, vision=vision)


def _check_depth(backbone: Backbone, depth: int) -> None:
    """Refuse a depth the backbone cannot take, naming the option, the block counts and the fix."""
    reason = backbone.vision_prompt_unsupported
    if reason:
        raise BackboneError(f"MaPLe needs a ViT image tower (its vision tokens are projected from the text tokens), "
                            f"but backbone '{backbone.name}' cannot take vision prompts: {reason}. Use a ViT model "
                            "(e.g. ViT-B-16).")
    blocks = min(backbone.text_layers, backbone.vision_layers)
    if depth > blocks:
        raise ConfigError(
            f"--learner-opt depth={depth}: MaPLe prompts the first {depth} layers of both towers, but backbone "
            f"'{backbone.name}' has {backbone.text_layers} text and {backbone.vision_layers} image transformer "
            f"blocks; pass --learner-opt depth=N with N ≤ {blocks} (the official code would silently ignore the "
            "extra layers)."
        )


__all__ = ["MaPLe", "MaPLeConfig"]
