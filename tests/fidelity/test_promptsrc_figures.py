"""PromptSRC against the OFFICIAL ``muzairkhattak/PromptSRC`` trainer (DESIGN.md §9).

``figures/official_promptsrc.json`` holds what the official ``PromptSRC`` trainer (its own ``build_model``,
``CustomCLIP``, ``VLPromptLearner`` and ``forward_backward``, ``trainers/promptsrc.py`` at bb95c77) computes on a
small random CLIP (``promptsrc_inputs.py``): the frozen 60-template text features, the logits at init, every loss
term, every trained tensor's gradient, the logits after one SGD step, and its Gaussian prompt aggregation over four
one-batch epochs (``figures/README.md`` says how it ran). vlprompt's :class:`~vlprompt.prompts.promptsrc.PromptSRC`
recomputes them through ``PromptModel`` on open_clip's own model.

Two variants, as for the hook: ``as_is`` (the official fp16 casts of the prompt tokens and of the frozen text
features in the zero-shot logits kept; vlprompt's defaults ``half_tokens`` / ``half_teacher``) and ``no_half``
(those casts removed on both sides): values within 1e-5 in both, gradients within 1e-5 without the casts and at
fp16 resolution (2e-3) with them (a 1e-7 difference can move an fp16 rounding by one ulp).
"""

from __future__ import annotations

import json
from pathlib import Path

import promptsrc_inputs as P
import pytest
import torch
import torch.nn.functional as F
from deep_prompt_inputs import close

from vlprompt.backbones.open_clip import OpenClipBackbone
from vlprompt.engine.config import TrainConfig
from vlprompt.engine.fit import make_optimizer
from vlprompt.engine.model import PromptModel
from vlprompt.prompts.base import TrainingStep
from vlprompt.prompts.gpa import gaussian_epoch_weights
from vlprompt.prompts.promptsrc import PROMPTSRC_TEMPLATES, PromptSRC, PromptSRCConfig

FIGS = json.loads((Path(__file__).parent / "figures" / "official_promptsrc.json").read_text())
TOL = 1e-5
FP16_TOL = 2e-3


@pytest.fixture(scope="module")
def backbone():
    from open_clip.tokenizer import SimpleTokenizer

    sd = P.state_dict()
    assert P.tensors_sha256(sd) == FIGS["weights_sha256"], (
        "the generated PromptSRC fidelity weights changed (torch/open_clip initialise differently?): regenerate "
        "tests/fidelity/figures/official_promptsrc.json as tests/fidelity/figures/README.md describes.")
    assert P.tensors_sha256(P.fixed_inputs()) == FIGS["inputs_sha256"], "the PromptSRC inputs changed: regenerate."
    return OpenClipBackbone(P.open_clip_model(sd), SimpleTokenizer(), name="fidelity-promptsrc")


def learner_of(bb: OpenClipBackbone, half: bool, **extra) -> PromptSRC:
    """PromptSRC as the official trainer was configured, its deeper tokens set to the inputs (ctx: the init)."""
    cfg = PromptSRCConfig(n_ctx=P.N_TEXT, n_ctx_vision=P.N_VISION, depth_text=P.DEPTH, depth_vision=P.DEPTH,
                          half_tokens=half, half_teacher=half, **extra)
    learner = PromptSRC(bb, list(P.CLASSNAMES), cfg)
    inputs = P.fixed_inputs()
    with torch.no_grad():
        learner.deep_text.copy_(inputs["deep_text"])
        learner.deep_vision.copy_(inputs["vision"])
    return learner


