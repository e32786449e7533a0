"""KgCoOp learner: the guidance term against a direct computation, λ = 0 is CoOp exactly, options and templates."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vlprompt.backbones import create_backbone
from vlprompt.engine.config import TrainConfig
from vlprompt.engine.fit import FeatureBankBatches, fit
from vlprompt.engine.model import PromptModel
from vlprompt.errors import ConfigError
from vlprompt.prompts import CoOp, CoOpConfig, KgCoOp, KgCoOpConfig, create_prompt_learner

NAMES = ["dog", "golden_retriever", "cat", "hot air balloon"]


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return create_backbone("vlp-tiny-rn", "random")


def test_guidance_term_matches_direct_computation(backbone):
    torch.manual_seed(0)
    learner = KgCoOp(backbone, NAMES, KgCoOpConfig(kg_weight=8.0, template="itap of a {}."))
    with torch.no_grad():
        learner.ctx.add_(0.1 * torch.randn_like(learner.ctx))  # away from the words, so the term is not ~0
    model = PromptModel(backbone, learner)
    img = F.normalize(torch.randn(3, backbone.embed_dim), dim=-1)
    labels = torch.tensor([0, 1, 3])
    loss, logits = model.training_loss(img, labels)

    learned = F.normalize(model.encode_prompts().float(), dim=-1)  # (C, E)
    hand = F.normalize(backbone.encode_text([f"itap of a {n.replace('_', ' ')}." for n in NAMES]).float(), dim=-1)
    cos = F.cosine_similarity(learned, hand, dim=-1)  # (C,)
    direct = F.cross_entropy(logits, labels) + 8.0 * (1 - cos.mean())
    torch.testing.assert_close(loss, direct)
    assert learner.regularizer(learned).item() > 1e-4
    loss.backward()
    assert learner.ctx.grad is not None and learner.ctx.grad.abs().sum() > 0
    assert set(learner.trainable_state_dict()) == {"ctx"}  # the hand-crafted features are not saved


def test_initial_guidance_term_vanishes_when_prompt_equals_template(backbone):
    """Initialised from "a photo of a" with the template "a photo of a {}.", learned = hand-crafted features."""
    learner = KgCoOp(backbone, NAMES, KgCoOpConfig(template="a photo of a {}."))
    text = PromptModel(backbone, learner).text_features()
    assert abs(learner.regularizer(text).item()) < 1e-5


def test_weight_zero_is_coop_exactly(backbone):
    cfg = {"n_ctx": 4, "ctx_init": None}
    torch.manual_seed(0)
    coop = CoOp(backbone, NAMES, CoOpConfig(**cfg))
    torch.manual_seed(0)
    kg = KgCoOp(backbone, NAMES, KgCoOpConfig(**cfg, kg_weight=0.0))
    assert torch.equal(coop.ctx, kg.ctx) and kg.hand_features is None
    g = torch.Generator().manual_seed(0)
    bank = F.normalize(torch.randn(1, 16, backbone.embed_dim, generator=g), dim=-1)  # (1, N, E)
    labels = torch.arange(16) % len(NAMES)
    train = TrainConfig(epochs=3, batch_size=4, warmup_epochs=0)
    for learner in (coop, kg):
        batches = FeatureBankBatches(bank, labels, 4, torch.Generator().manual_seed(1))
        fit(PromptModel(backbone, learner), batches, train, 3, images_are_features=True)
    assert torch.equal(coop.ctx, kg.ctx)


def test_options_and_errors(backbone):
    learner = create_prompt_learner("kgcoop", backbone, NAMES)
    assert learner.n_ctx == 4 and learner.config.kg_weight == 8.0 and learner.hand_features.shape == (4, 32)
    # the dataset's template is used unless the config sets one
    assert create_prompt_learner("kgcoop", backbone, NAMES, template="a photo of a {}, a pet.").config.template == (
        "a photo of a {}, a pet.")
    assert create_prompt_learner("kgcoop", backbone, NAMES, {"template": "x {}."},
                                 template="a photo of a {}, a pet.").config.template == "x {}."
    assert create_prompt_learner("coop", backbone, NAMES, template="ignored {}.").config_dict()["n_ctx"] == 16
    with pytest.raises(ConfigError, match="kg_weight"):
        KgCoOpConfig(kg_weight=-1)
    with pytest.raises(ConfigError, match="no '\\{\\}' placeholder"):
        KgCoOpConfig(template="a photo")
