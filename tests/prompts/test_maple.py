"""MaPLe (vlprompt.prompts.maple): the coupling of the vision tokens to the text tokens, the official
initialisation and trainable set, the depth refusal, and the artifact round trip (the official figures are in
tests/fidelity/test_maple_figures.py)."""

from __future__ import annotations

import pytest
import torch
from open_clip.model import CLIP
from open_clip.tokenizer import SimpleTokenizer

from vlprompt.backbones import create_backbone
from vlprompt.backbones.open_clip import OpenClipBackbone
from vlprompt.engine.checkpoint import load_learner, read_learner_json, save_learner
from vlprompt.engine.config import TrainConfig
from vlprompt.engine.fit import fit, make_optimizer
from vlprompt.engine.model import PromptModel
from vlprompt.errors import BackboneError, ConfigError
from vlprompt.prompts import create_prompt_learner, get_prompt_learner_class
from vlprompt.prompts.maple import MaPLe, MaPLeConfig

NAMES = ["dog", "hot_air balloon", "cat"]
#: Different tower widths (text 64, image 96), so a projection built the wrong way round cannot pass.
ARCH = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 3, "width": 96, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 3}}


@pytest.fixture(scope="module")
def bb():
    torch.manual_seed(0)
    return OpenClipBackbone(CLIP(**ARCH).eval(), SimpleTokenizer(), name="tiny-maple-64-96")


def maple(bb, **opts) -> MaPLe:
    torch.manual_seed(1)
    return create_prompt_learner("maple", bb, NAMES, opts)


def test_registration_defaults_and_official_recipe():
    """trainers/maple.py + configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml: N_CTX 2, CTX_INIT "a photo of
    a", PROMPT_DEPTH 9, the fp16 token casts; BATCH_SIZE 4, MAX_EPOCH 5."""
    cls = get_prompt_learner_class("maple")
    assert cls is MaPLe and cls.display_name == "MaPLe" and cls.prompts_image
    cfg = MaPLeConfig()
    assert (cfg.n_ctx, cfg.ctx_init, cfg.depth, cfg.half_tokens) == (2, "a photo of a", 9, True)
    assert cls.recipe == {"epochs": 5, "batch_size": 4, "lr": 0.0035}


def test_vision_tokens_are_the_projections_of_the_same_layers_text_tokens(bb):
    learner = maple(bb, depth=3)
    assert learner.kept_words == "of a" and learner.n_ctx == 2  # learns "a photo", keeps "of a"
    deep = learner.deep_prompts()
    assert deep.text.shape == (2, 2, 64) and deep.vision.shape == (3, 2, 96)  # [J−1, n, D_t], [J, n, D_v]
    assert deep.text is learner.deep_text
    with torch.no_grad():
        torch.testing.assert_close(deep.vision[0], learner.proj(learner.ctx), rtol=0, atol=0)
        for j in (1, 2):
            want = learner.compound_prompt_projections[j - 1](learner.deep_text[j - 1])
            torch.testing.assert_close(deep.vision[j], want, rtol=0, atol=0)
    shallow = maple(bb, depth=1).deep_prompts()
    assert shallow.text is None and shallow.vision.shape == (1, 2, 96)


def test_official_initialisation(bb):
    """``_get_clones`` deep-copies ONE linear: the deeper projections start equal; ``self.proj.half()``: its init is
    fp16-representable; the text tokens are N(0, 0.02²); ctx = the embeddings of "a photo"."""
    learner = maple(bb, depth=3)
    a, b = learner.compound_prompt_projections
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias) and a.weight is not b.weight
    assert not torch.equal(a.weight, learner.proj.weight.float())
    assert torch.equal(learner.proj.weight, learner.proj.weight.half().float())
    assert 0.015 < float(learner.deep_text.detach().std()) < 0.025 and learner.deep_text.dtype == torch.float32
    ids = bb.tokenize(["a photo of a"])
    torch.testing.assert_close(learner.ctx.detach(), bb.embed_tokens(ids)[0, 1:3], rtol=0, atol=0)


def test_everything_in_the_learner_is_trained_and_one_image_step_moves_it(bb):
    """The official name filter ("prompt_learner" in the name) trains ctx, proj, the text tokens and every deeper
    projection; one SGD step on images (the prompted tower, autograd) moves each of them, not the backbone."""
    learner = maple(bb, depth=2, half_tokens=False)
    names = {n for n, p in learner.named_parameters() if p.requires_grad}
    assert names == {"ctx", "proj.weight", "proj.bias", "deep_text", "compound_prompt_projections.0.weight",
                     "compound_prompt_projections.0.bias"}
    opt = make_optimizer(learner, TrainConfig(lr=0.0035))
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in learner.parameters()}
    before = {n: p.detach().clone() for n, p in learner.named_parameters()}
    frozen = {k: v.clone() for k, v in bb.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 3, 32, 32, generator=g), torch.tensor([0, 1, 2, 1]))]
    fit(PromptModel(bb, learner), batches, TrainConfig(epochs=1, batch_size=4, warmup_epochs=0, lr=0.0035), 1,
        images_are_features=False, scaler=None)
    for n, p in learner.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0 and not torch.equal(p.detach(), before[n]), n
    assert all(torch.equal(bb.state_dict()[k], v) for k, v in frozen.items())


