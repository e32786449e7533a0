"""PromptSRC: prompting with self-regulating constraints (Khattak, Wasim, Naseer, Khan, Yang, Khan, "Self-regulating
Prompts: Foundational Model Adaptation without Forgetting", ICCV 2023, arXiv 2307.06948; official code
``muzairkhattak/PromptSRC`` at bb95c77, ``trainers/promptsrc.py`` and the IVLP blocks of ``clip/model.py``).

Independent deep text and vision prompts (IVLP's: :class:`~vlprompt.prompts.deep.IndependentDeepPrompts`), trained
with three self-regulating terms that keep the prompted model close to the frozen one:

``loss = CE + L1(t, t̃)·TEXT_LOSS_WEIGHT + L1(v, ṽ)·IMAGE_LOSS_WEIGHT + KL(p̃ ‖ p)``

- ``t`` ``[C, E]``: the prompted, L2-normalised class text features; ``t̃``: the frozen model's text features of the
  official 60-template ensemble (:data:`PROMPTSRC_TEMPLATES`, ``trainers/imagenet_templates.py``
  ``IMAGENET_TEMPLATES``): per template the *unnormalised* features, averaged over the templates, then normalised
  (``VLPromptLearner.__init__``: ``torch.cat(...).mean(dim=1)``; ``CustomCLIP.forward`` normalises). Computed once
  per class list, on the first training step (so evaluating new classes never encodes the 60 templates), and kept
  as a non-persistent buffer.
- ``v`` ``[B, E]``: the prompted image features; ``ṽ``: the same images through the unprompted tower, without
  autograd (the official ``ZS_image_encoder``). ``F.l1_loss(…, reduction='mean')`` both: the mean over all entries.
- ``p``, ``p̃``: the softmax of the prompted logits and of the zero-shot ones ``logit_scale · ṽ @ t̃ᵀ`` (the official code casts ``t̃``
  to fp16 there: ``half_teacher``); ``F.kl_div(log_softmax(logits), log_softmax(zs_logits), reduction='sum',
  log_target=True) / logits.numel()`` (``forward_backward``), i.e. ``Σ_b KL(p̃_b ‖ p_b) / (B·C)``: the
  zero-shot distribution is the target (``kl_div``'s second argument), summed over the B rows, divided by ``B·C``.

Gaussian prompt aggregation (:mod:`vlprompt.prompts.gpa`): after each epoch ``e`` of ``N`` the learned tensors,
weighted by ``w_e`` (a Gaussian density over ``e``, mean ``GPA_MEAN``, std ``GPA_STD``, normalised over
``1…N``), are added to an aggregate held in persistent buffers (``gpa_ctx``, ``gpa_deep_text``,
``gpa_deep_vision``, ``gpa_epochs``), so a resumed run continues it exactly; :meth:`PromptSRC.finalize` loads the
aggregate into the prompts, and the saved prompt is the aggregate alone (:meth:`PromptSRC.trainable_state_dict`
leaves the accumulators out).

Trained (the official name filter in ``PromptSRC.build_model``: every parameter whose name contains
``prompt_learner`` except ``ZS_image_encoder``, plus every ``VPT`` parameter): the input-layer text context
``ctx`` ``[4, D_t]`` ("a photo of a", all four words learned), the deeper text tokens
``transformer.resblocks.{1…J_t−1}.VPT_shallow`` (here ``deep_text`` ``[J_t − 1, 4, D_t]``) and the vision tokens
``visual.VPT`` + ``visual.transformer.resblocks.{1…J_v−1}.VPT_shallow`` (``deep_vision`` ``[J_v, 4, D_v]``).

Official recipe (``configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml``, base-to-new): 4 + 4 tokens,
depth 9 in both towers, SGD lr 0.0025 (momentum 0.9, wd 5e-4), batch 4, 20 epochs, cosine, one constant warm-up
epoch at 1e-5, loss weights 25 / 10, GPA mean 15, std 1, ``PREC fp16``; all of it is the default here
(:attr:`PromptSRC.recipe`) except the precision (fp32, vlprompt's deliberate default, ``TrainConfig.precision``; the official fp16 casts of the prompt
tokens and of the zero-shot text features are kept by ``half_tokens`` / ``half_teacher``). The other
protocols' configs differ in a few values: :data:`PROTOCOL_RECIPES`.

Differences from the official code:

- the frozen features come from the run's own backbone in its precision (the official code loads two more copies
  of CLIP: an fp32 one for the text ensemble and an fp16 one for the images — in ``PREC fp32`` that fp16 image
  encoder refuses the fp32 images, so the official fp32 mode does not run);
- the official GPA aggregates the *whole* ``model.state_dict()``, frozen CLIP weights included
  (``Σ_e w_e·W`` is ``W`` only up to rounding: up to 1 fp16 ulp, 9.8e-4, on the tiny fidelity model in fp16,
  ``tests/fidelity/figures/README.md``); here only the learned prompts are aggregated and the backbone is untouched;
- the official aggregate is not part of Dassl's checkpoint, so a resumed official run restarts it; here it resumes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from vlprompt.backbones.base import Backbone
from vlprompt.backbones.text import TEXT_CHUNK
from vlprompt.errors import ConfigError
from vlprompt.prompts.base import TrainingStep, register_prompt_learner
from vlprompt.prompts.deep import IndependentDeepPrompts, IndependentPromptConfig
from vlprompt.prompts.gpa import accumulate, gaussian_epoch_weights

_logger = logging.getLogger(__name__)

#: ``trainers/imagenet_templates.py`` ``IMAGENET_TEMPLATES`` (60 of OpenAI's 80, in the file's order): the frozen
#: text features' ensemble.
PROMPTSRC_TEMPLATES: tuple[str, ...] = tuple(t + "." for t in (
    "a photo of a {}", "a bad photo of a {}", "a photo of many {}", "a sculpture of a {}",
    "a photo of the hard to see {}", "a low resolution photo of the {}", "a rendering of a {}", "graffiti of a {}",
    "a bad photo of the {}", "a cropped photo of the {}", "a tattoo of a {}", "the embroidered {}",
    "a photo of a hard to see {}", "a bright photo of a {}", "a photo of a clean {}", "a photo of a dirty {}",
    "a dark photo of the {}", "a drawing of a {}", "a photo of my {}", "the plastic {}", "a photo of the cool {}",
    "a close-up photo of a {}", "a black and white photo of the {}", "a painting of the {}", "a painting of a {}",
    "a pixelated photo of the {}", "a sculpture of the {}", "a bright photo of the {}", "a cropped photo of a {}",
    "a plastic {}", "a photo of the dirty {}", "a jpeg corrupted photo of a {}", "a blurry photo of the {}",
    "a photo of the {}", "a good photo of the {}", "a rendering of the {}", "a {} in a video game",
    "a photo of one {}", "a doodle of a {}", "a close-up photo of the {}", "the origami {}",
    "the {} in a video game", "a sketch of a {}", "a doodle of the {}", "a origami {}",
    "a low resolution photo of a {}", "the toy {}", "a rendition of the {}", "a photo of the clean {}",
    "a photo of a large {}", "a rendition of a {}", "a photo of a nice {}", "a photo of a weird {}",
    "a blurry photo of a {}", "a cartoon {}", "art of a {}", "a sketch of the {}", "a embroidered {}",
    "a pixelated photo of a {}", "itap of the {}"))

#: The official configs per protocol (``configs/trainers/PromptSRC/``, run by ``scripts/promptsrc/``): the
#: training settings and the learner options that differ from the base-to-new defaults (give them with
#: ``--epochs`` / ``--lr`` / ``--learner-opt``). ``few_shot`` is for ImageNet, Caltech101, OxfordPets, Food101,
#: UCF101 and SUN397, ``few_shot_fine`` (the file's commented alternative) for StanfordCars, Flowers102,
#: FGVCAircraft, DTD and EuroSAT. ``cross_dataset``: ``xd_train.sh`` names ``…_ep5_…_cross_datasets``, a file the
#: repository does not have; the one it has (below) sets MAX_EPOCH 20.
PROTOCOL_RECIPES: dict[str, dict[str, Any]] = {
    "base2new": {"file": "vit_b16_c2_ep20_batch4_4+4ctx.yaml", "epochs": 20, "batch_size": 4, "lr": 0.0025,
                 "learner": {}},
    "cross_dataset": {"file": "vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets.yaml", "epochs": 20, "batch_size": 4,
                      "lr": 0.0025, "learner": {"depth_text": 3, "depth_vision": 3, "gpa_mean": 6.0,
                                                "gpa_std": 10.0}},
    "few_shot": {"file": "vit_b16_c2_ep50_batch4_4+4ctx_few_shot.yaml", "epochs": 50, "batch_size": 4,
                 "lr": 0.0025, "learner": {"gpa_mean": 30.0, "gpa_std": 30.0}},
    "few_shot_fine": {"file": "vit_b16_c2_ep50_batch4_4+4ctx_few_shot.yaml", "epochs": 50, "batch_size": 4,
                      "lr": 0.0025, "learner": {"gpa_mean": 45.0, "gpa_std": 5.0}},
}


@dataclass(frozen=True)
class PromptSRCConfig(IndependentPromptConfig):
    """PromptSRC options (defaults: the official base-to-new config, ``TRAINER.PROMPTSRC``).

    Attributes:
        n_ctx / n_ctx_vision: text / vision tokens per layer (``N_CTX_TEXT`` / ``N_CTX_VISION``, 4 / 4).
        depth_text / depth_vision: prompt depths (``PROMPT_DEPTH_TEXT`` / ``PROMPT_DEPTH_VISION``, 9 / 9).
        text_loss_weight: weight of the text L1 term (``TEXT_LOSS_WEIGHT``, 25).
        image_loss_weight: weight of the image L1 term (``IMAGE_LOSS_WEIGHT``, 10).
        gpa: aggregate the prompts over epochs (always on officially; ``False`` keeps the last epoch's).
        gpa_mean / gpa_std: the Gaussian over epochs 1…N (``GPA_MEAN`` 15, ``GPA_STD`` 1).
        half_teacher: round the frozen text features to fp16 in the zero-shot logits, as the official
            ``fixed_embeddings.half()`` (exact to the official code; ``False``: the model's precision).
    """

    n_ctx: int = 4
    n_ctx_vision: int = 4
    depth_text: int = 9
    depth_vision: int = 9
    text_loss_weight: float = 25.0
    image_loss_weight: float = 10.0
    gpa: bool = True
    gpa_mean: float = 15.0
    gpa_std: float = 1.0
    half_teacher: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (self.text_loss_weight >= 0 and self.image_loss_weight >= 0):
            raise ConfigError(f"text_loss_weight={self.text_loss_weight}, image_loss_weight="
                              f"{self.image_loss_weight}: the loss weights must be ≥ 0.")
        if not self.gpa_std > 0:
            raise ConfigError(f"gpa_std must be > 0, got {self.gpa_std}.")


@register_prompt_learner
class PromptSRC(IndependentDeepPrompts):
    """PromptSRC prompt learner: IVLP tokens, the self-regulating terms in :meth:`training_terms`, GPA in
    :meth:`on_epoch_end` / :meth:`finalize` (see the module docstring).

    Buffers: ``teacher_text`` ``[C, E]`` (the frozen ensemble's normalised text features, not saved, ``None`` until
    the first training step for the current classes); ``gpa_<name>`` (each learned tensor's running aggregate) and
    ``gpa_epochs`` (epochs aggregated), persistent: in the resumable training state, not in the artifact.
    """

    method = "promptsrc"
    config_class = PromptSRCConfig
    display_name = "PromptSRC"
    #: ``configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml``: BATCH_SIZE 4, MAX_EPOCH 20, OPTIM.LR
    #: 0.0025 (the few-shot and cross-dataset configs: :data:`PROTOCOL_RECIPES`).
    recipe = {"epochs": 20, "batch_size": 4, "lr": 0.0025}

    def __init__(self, backbone: Backbone, classnames: list[str], config: PromptSRCConfig):
        super().__init__(backbone, classnames, config)
        for name, p in self.named_parameters():
            self.register_buffer(f"gpa_{name}", torch.zeros_like(p.detach()))
        self.register_buffer("gpa_epochs", torch.zeros((), dtype=torch.long))

    def set_classnames(self, backbone: Backbone, classnames: list[str]) -> None:  # noqa: D102
        super().set_classnames(backbone, classnames)
        self.register_buffer("teacher_text", None, persistent=False)  # recomputed for these classes when trained

    def frozen_text_features(self, backbone: Backbone) -> torch.Tensor:
        """The frozen model's ensemble text features ``[C, E]`` (fp32, L2-normalised), computed once per class list."""
        if self.teacher_text is None:
            self.teacher_text = template_ensemble(backbone, self.classnames, PROMPTSRC_TEMPLATES)
        return self.teacher_text

    def consistency_terms(self, step: TrainingStep) -> dict[str, torch.Tensor]:
        """The three unweighted self-regulating terms of one step: ``text_l1``, ``image_l1``, ``kl`` (scalars)."""
        teacher = self.frozen_text_features(step.backbone)  # (C, E)
        with torch.no_grad():
            if step.images is None:  # a frozen image tower (depth_vision 0): the step's features are the frozen ones
                frozen = step.image_features.detach().float()
            else:
                frozen = F.normalize(step.backbone.encode_image(step.images).float(), dim=-1)  # (B, E)
            zs_text = teacher.half().float() if self.config.half_teacher else teacher
            zs_logits = step.backbone.logit_scale * frozen @ zs_text.t()  # (B, C)
        logits = step.logits.float()
        kl = F.kl_div(F.log_softmax(logits, dim=1), F.log_softmax(zs_logits, dim=1), reduction="sum",
                      log_target=True) / logits.numel()
        return {"text_l1": F.l1_loss(step.text_features.float(), teacher),
                "image_l1": F.l1_loss(step.image_features.float(), frozen), "kl": kl}

    def training_terms(self, step: TrainingStep) -> torch.Tensor:
        """``KL + TEXT_LOSS_WEIGHT·L1_text + IMAGE_LOSS_WEIGHT·L1_image`` (summed in the official order)."""
        t, cfg = self.consistency_terms(step), self.config
        return t["kl"] + t["text_l1"] * cfg.text_loss_weight + t["image_l1"] * cfg.image_loss_weight

    def on_epoch_end(self, epoch: int, epochs: int) -> None:
        """Add epoch ``epoch``'s weighted prompts to the GPA aggregate (epochs must arrive in order, 1…N)."""
        if not self.config.gpa:
            return
        done = int(self.gpa_epochs)
        if done != epoch - 1:
            raise ConfigError(f"PromptSRC's prompt aggregate holds {done} epochs, but epoch {epoch} ended: the "
                              "learner's state (its gpa_* buffers) was not restored with the training state; "
                              "resume from the run's own training state, or retrain.")
        weight = gaussian_epoch_weights(epochs, self.config.gpa_mean, self.config.gpa_std)[epoch - 1]
        with torch.no_grad():
            for name, p in self.named_parameters():
                accumulate(getattr(self, f"gpa_{name}"), p, weight, first=done == 0)
            self.gpa_epochs.fill_(done + 1)

    def finalize(self) -> None:
        """Load the GPA aggregate into the prompts (the official final model); nothing without aggregated epochs."""
        if not self.config.gpa or int(self.gpa_epochs) == 0:
            return
        with torch.no_grad():
            for name, p in self.named_parameters():
                p.copy_(getattr(self, f"gpa_{name}"))
        _logger.info("PromptSRC: the prompts are the Gaussian aggregate of %d epochs", int(self.gpa_epochs))

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The learned prompts only (after :meth:`finalize`: the aggregate), without the GPA accumulators."""
        return {k: v for k, v in super().trainable_state_dict().items() if not k.startswith("gpa_")}


def template_ensemble(backbone: Backbone, classnames: list[str], templates: tuple[str, ...]) -> torch.Tensor:
    """``[C, E]`` fp32: per template the frozen text features of every class (``_`` → space), *unnormalised*,
    averaged over the templates, then L2-normalised (PromptSRC's rule; unlike CLIP's ensemble, which normalises
    each template's features first: :func:`vlprompt.backbones.text.zero_shot_weights`)."""
    names = [c.replace("_", " ") for c in classnames]
    total = None
    with torch.no_grad():
        for t in templates:
            texts = [t.replace("{}", n) for n in names]
            feats = torch.cat([backbone.encode_text(texts[i : i + TEXT_CHUNK]).float()
                               for i in range(0, len(texts), TEXT_CHUNK)])  # (C, E)
            total = feats if total is None else total + feats
    return F.normalize(total / len(templates), dim=-1)


__all__ = ["PROMPTSRC_TEMPLATES", "PROTOCOL_RECIPES", "PromptSRC", "PromptSRCConfig", "template_ensemble"]
