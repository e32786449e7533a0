"""The open_clip adapter: parity with the model's own text encoder, exact truncation, refusals."""

from __future__ import annotations

import pytest
import torch

from vlprompt.backbones import create_backbone
from vlprompt.errors import BackboneError
from vlprompt.eval.zeroshot import zero_shot_weights
from vlprompt.prompts import CoOp, CoOpConfig

NAMES = ["dog", "golden_retriever", "sea lion", "cat"]
EQUIVALENT_TEXT = {"end": "a photo of a {}.", "middle": "a photo {} of a.", "front": "{} a photo of a."}


@pytest.mark.parametrize("arch", ["vlp-tiny-rn", "vlp-tiny-vit", "vlp-tiny-customtext"])
@pytest.mark.parametrize("position", ["end", "middle", "front"])
def test_coop_init_equals_encode_text(arch, position):
    torch.manual_seed(0)
    bb = create_backbone(arch, "random")
    learner = CoOp(bb, NAMES, CoOpConfig(ctx_init="a photo of a", class_token_position=position))
    embeds, ids = learner()
    ours = bb.encode_text_embeddings(embeds, ids)
    texts = [EQUIVALENT_TEXT[position].format(n.replace("_", " ")) for n in NAMES]
    theirs = bb.model.encode_text(bb.tokenizer(texts))  # open_clip's own forward, full 77 tokens
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    if position == "end":  # hence the same logits as zero-shot CLIP with that template
        zs = zero_shot_weights(bb, NAMES, ["a photo of a {}."])
        torch.testing.assert_close(torch.nn.functional.normalize(ours, dim=-1), zs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["vlp-tiny-rn", "vlp-tiny-customtext"])
def test_truncation_is_exact(arch):
    torch.manual_seed(0)
    bb = create_backbone(arch, "random")
    ids = bb.tokenize(["a photo of a dog.", "a long photo of a golden retriever on the grass."])
    emb = bb.embed_tokens(ids)
    full = bb.encode_text_embeddings(emb, ids, truncate=False)
    cut = bb.encode_text_embeddings(emb, ids, truncate=True)
    torch.testing.assert_close(cut, full, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("arch", "why"), [("vlp-tiny-bidir", "no causal mask"), ("vlp-tiny-lastpool", "pools with 'last'")])
def test_unsupported_text_towers_are_refused(arch, why):
    with pytest.raises(BackboneError, match=f"{arch}.*{why}"):
        create_backbone(arch, "random")


def test_unknown_backbone_suggests_names():
    with pytest.raises(BackboneError, match="Did you mean.*RN50"):
        create_backbone("RN5O")


def test_backbone_is_frozen_and_stays_in_eval_mode():
    bb = create_backbone("vlp-tiny-rn", "random")
    bb.train()
    assert not bb.model.training
    assert not any(p.requires_grad for p in bb.parameters())
    assert bb.preprocess.image_size == 64
    assert bb.logit_scale.ndim == 0