def test_depth_above_the_towers_blocks_is_refused_with_the_option_and_the_fix(bb):
    with pytest.raises(ConfigError, match=r"--learner-opt depth=4: .* 3 text and 3 image .* depth=N with N ≤ 3"):
        maple(bb, depth=4)
    with pytest.raises(ConfigError, match="depth=0"):
        MaPLeConfig(depth=0)
    maple(bb, depth=3)  # every block: fine
    rn = create_backbone("vlp-tiny-rn", "random")
    with pytest.raises(BackboneError, match="MaPLe needs a ViT image tower.*vlp-tiny-rn"):
        create_prompt_learner("maple", rn, NAMES, {"depth": 1})


def test_fp16_backbone_keeps_the_official_dtypes():
    """PREC fp16 officially: the whole CLIP (and proj, .half()) in fp16, the text tokens and the deeper projections
    fp32 (never halved); the vision tokens stack into one tensor, and a training step reaches every parameter."""
    torch.manual_seed(0)
    bb16 = OpenClipBackbone(CLIP(**ARCH).eval().half(), SimpleTokenizer(), name="tiny-maple-fp16")
    learner = maple(bb16, depth=2)
    assert learner.ctx.dtype == learner.proj.weight.dtype == torch.float16
    assert learner.deep_text.dtype == learner.compound_prompt_projections[0].weight.dtype == torch.float32
    assert learner.deep_prompts().vision.shape == (2, 2, 96)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)).half()
    loss, _ = PromptModel(bb16, learner).training_loss(None, torch.tensor([0, 1]), images)
    loss.backward()  # one step in the official default mode: every gradient in its parameter's dtype
    assert all(p.grad is not None and p.grad.dtype == p.dtype and p.grad.abs().sum() > 0 for p in learner.parameters())


def test_save_load_gives_every_learned_tensor_and_identical_logits(bb, tmp_path):
    """The artifact holds ctx, the text tokens and every projection (safetensors + learner.json); reloaded, the
    prompted image and text towers give the identical logits."""
    learner = maple(bb, depth=3)
    with torch.no_grad():  # off the initial values (a rebuilt learner would otherwise match by its seed)
        for p in learner.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_learner(tmp_path, learner, bb)
    meta = read_learner_json(tmp_path)
    assert meta["method"] == "maple" and meta["config"]["depth"] == 3
    assert set(meta["dtypes"]) == {"ctx", "proj.weight", "proj.bias", "deep_text",
                                   *(f"compound_prompt_projections.{i}.{w}" for i in (0, 1) for w in ("weight", "bias"))}
    torch.manual_seed(123)  # the rebuilt learner draws other random tokens, which loading must replace
    loaded = load_learner(tmp_path, bb)
    a, b = learner.trainable_state_dict(), loaded.trainable_state_dict()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want, got = (PromptModel(bb, m.eval()) for m in (learner, loaded))
        lw = want.logits(want.encode_images(images), want.text_features())
        lg = got.logits(got.encode_images(images), got.text_features())
    assert torch.equal(lw, lg) and (lw - lw.mean()).abs().max() > 0


def test_official_depth_9_fits_a_12_block_tower_and_13_is_refused():
    """ViT-B/16's 12 + 12 blocks: PROMPT_DEPTH 9 gives text tokens for blocks 1…8 ([8, n, D_t]) and vision tokens
    for the input and blocks 1…8 ([9, n, D_v]), as the official blocks' counter reads them."""
    arch = {"embed_dim": 16, "vision_cfg": {"image_size": 16, "layers": 12, "width": 64, "patch_size": 16},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 12}}
    torch.manual_seed(0)
    deep12 = OpenClipBackbone(CLIP(**arch).eval(), SimpleTokenizer(), name="tiny-12-blocks")
    d = maple(deep12).deep_prompts()  # the default depth 9
    assert d.text.shape == (8, 2, 64) and d.vision.shape == (9, 2, 64) and (d.text_depth, d.vision_depth) == (9, 9)
    with pytest.raises(ConfigError, match="depth=13.*N ≤ 12"):
        maple(deep12, depth=13)


def test_transformers_clip_with_other_widths_trains_every_parameter():
    """Widths come from the backbone (transformers' tiny CLIP: text 64, image 32), not ViT-B's 512/768."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backbones"))
    from test_hf_adapter import tiny_clip

    from vlprompt.backbones.hf import HFClipBackbone

    hf = HFClipBackbone(tiny_clip(), "hf:tiny")
    learner = maple(hf, depth=2)
    assert learner.proj.weight.shape == (32, 64) and learner.deep_prompts().vision.shape == (2, 2, 32)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    loss, logits = PromptModel(hf, learner).training_loss(None, torch.tensor([0, 2]), images)
    loss.backward()
    assert logits.shape == (2, 3)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in learner.parameters())
