"""Micro-CLIP v2: a stock open_clip CLIP with a ViT image tower and a 4-layer text tower, the compact format with
its config recorded, and the v2 pretraining recipe (resumable bit-exactly in single-thread mode)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from open_clip import tokenize
from open_clip.transformer import VisionTransformer
from safetensors import safe_open
from safetensors.torch import load_file

from vlprompt.backbones import microclip as mc
from vlprompt.errors import ArtifactError
from vlprompt.microclip.pretrain import V2_RECIPE, PretrainConfig, pretrain, vocabulary_token_ids


def test_v2_architecture_is_a_vit_clip_with_class_and_patch_tokens():
    torch.manual_seed(0)
    m = mc.create_microclip_model(mc.MICROCLIP_V2_CONFIG).eval()
    v = m.visual
    assert isinstance(v, VisionTransformer)
    assert v.class_embedding.shape == (128,) and v.positional_embedding.shape == (1 + 8 * 8, 128)  # cls + 64 patches
    assert len(v.transformer.resblocks) == 4 and v.transformer.resblocks[0].attn.num_heads == 4
    assert len(m.transformer.resblocks) == 4 and m.token_embedding.weight.shape == (49408, 128)
    assert isinstance(m.transformer.resblocks[0].mlp.gelu, torch.nn.GELU)  # declared: GELU, not QuickGELU
    assert mc.MICROCLIP_V2_CONFIG["quick_gelu"] is False
    with torch.no_grad():
        assert m.encode_image(torch.zeros(2, 3, 64, 64)).shape == (2, 128)
        ids = tokenize(["a thermal image of a ring.", "a photo of a crimson striped star and a heart."])
        torch.testing.assert_close(mc.encode_text_truncated(m, ids), m.encode_text(ids), rtol=1e-5, atol=1e-6)


def test_v2_compact_file_records_its_config_and_rebuilds_the_vit(tmp_path):
    torch.manual_seed(2)
    m = mc.create_microclip_model(mc.MICROCLIP_V2_CONFIG).eval()
    rows = vocabulary_token_ids(__import__("vlprompt.microclip.world2", fromlist=["x"]))
    with torch.no_grad():
        table = mc.init_token_table(0)
        table[rows] += 0.01
        m.token_embedding.weight.copy_(table)
    path = tmp_path / "v2.safetensors"
    mc.save_compact(path, m, rows, token_seed=0, config=mc.MICROCLIP_V2_CONFIG)
    assert path.stat().st_size < 10e6
    with safe_open(str(path), framework="pt") as f:
        assert json.loads(f.metadata()["config"]) == mc.MICROCLIP_V2_CONFIG
    loaded = mc.build_microclip(path)
    assert isinstance(loaded.visual, VisionTransformer)
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), loaded.state_dict().values()))


def test_v2_recipe_and_resumable_pretraining(tmp_path):
    cfg = PretrainConfig(**V2_RECIPE)
    assert (cfg.steps, cfg.lr, cfg.warmup, cfg.threads, cfg.version) == (3000, 1e-3, 100, 1, 2)
    # the shipped checkpoint's recipe (MODEL_CARD_V2.md): clipping and the caption-word loss with the object term
    assert (cfg.clip_grad, cfg.word_loss, cfg.word_form, cfg.object_weight) == (1.0, 10.0, "sigmoid+objects", 1.0)
    rows = vocabulary_token_ids(cfg.world)
    assert {49406, 49407} <= set(rows.tolist()) and 100 < len(rows) < 200
    small = PretrainConfig(version=2, steps=2, batch_size=6, warmup=1, threads=1, checkpoint_every=5, log_every=1)
    a = pretrain(small, tmp_path / "a", progress=False)
    b = pretrain(small, tmp_path / "b", progress=False, stop_after=1)
    assert not b["finished"]
    b = pretrain(small, tmp_path / "b", progress=False)
    wa = load_file(str(tmp_path / "a" / "microclip.safetensors"))
    wb = load_file(str(tmp_path / "b" / "microclip.safetensors"))
    assert a["finished"] and b["finished"] and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert "visual.class_embedding" in wa and "visual.conv1.weight" in wa
    with pytest.raises(ArtifactError, match="different settings"):
        pretrain(PretrainConfig(steps=2, batch_size=6, warmup=1, threads=1), tmp_path / "b", progress=False)


def test_a_kept_training_snapshot_exports_as_the_model_of_its_step(tmp_path):
    from vlprompt.microclip import world2
    from vlprompt.microclip.pretrain_export import export_checkpoint

    cfg = PretrainConfig(version=2, steps=2, batch_size=6, lr=1e-3, warmup=1, threads=1, checkpoint_every=1,
                         log_every=1)  # fmt: skip
    pretrain(cfg, tmp_path / "r", progress=False, stop_after=1)
    kept = tmp_path / "model-1.safetensors"  # what a watcher keeps: the training-form weights of step 1
    kept.write_bytes((tmp_path / "r" / "ckpt" / "model-1.safetensors").read_bytes())
    at1 = export_checkpoint(tmp_path / "r", tmp_path / "at1.safetensors")  # the latest checkpoint: step 1
    pretrain(cfg, tmp_path / "r", progress=False)  # on to step 2; ckpt/model-1 is deleted
    assert not (tmp_path / "r" / "ckpt" / "model-1.safetensors").exists()
    snap = export_checkpoint(tmp_path / "r", tmp_path / "snap.safetensors", model_file=kept)
    wa, ws, w2 = (load_file(str(p)) for p in (at1, snap, tmp_path / "r" / "microclip.safetensors"))
    assert all(torch.equal(wa[k], ws[k]) for k in wa) and not all(torch.equal(wa[k], w2[k]) for k in wa)
    with safe_open(str(snap), framework="pt") as f:
        meta = f.metadata()
    assert meta["step"] == "1" and meta["world_fingerprint"] == world2.world_fingerprint()


def test_gradient_clipping_bounds_the_update_and_is_part_of_the_checkpointed_recipe(tmp_path):
    from vlprompt.microclip import world2
    from vlprompt.microclip.pretrain import Trainer

    batch = world2.generate(0, 0, 6)
    moved = {}
    for clip in (0.0, 1e-12):
        torch.manual_seed(0)
        tr = Trainer(PretrainConfig(version=2, steps=5, batch_size=6, warmup=1, threads=1, clip_grad=clip))
        before = tr.model.visual.class_embedding.detach().clone()  # no weight decay on 1-D tensors
        tr.train_step(batch, tokenize)
        moved[clip] = float((tr.model.visual.class_embedding - before).abs().max())
    # AdamW's step is ~lr whatever the gradient's scale, unless the clipped gradient falls far below eps (1e-6)
    assert moved[0.0] > 1e-4 and moved[1e-12] < 1e-6 * moved[0.0]
    cfg = PretrainConfig(version=2, steps=2, batch_size=6, warmup=1, threads=1, checkpoint_every=1, log_every=1)
    pretrain(cfg, tmp_path / "r", progress=False, stop_after=1)
    saved = json.loads((tmp_path / "r" / "checkpoint.json").read_text())
    assert saved["config"]["clip_grad"] == 0.0
    del saved["config"]["clip_grad"]  # a checkpoint written before the field existed resumes as "no clipping"
    (tmp_path / "r" / "checkpoint.json").write_text(json.dumps(saved))
    assert pretrain(cfg, tmp_path / "r", progress=False)["finished"]
    with pytest.raises(ArtifactError, match="clip_grad"):
        pretrain(dataclasses.replace(cfg, clip_grad=1.0, steps=3), tmp_path / "r", progress=False)
