"""CoCoOp learner: shapes, meta-net, gradients, config rules, batched text encoding equal to the official
per-image loop (logits and gradients), and inference without baked class weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vlprompt.api import PromptClassifier
from vlprompt.backbones import create_backbone
from vlprompt.engine.checkpoint import load_learner, save_learner
from vlprompt.engine.model import PromptModel
from vlprompt.errors import ConfigError
from vlprompt.prompts import CoCoOp, CoCoOpConfig, create_prompt_learner
from vlprompt.prompts.cocoop import per_image_logits

# Names of different BPE lengths, so prompts fall into several length buckets.
NAMES = ["dog", "golden_retriever", "cat", "hot air balloon", "x"]


@pytest.fixture(scope="module", params=["vlp-tiny-vit", "vlp-tiny-customtext"])
def backbone(request):
    torch.manual_seed(0)
    return create_backbone(request.param, "random")


def _images(backbone, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, backbone.embed_dim, generator=g), dim=-1)  # (B, E)


def _perturbed(backbone, config=None):
    """A CoCoOp learner moved away from its init (random ctx and meta-net), so gradients are not trivial."""
    torch.manual_seed(1)
    learner = CoCoOp(backbone, NAMES, config)
    with torch.no_grad():
        learner.ctx.add_(0.05 * torch.randn_like(learner.ctx))
        for p in learner.meta_net.parameters():
            p.mul_(10)
    return learner


def test_defaults_shapes_and_parameters(backbone):
    learner = CoCoOp(backbone, NAMES)
    e, d = backbone.embed_dim, backbone.token_dim
    assert learner.n_ctx == 4 and learner.init_text == "a photo of a" and learner.ctx.shape == (4, d)
    lin1, lin2 = learner.meta_net.linear1, learner.meta_net.linear2
    assert (lin1.in_features, lin1.out_features, lin2.out_features) == (e, max(1, e // 16), d)
    assert set(learner.trainable_state_dict()) == {"ctx", "meta_net.linear1.weight", "meta_net.linear1.bias",
                                                   "meta_net.linear2.weight", "meta_net.linear2.bias"}
    img = _images(backbone, 3)
    embeds, ids = learner(img)
    assert embeds.shape == (3, len(NAMES), ids.shape[1], d) and ids.shape[0] == len(NAMES)
    # the meta-net output is added to every context vector: positions 1..M hold ctx + π(x_b), the rest is fixed
    bias = learner.meta_net(img)  # (B, D)
    for b in range(3):
        torch.testing.assert_close(embeds[b, :, 1:5], (learner.ctx + bias[b]).expand(len(NAMES), -1, -1))
        torch.testing.assert_close(embeds[b, :, :1], learner.fixed_embeds[:, :1])
        torch.testing.assert_close(embeds[b, :, 5:], learner.fixed_embeds[:, 5:])
    model = PromptModel(backbone, learner)
    assert model.text_features(img).shape == (3, len(NAMES), e)
    assert model.logits(img).shape == (3, len(NAMES)) and model.class_text_features() is None


def test_gradients_reach_ctx_and_meta_net_only(backbone):
    learner = _perturbed(backbone)
    model = PromptModel(backbone, learner)
    loss, logits = model.training_loss(_images(backbone, 4), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert logits.shape == (4, len(NAMES))
    for name, p in learner.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in backbone.parameters())


def test_config_rules():
    with pytest.raises(ConfigError, match="--csc is not available with --method cocoop"):
        CoCoOpConfig(csc=True)
    with pytest.raises(ConfigError, match="class-token-position middle is not available"):
        CoCoOpConfig(class_token_position="middle")
    assert CoCoOp.conditional and CoCoOp.recipe == {"epochs": 10, "batch_size": 1}


@pytest.mark.parametrize("chunk", [None, 3])
def test_batched_equals_official_per_image_loop(backbone, chunk):
    """Batched B×C prompts (EOS buckets, chunks with checkpointing) vs the official loop over images at full
    length: same logits and same gradients for ctx and the meta-net, to fp32 tolerance."""
    fast = _perturbed(backbone)
    slow = _perturbed(backbone, CoCoOpConfig(truncate=False))  # the official 77-token prompts
    slow.load_state_dict(fast.state_dict())
    assert slow.token_ids.shape[1] == backbone.context_length > fast.token_ids.shape[1]
    img, labels = _images(backbone, 6, seed=3), torch.tensor([0, 1, 2, 3, 4, 0])

    model = PromptModel(backbone, fast, text_chunk=chunk)
    batched = model.logits(img)
    looped = per_image_logits(backbone, slow, img)
    torch.testing.assert_close(batched, looped, rtol=1e-5, atol=1e-4)

    F.cross_entropy(batched, labels).backward()
    F.cross_entropy(looped, labels).backward()
    slow_params = dict(slow.named_parameters())
    for name, p in fast.named_parameters():
        torch.testing.assert_close(p.grad, slow_params[name].grad, rtol=1e-4, atol=1e-6, msg=name)


def test_predict_logits_batches_images_for_conditional(backbone, monkeypatch):
    import vlprompt.engine.model as M

    learner = _perturbed(backbone).eval()
    model = PromptModel(backbone, learner)
    img = _images(backbone, 7)
    whole = model.logits(img).detach()
    monkeypatch.setattr(M, "CONDITIONAL_PROMPTS_PER_CALL", 2 * len(NAMES))  # 2 images per call
    torch.testing.assert_close(model.predict_logits(img), whole, rtol=1e-5, atol=1e-5)


def test_save_load_classifier_round_trip(tmp_path):
    torch.manual_seed(0)
    backbone = create_backbone("vlp-tiny-vit", "random")
    learner = _perturbed(backbone).eval()
    save_learner(tmp_path, learner, backbone)
    loaded = load_learner(tmp_path, backbone)
    assert isinstance(loaded, CoCoOp)
    img = _images(backbone, 4)
    with torch.no_grad():
        want = PromptModel(backbone, learner).logits(img)
        torch.testing.assert_close(PromptModel(backbone, loaded).logits(img), want)

    clf = PromptClassifier.load(tmp_path, backbone=backbone)
    assert clf.conditional and clf.baked_text_features is None
    with pytest.raises(ConfigError, match="conditional"):
        clf.text_features()
    images = torch.rand(4, 3, 32, 32)
    feats = PromptModel(backbone, learner).image_features(images)
    with torch.no_grad():
        torch.testing.assert_close(clf.logits(images), PromptModel(backbone, learner).logits(feats))
    pred = clf.predict(images, batch_size=3)
    assert pred.probs.shape == (4, len(NAMES)) and len(pred.labels) == 4

    # the learned context transfers to other class names (base-to-new)
    other = PromptClassifier.load(tmp_path, backbone=backbone, classnames=["fox", "frog"])
    assert other.predict(images).probs.shape == (4, 2)


def test_registry_builds_cocoop_with_options():
    torch.manual_seed(0)
    backbone = create_backbone("vlp-tiny-vit", "random")
    learner = create_prompt_learner("cocoop", backbone, NAMES, {"n_ctx": 2, "ctx_init": None, "meta_reduction": 4})
    assert learner.n_ctx == 2 and learner.meta_net.linear1.out_features == backbone.embed_dim // 4
    with pytest.raises(ConfigError, match="unknown option"):
        create_prompt_learner("cocoop", backbone, NAMES, {"kg_weight": 1.0})
