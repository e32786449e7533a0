"""The shared base of the deep prompt methods (vlprompt.prompts.deep): the official input-layer context rule and the
trainer interface (one step's deep prompts in both towers, gradients reaching every token)."""

from __future__ import annotations

import pytest
import torch

from vlprompt.backbones import create_backbone
from vlprompt.engine.model import PromptModel
from vlprompt.errors import BackboneError, ConfigError
from vlprompt.prompts.deep import DeepPromptConfig, DeepPromptLearner, IndependentDeepPrompts, IndependentPromptConfig


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return create_backbone("vlp-tiny-vit", "random")


@pytest.mark.parametrize("n_ctx, kept", [(2, "of a"), (3, "a"), (4, "")])
def test_word_init_learns_the_first_tokens_and_keeps_the_rest(vit, n_ctx, kept):
    """Official rule (trainers/maple.py, independentVL.py): prompt = whole phrase + name, first n_ctx tokens learned."""
    names = ["dog", "hot_air balloon"]
    learner = DeepPromptLearner(vit, names, DeepPromptConfig(n_ctx=n_ctx))
    assert learner.kept_words == kept
    ids = vit.tokenize(["a photo of a dog.", "a photo of a hot air balloon."])[:, : learner.token_ids.shape[1]]
    embeds, got_ids = learner()
    # the official tokenised prompts outside the learned slots (those hold placeholders): EOS where argmax finds it
    assert torch.equal(got_ids.cpu()[:, 1 + n_ctx :], ids[:, 1 + n_ctx :])
    assert torch.equal(embeds, vit.embed_tokens(ids.to(vit.device)).to(embeds.dtype))  # init = the phrase's tokens
    prefix, suffix, _ = learner.shared_prefix()
    assert torch.equal(torch.cat([prefix.expand(2, -1, -1), suffix], 1), embeds)


def test_random_init_above_four_tokens_and_too_short_phrase(vit):
    learner = DeepPromptLearner(vit, ["dog"], DeepPromptConfig(n_ctx=5))
    assert learner.init_text == "X X X X X" and learner.kept_words == ""
    assert 0.01 < float(learner.ctx.detach().std()) < 0.03
    with pytest.raises(ConfigError, match="fewer than n_ctx=3"):
        DeepPromptLearner(vit, ["dog"], DeepPromptConfig(n_ctx=3, ctx_init="a photo"))
    with pytest.raises(ConfigError, match="--csc"):
        DeepPromptConfig(csc=True)


def test_one_step_reaches_every_token_and_matches_the_plain_path(vit):
    torch.manual_seed(1)
    learner = IndependentDeepPrompts(vit, ["dog", "cat", "hot air balloon"],
                                     IndependentPromptConfig(depth_text=2, depth_vision=2, half_tokens=False))
    assert learner.prompts_image and learner.deep_text.shape == (1, 2, 64) and learner.deep_vision.shape == (2, 2, 64)
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 1])
    fast = PromptModel(vit, learner)
    loss, logits = fast.training_loss(None, labels, images)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in learner.named_parameters()}
    assert set(grads) == {"ctx", "deep_text", "deep_vision"} and all(g.abs().sum() > 0 for g in grads.values())
    learner.zero_grad()
    plain = PromptModel(vit, learner, shared_prefix=False, length_buckets=False)
    loss2, logits2 = plain.training_loss(None, labels, images)
    loss2.backward()
    torch.testing.assert_close(logits, logits2, atol=1e-5, rtol=0)
    for n, p in learner.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], atol=1e-5, rtol=1e-4)
    with pytest.raises(ConfigError, match="trains on images"):
        fast.training_loss(torch.randn(4, 32), labels)


def test_too_deep_prompts_are_refused_when_built(vit):
    with pytest.raises(ConfigError, match="depth_text=9: .* has 2 text blocks; set --learner-opt depth_text=2"):
        IndependentDeepPrompts(vit, ["dog"], IndependentPromptConfig(depth_text=9, depth_vision=2))
    rn = create_backbone("vlp-tiny-rn", "random")
    with pytest.raises(BackboneError, match="cannot take vision prompts .*not a ViT.*depth_vision=0"):
        IndependentDeepPrompts(rn, ["dog"], IndependentPromptConfig(depth_text=2, depth_vision=1))


def test_the_kept_words_are_in_the_shared_prefix_and_the_features_are_unchanged(vit):
    """MaPLe's "of a" (kept after the 2 learned tokens) is shared by every prompt: encoded once, with the context."""
    torch.manual_seed(2)
    names = ["dog", "cat", "hot air balloon"]
    learner = IndependentDeepPrompts(vit, names, IndependentPromptConfig(n_ctx=2, depth_text=2, depth_vision=0,
                                                                         half_tokens=False))
    prefix, suffix, ids = learner.shared_prefix()
    assert learner.n_kept == 2 and prefix.shape[0] == 1 + 2 + 2  # SOS, "a photo" (learned), "of a" (kept)
    embeds, _ = learner()
    assert torch.equal(torch.cat([prefix.expand(3, -1, -1), suffix], 1), embeds)
    fast = PromptModel(vit, learner)
    plain = PromptModel(vit, learner, shared_prefix=False, length_buckets=False)
    torch.testing.assert_close(fast.text_features(), plain.text_features(), atol=1e-5, rtol=0)