def eval_logits(model: PromptModel, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.logits(model.encode_images(images), model.text_features())


@pytest.mark.parametrize("variant", ["as_is", "no_half"])
@pytest.mark.parametrize("shared_prefix", [True, False])
def test_promptsrc_equals_the_official_trainer_at_init_and_after_one_step(backbone, variant, shared_prefix):
    """Init, frozen features, logits, each loss term (exact reductions), every gradient and the post-step logits
    equal the official trainer's (a template ensemble normalised per template, a KL with ``batchmean`` or the
    wrong direction, an L1 on unnormalised features, or a missed image-tower prompt moves them by ≫ 1e-5)."""
    fig = FIGS["cases"][variant]
    inputs = P.fixed_inputs()
    images, labels = inputs["images"], inputs["labels"]
    learner = learner_of(backbone, variant == "as_is")
    model = PromptModel(backbone, learner, shared_prefix=shared_prefix)
    assert torch.equal(learner.ctx.detach(), torch.tensor(fig["ctx_init"]))  # "a photo of a", all four learned
    close(eval_logits(model, images), fig["logits"], "logits at init")
    # the terms, one by one (the step PromptModel.training_loss computes)
    deep = model.deep_prompts()
    image = model.encode_images(images, deep)
    text = model.text_features(None, deep)
    logits = model.logits(image, text)
    terms = learner.consistency_terms(TrainingStep(text, image, logits, labels, images, backbone))
    close(learner.teacher_text, F.normalize(torch.tensor(fig["fixed_text"]), dim=-1), "frozen ensemble features")
    close(text, fig["text"], "prompted text features")
    close(image, fig["image"], "prompted image features")
    for name in ("text_l1", "image_l1", "kl"):
        close(terms[name], fig["loss"][name], f"loss term {name}")
    close(F.cross_entropy(logits, labels), fig["loss"]["ce"], "cross-entropy")
    # the real training path: total loss, gradients, one Dassl SGD step
    loss, _ = model.training_loss(None, labels, images)
    close(loss, fig["loss"]["total"], "total loss")
    opt = make_optimizer(learner, TrainConfig(lr=FIGS["lr"]))
    opt.zero_grad()
    loss.backward()
    grad_tol = FP16_TOL if variant == "as_is" else TOL
    close(learner.ctx.grad, fig["grads"]["ctx"], "ctx gradient", grad_tol)
    close(learner.deep_text.grad, fig["grads"]["deep_text"], "deep text gradients", grad_tol)
    close(learner.deep_vision.grad, fig["grads"]["deep_vision"], "vision gradients", grad_tol)
    opt.step()
    # as_is: the step moved by fp16-rounded gradients (see above), so the new logits agree at that resolution
    close(eval_logits(model, images), fig["logits_after"], "logits after one SGD step", grad_tol)


def test_the_trained_tensors_are_the_official_name_filter(backbone):
    """``build_model``'s filter trains ``prompt_learner.ctx`` and every ``VPT`` tensor: J − 1 deeper text sets and
    J vision sets (``visual.VPT`` + blocks 1…J − 1); vlprompt holds the same as ctx / deep_text / deep_vision, and the
    optimiser gets exactly those."""
    j = P.DEPTH
    want = sorted(["prompt_learner.ctx", "image_encoder.VPT"]
                  + [f"text_encoder.transformer.resblocks.{i}.VPT_shallow" for i in range(1, j)]
                  + [f"image_encoder.transformer.resblocks.{i}.VPT_shallow" for i in range(1, j)])
    assert FIGS["cases"]["as_is"]["enabled"] == want
    learner = learner_of(backbone, True)
    shapes = {n: tuple(p.shape) for n, p in learner.named_parameters()}
    assert shapes == {"ctx": (P.N_TEXT, 128), "deep_text": (j - 1, P.N_TEXT, 128), "deep_vision": (j, P.N_VISION, 128)}
    opt = make_optimizer(learner, TrainConfig())
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in learner.parameters()}


def test_templates_and_the_ensemble_rule_are_the_official_ones(backbone):
    """The 60 ``IMAGENET_TEMPLATES`` of ``trainers/imagenet_templates.py`` in order; averaging unnormalised features
    (official) differs measurably from CLIP's normalise-then-average ensemble (so the check above can fail)."""
    from vlprompt.backbones.text import zero_shot_weights

    assert list(PROMPTSRC_TEMPLATES) == FIGS["templates"] and len(PROMPTSRC_TEMPLATES) == 60
    clip_rule = zero_shot_weights(backbone, list(P.CLASSNAMES), list(PROMPTSRC_TEMPLATES))
    official = F.normalize(torch.tensor(FIGS["cases"]["no_half"]["fixed_text"]), dim=-1)
    assert (clip_rule - official).abs().max() > 100 * TOL


def test_the_official_kl_is_neither_reversed_nor_batchmean():
    """Guard: from the official logits and zero-shot logits, the official reduction reproduces the recorded term,
    while the reversed direction and ``batchmean`` (÷ B instead of ÷ B·C) miss it by ≫ 1e-5."""
    fig = FIGS["cases"]["no_half"]
    logits, zs = torch.tensor(fig["logits"]), torch.tensor(fig["zs_logits"])
    lp, lz = F.log_softmax(logits, 1), F.log_softmax(zs, 1)
    kl = F.kl_div(lp, lz, reduction="sum", log_target=True)
    close(kl / logits.numel(), fig["loss"]["kl"], "official KL from the recorded logits")
    reversed_ = F.kl_div(lz, lp, reduction="sum", log_target=True) / logits.numel()
    assert abs(float(reversed_) - fig["loss"]["kl"]) > 100 * TOL
    assert abs(float(kl) / logits.shape[0] - fig["loss"]["kl"]) > 100 * TOL


def test_gpa_weights_are_the_official_ones_bit_for_bit():
    """``build_model``'s Gaussian weights for the official schedules (base-to-new 20/15/1, cross-dataset 20/6/10,
    few-shot 50/30/30 and 50/45/5) and the short one: identical float64 values."""
    for g in FIGS["gauss"]:
        assert gaussian_epoch_weights(g["epochs"], g["mean"], g["std"]) == g["weights"]
    assert FIGS["gpa"]["weights"] == FIGS["gauss"][-1]["weights"]  # what forward_backward used, epoch by epoch


def test_gpa_aggregate_is_the_official_one_bit_for_bit(backbone):
    """The official trainer's four one-batch epochs: the prompts at each epoch's end, aggregated by vlprompt's
    on_epoch_end and loaded by finalize, equal the prompts of the official final (GPA) model exactly."""
    gpa = FIGS["gpa"]
    learner = learner_of(backbone, False, gpa_mean=gpa["mean"], gpa_std=gpa["std"])
    for epoch, state in enumerate(gpa["states"], start=1):
        with torch.no_grad():
            for name, p in learner.named_parameters():
                p.copy_(torch.tensor(state[name]))
        learner.on_epoch_end(epoch, gpa["epochs"])
    learner.finalize()
    for name, p in learner.named_parameters():
        assert torch.equal(p.detach(), torch.tensor(gpa["final"][name])), name
    last = {k: torch.tensor(v) for k, v in gpa["states"][-1].items()}
    assert (last["deep_vision"] - learner.deep_vision.detach()).abs().max() > 1e-4  # GPA changed the prompts
