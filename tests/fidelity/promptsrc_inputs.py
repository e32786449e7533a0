"""Identical inputs for comparing vlprompt's PromptSRC with the official ``muzairkhattak/PromptSRC`` code.

The weights are those of the deep-prompt hook figures (:func:`deep_prompt_inputs.state_dict`: ViT 32×32 / patch 8 /
width 128 / 3 layers, text width 128 / 3 layers, OpenAI layout, fp16-representable values), so the official
``clip.build_model(state_dict, design_details)`` and open_clip's ``CLIP`` hold the same model. PromptSRC's own
settings: 4 text tokens from "a photo of a" (the official ``N_CTX_TEXT 4``: all four words learned), 2 vision tokens
(fewer than the text's, so that a swapped count fails), depth 3 in both towers (every block of the tiny model),
loss weights 25 / 10 as officially. ``figures/make_promptsrc_figures.py`` fed these to the official code and
``figures/official_promptsrc.json`` records their sha256.
"""

from __future__ import annotations

import torch
from deep_prompt_inputs import CLASSNAMES, open_clip_model, state_dict, tensors_sha256  # noqa: F401 - re-exported

N_TEXT, N_VISION, DEPTH = 4, 2, 3
CTX_INIT = "a photo of a"
TEXT_LOSS_WEIGHT, IMAGE_LOSS_WEIGHT = 25.0, 10.0
LABELS = [1, 0, 4, 2]
#: The one optimiser step: Dassl's SGD (momentum 0.9, weight decay 5e-4) at a learning rate large enough that the
#: logits move by far more than the tolerance (the recipe's 0.0025 would too, but less visibly).
LR = 0.05
#: ``(MAX_EPOCH, GPA_MEAN, GPA_STD)`` of the official configs (base-to-new, cross-dataset, the two few-shot
#: settings) and a short schedule whose aggregate is recorded over fake epochs.
GPA_SCHEDULES = [(20, 15.0, 1.0), (20, 6.0, 10.0), (50, 30.0, 30.0), (50, 45.0, 5.0), (4, 3.0, 1.5)]
GPA_FAKE = (4, 3.0, 1.5)


def fixed_inputs(seed: int = 20261216) -> dict[str, torch.Tensor]:
    """Images ``[4, 3, 32, 32]``, labels ``[4]``, the deeper text tokens ``deep_text`` ``[J − 1, 4, 128]`` and the
    vision tokens ``vision`` ``[J, 2, 128]`` (std 0.5: large enough to change every feature; the input-layer text
    context is the official "a photo of a" initialisation on both sides)."""
    g = torch.Generator().manual_seed(seed)
    return {
        "images": torch.randn((len(LABELS), 3, 32, 32), generator=g),
        "labels": torch.tensor(LABELS, dtype=torch.long),
        "deep_text": 0.5 * torch.randn((DEPTH - 1, N_TEXT, 128), generator=g),
        "vision": 0.5 * torch.randn((DEPTH, N_VISION, 128), generator=g),
    }


def gpa_states(seed: int = 20261217) -> list[dict[str, torch.Tensor]]:
    """One fake learned state per epoch of :data:`GPA_FAKE` (``ctx`` ``[4, 128]``, ``deep_text`` ``[2, 4, 128]``,
    ``deep_vision`` ``[3, 2, 128]``), the prompts as they would stand at the end of each epoch."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"ctx": (N_TEXT, 128), "deep_text": (DEPTH - 1, N_TEXT, 128), "deep_vision": (DEPTH, N_VISION, 128)}
    return [{k: torch.randn(s, generator=g) for k, s in shapes.items()} for _ in range(GPA_FAKE[0])]
