"""IVLP and VPT-deep against the OFFICIAL trainers (DESIGN.md §9).

``figures/official_ivlp_vpt.json`` holds what ``muzairkhattak/multimodal-prompt-learning``'s ``IVLP`` and ``VPT``
trainers compute on a small random ViT CLIP (``deep_prompt_inputs.py``, 3 + 3 blocks): their ``build_model``
(official ``CustomCLIP``, trainable parameters, Dassl's SGD at the yaml's lr) and one ``forward_backward`` step
at the tokens of ``ivlp_vpt_inputs.tokens`` (``figures/README.md`` says how it ran). vlprompt's ``ivlp`` / ``vpt``
learners, trained through ``PromptModel.training_loss`` and ``make_optimizer`` with the resolved recipe, must give
the same initial context, trainable set, logits, loss, every token's gradient, parameters and logits after the
step.

Tolerances as ``test_deep_prompt_figures.py``: fp32 values within 1e-5 (relative to max(1, |official|)); with the
official ``.half()`` casts (``half_tokens=True``, the ``*_as_is`` cases) gradients only at fp16 resolution (2e-3:
rounding is discontinuous, and vlprompt's shared prefix rounds the deep text gradient once for all classes), and
the ``*_no_half`` cases (casts removed on both sides) within 1e-5 everywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import deep_prompt_inputs as W
import ivlp_vpt_inputs as V
import pytest
import torch
from deep_prompt_inputs import close

from vlprompt.backbones.open_clip import OpenClipBackbone
from vlprompt.engine.config import TrainConfig
from vlprompt.engine.fit import make_optimizer
from vlprompt.engine.model import PromptModel
from vlprompt.engine.recipe import resolve_train_config
from vlprompt.prompts import create_prompt_learner

FIGS = json.loads((Path(__file__).parent / "figures" / "official_ivlp_vpt.json").read_text())
TOL = 1e-5
FP16_TOL = 2e-3


@pytest.fixture(scope="module")
def backbone():
    from open_clip.tokenizer import SimpleTokenizer

    sd = W.state_dict()
    assert W.tensors_sha256(sd) == FIGS["weights_sha256"], (
        "the generated fidelity weights changed (torch/open_clip initialise differently?): regenerate "
        "tests/fidelity/figures/official_ivlp_vpt.json as tests/fidelity/figures/README.md describes.")
    assert W.tensors_sha256(W.fixed_inputs()) == FIGS["inputs_sha256"], "the generated inputs changed: regenerate."
    return OpenClipBackbone(W.open_clip_model(sd), SimpleTokenizer(), name="fidelity-ivlp-vpt")


def layer(learner, name: str, grad: bool = False) -> torch.Tensor:
    """vlprompt's tensor for ``name`` (``ctx`` or ``deep_text.j`` / ``deep_vision.j``: one layer's tokens)."""
    stack, _, j = name.partition(".")
    t = getattr(learner, stack)
    t = t.grad if grad else t.detach()
    return t if not j else t[int(j)]


@pytest.mark.parametrize("case", list(V.CASES))
def test_learner_equals_the_official_trainer_at_init_and_after_one_sgd_step(backbone, case):
    """Catches: a token at the wrong layer (the shallow cases: blocks past the depth must not be prompted), the
    wrong trainable set or init, the recipe's lr, weight decay or momentum, and VPT's text side (its hand-crafted
    features enter every logit)."""
    method, opts = V.CASES[case]
    fig = FIGS["cases"][case]
    tok = V.tokens(case)
    assert W.tensors_sha256(tok) == FIGS["tokens_sha256"][case]
    learner = create_prompt_learner(method, backbone, W.CLASSNAMES, opts)
    names = V.official_names(case)
    # the same trainable tensors as the official trainer (IVLP.build_model / VPT.build_model: ctx + every "VPT")
    assert sorted(names.values()) == fig["trainable"]
    assert {n.partition(".")[0] for n in names} == {n for n, p in learner.named_parameters() if p.requires_grad}
    with torch.no_grad():
        if method == "ivlp":
            close(learner.ctx, fig["ctx_init"], "ctx init (the first 2 tokens of 'a photo of a')", 0.0)
            learner.ctx.add_(tok["ctx_delta"])
        for name in names:
            if name != "ctx":
                layer(learner, name).copy_(tok[name.partition(".")[0]][int(name.partition(".")[2])])
        if method == "vpt":
            ref = torch.nn.functional.normalize(torch.tensor(fig["fixed_text_features"]), dim=-1)
            close(learner.fixed_text_features(), ref.tolist(), "VPT's fixed text features")
    model = PromptModel(backbone, learner)
    images, labels = W.fixed_inputs()["images"], W.fixed_inputs()["labels"]
    loss, logits = model.training_loss(None, labels, images)
    close(logits, fig["logits"], "logits at init")
    assert abs(loss.item() - fig["loss"]) <= TOL * max(1.0, fig["loss"])
    train = resolve_train_config(TrainConfig(), method, 16, "dtd")
    opt = make_optimizer(learner, train)
    group = opt.param_groups[0]
    assert group["lr"] == fig["lr"] and {k: group[k] for k in fig["optimizer"]} == fig["optimizer"]
    opt.zero_grad()
    loss.backward()
    grad_tol = TOL if case.endswith("no_half") else FP16_TOL
    for name in names:
        close(layer(learner, name, grad=True), fig["grads"][name], f"gradient of {name}", grad_tol)
    opt.step()
    for name in names:
        close(layer(learner, name), fig["params_after"][name], f"{name} after the step")
    with torch.no_grad():
        after = model.logits(model.image_features(images), model.text_features())
    close(after, fig["logits_after"], "logits after the step")


def test_the_figures_are_not_trivial():
    """Guard: the step moves the logits by more than 5× the tolerance of :func:`close` (IVLP by 0.4–1.5 relative;
    VPT-deep, whose text side is fixed, by 7e-5–2e-4), and the shallow cases train fewer tensors than the
    full-depth ones (so a prompt in a block past the depth would be seen)."""
    cases = FIGS["cases"]
    for case in V.CASES:
        before, after = (torch.tensor(cases[case][k]) for k in ("logits", "logits_after"))
        assert (before - after).abs().max() / max(1.0, float(before.abs().max())) > 5 * TOL, case
    assert cases["ivlp_shallow_as_is"]["trainable"] != cases["ivlp_as_is"]["trainable"]
