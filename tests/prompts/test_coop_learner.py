"""CoOp prompt learner: shapes, init, freezing, save/load, transfer rules."""

from __future__ import annotations

import pytest
import torch

from vlprompt.backbones import create_backbone
from vlprompt.engine.checkpoint import load_learner, save_learner
from vlprompt.engine.model import PromptModel
from vlprompt.errors import ArtifactError, ConfigError
from vlprompt.prompts import CoOp, CoOpConfig, create_prompt_learner, list_prompt_learners

NAMES = ["dog", "golden_retriever", "cat"]


@pytest.fixture(scope="module")
def rn():
    torch.manual_seed(0)
    return create_backbone("vlp-tiny-rn", "random")


@pytest.mark.parametrize("csc", [False, True])
@pytest.mark.parametrize("position", ["end", "middle", "front"])
def test_shapes_and_context_placement(rn, csc, position):
    torch.manual_seed(0)
    learner = CoOp(rn, NAMES, CoOpConfig(n_ctx=4, csc=csc, class_token_position=position))
    embeds, ids = learner()
    assert learner.ctx.shape == ((3, 4, 64) if csc else (4, 64))
    assert embeds.shape[:2] == ids.shape and embeds.shape[0] == 3 and embeds.shape[2] == 64
    # Every context vector appears exactly once per class, at the positions the order prescribes.
    for c in range(3):
        ctx = learner.ctx[c] if csc else learner.ctx
        hits = [(embeds[c] == ctx[j]).all(-1).nonzero().flatten().tolist() for j in range(4)]
        assert all(len(h) == 1 for h in hits)
        pos = [h[0] for h in hits]
        name_len = len(rn.bpe_tokens(NAMES[c].replace("_", " ")))
        expected = {"end": [1, 2, 3, 4], "front": [1 + name_len + j for j in range(4)],
                    "middle": [1, 2, 3 + name_len, 4 + name_len]}[position]
        assert pos == expected
    # EOS stays where the placeholder prompt has it, for every order.
    assert (rn.eos_positions(ids) == ids.argmax(-1)).all()


def test_ctx_init_overrides_n_ctx_and_refuses_multi_token_words(rn):
    learner = CoOp(rn, NAMES, CoOpConfig(n_ctx=16, ctx_init="a photo of a"))
    assert learner.n_ctx == 4 and learner.config_dict()["n_ctx"] == 4
    with pytest.raises(ConfigError, match="word 'xylophonists' is .* BPE tokens"):
        CoOp(rn, NAMES, CoOpConfig(ctx_init="a xylophonists photo"))


def test_random_init_statistics(rn):
    torch.manual_seed(0)
    learner = CoOp(rn, NAMES, CoOpConfig(n_ctx=16))
    assert abs(learner.ctx.std().item() - 0.02) < 0.003 and abs(learner.ctx.mean().item()) < 0.003


def test_config_validation():
    with pytest.raises(ConfigError, match="class-token-position 'top'"):
        CoOpConfig(class_token_position="top")
    with pytest.raises(ConfigError, match="--n-ctx must be"):
        CoOpConfig(n_ctx=0)
    with pytest.raises(ConfigError, match="unknown option"):
        create_prompt_learner("coop", None, NAMES, {"nctx": 3})
    with pytest.raises(ConfigError, match="Did you mean coop"):
        create_prompt_learner("coopp", None, NAMES)
    assert "coop" in list_prompt_learners()


def test_fixed_embeddings_are_not_saved(rn):
    learner = CoOp(rn, NAMES, CoOpConfig(n_ctx=4))
    assert set(learner.state_dict()) == {"ctx"}


@pytest.mark.parametrize("arch", ["vlp-tiny-rn", "vlp-tiny-vit"])
def test_optimizer_step_changes_only_the_context(arch):
    torch.manual_seed(0)
    bb = create_backbone(arch, "random")
    before = {k: v.clone() for k, v in bb.state_dict().items()}
    learner = CoOp(bb, NAMES, CoOpConfig(n_ctx=4))
    ctx0 = learner.ctx.detach().clone()
    model = PromptModel(bb, learner)
    opt = torch.optim.SGD(learner.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    img = model.image_features(torch.randn(4, 3, bb.preprocess.image_size, bb.preprocess.image_size))
    loss = torch.nn.functional.cross_entropy(model.logits(img), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    opt.step()
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["learner.ctx"]
    for k, v in bb.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not torch.equal(learner.ctx.detach(), ctx0)


def test_save_load_roundtrip_and_backbone_check(rn, tmp_path):
    torch.manual_seed(1)
    learner = CoOp(rn, NAMES, CoOpConfig(n_ctx=4, class_token_position="middle"))
    with torch.no_grad():
        learner.ctx.add_(torch.randn_like(learner.ctx))
    save_learner(tmp_path, learner, rn)
    loaded = load_learner(tmp_path, rn)
    img = torch.nn.functional.normalize(torch.randn(5, rn.embed_dim), dim=-1)
    a = PromptModel(rn, learner).logits(img)
    b = PromptModel(rn, loaded).logits(img)
    assert torch.equal(a, b)
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(99)
    weights = {k: v.contiguous() for k, v in open_clip.create_model("vlp-tiny-rn").state_dict().items()}
    save_file(weights, str(tmp_path / "other.safetensors"))
    other = create_backbone("vlp-tiny-rn", str(tmp_path / "other.safetensors"))  # same architecture, other weights
    with pytest.raises(ArtifactError, match="differing: fingerprint"):
        load_learner(tmp_path, other)
    with pytest.raises(ArtifactError, match="differing: name"):
        load_learner(tmp_path, create_backbone("vlp-tiny-vit", "random"))


def test_unified_context_transfers_but_csc_does_not(rn, tmp_path):
    for csc, sub in ((False, "uc"), (True, "csc")):
        learner = CoOp(rn, NAMES, CoOpConfig(n_ctx=4, csc=csc))
        save_learner(tmp_path / sub, learner, rn)
    uc = load_learner(tmp_path / "uc", rn, classnames=["lion", "tiger"])
    assert uc.classnames == ["lion", "tiger"] and uc()[0].shape[0] == 2
    with pytest.raises(ConfigError, match="class-specific context"):
        load_learner(tmp_path / "csc", rn, classnames=["lion", "tiger"])


def test_tampered_weights_are_detected(rn, tmp_path):
    from safetensors.torch import save_file

    save_learner(tmp_path, CoOp(rn, NAMES, CoOpConfig(n_ctx=4)), rn)
    save_file({"ctx": torch.zeros(5, 64)}, str(tmp_path / "learner.safetensors"))
    with pytest.raises(ArtifactError, match="expected \\(4, 64\\)"):
        load_learner(tmp_path, rn)
    (tmp_path / "learner.safetensors").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="could not be read"):
        load_learner(tmp_path, rn)
