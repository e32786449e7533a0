"""Micro-CLIP model: truncated text encoding, the compact checkpoint format, and resumable pretraining."""

from __future__ import annotations

import json

import pytest
import torch
from open_clip import tokenize
from safetensors.torch import load_file

from vlprompt.errors import ArtifactError, WeightsNotFoundError
from vlprompt.microclip import model as mc
from vlprompt.microclip.pretrain import PretrainConfig, lr_at, pretrain, vocabulary_token_ids

CAPTIONS = ["a photo of a red circle.", "a pencil sketch of a large star on the left on a striped background."]


def test_config_and_truncated_text_encoding_is_exact():
    torch.manual_seed(0)
    m = mc.build_microclip(weights=None)
    assert not m.training
    assert sum(p.numel() for p in m.parameters()) == pytest.approx(8.1e6, rel=0.03)
    assert m.token_embedding.weight.shape == (49408, 128) and m.visual.image_size == 64
    ids = tokenize(CAPTIONS)
    with torch.no_grad():
        full = m.encode_text(ids)
        cut = mc.encode_text_truncated(m, ids)
    torch.testing.assert_close(cut, full, rtol=1e-5, atol=1e-6)


def test_compact_roundtrip_is_bit_exact(tmp_path):
    torch.manual_seed(1)
    m = mc.create_microclip_model().eval()
    rows = torch.tensor([0, 320, 1125, 49406, 49407])
    with torch.no_grad():  # as after pretraining: rows outside `rows` equal the seeded init, rows inside changed
        table = mc.init_token_table(5)
        table[rows] += torch.randn(len(rows), 128)
        m.token_embedding.weight.copy_(table)
    path = tmp_path / "m.safetensors"
    mc.save_compact(path, m, rows, token_seed=5)
    assert path.stat().st_size < 10e6  # the 6.3 M-row table is not stored
    loaded = mc.build_microclip(path)
    for (k, a), (k2, b) in zip(m.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    x = mc.images_to_tensor(torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8).numpy())
    with torch.no_grad():
        logits = [mm.encode_image(x, normalize=True) @ mm.encode_text(tokenize(CAPTIONS), normalize=True).t()
                  for mm in (m, loaded)]  # fmt: skip
    assert torch.equal(*logits)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="nope.safetensors"):
        mc.build_microclip(tmp_path / "nope.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ArtifactError, match="not a micro-CLIP checkpoint"):
        mc.build_microclip(tmp_path / "other.safetensors")


def test_lr_schedule():
    cfg = PretrainConfig(steps=2100, warmup=100)
    assert lr_at(0, cfg) == pytest.approx(2e-5) and lr_at(99, cfg) == pytest.approx(2e-3)
    assert lr_at(100, cfg) == pytest.approx(2e-3) and lr_at(2099, cfg) < 1e-8
    rows = vocabulary_token_ids()
    assert 49406 in rows and 49407 in rows and 50 < len(rows) < 120


def test_pretraining_resumes_bit_exactly(tmp_path):
    cfg = PretrainConfig(steps=3, batch_size=8, warmup=1, threads=1, checkpoint_every=5, log_every=1)
    a = pretrain(cfg, tmp_path / "a", progress=False)
    assert a["finished"] and a["steps_this_run"] == 3
    b = pretrain(cfg, tmp_path / "b", progress=False, stop_after=2)  # interrupted at step 2 (checkpointed)
    assert not b["finished"] and json.loads((tmp_path / "b" / "checkpoint.json").read_text())["step"] == 2
    b = pretrain(cfg, tmp_path / "b", progress=False)
    assert b["finished"] and b["steps_this_run"] == 1
    wa, wb = (
        load_file(str(tmp_path / "a" / "microclip.safetensors")),
        load_file(str(tmp_path / "b" / "microclip.safetensors")),
    )
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not torch.equal(wa["token_embedding.values"], mc.init_token_table(0)[wa["token_embedding.rows"]])
    losses = [json.loads(line)["loss"] for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert len(losses) == 3 and all(x == x for x in losses)
    with pytest.raises(ArtifactError, match="different settings"):
        pretrain(PretrainConfig(steps=3, batch_size=8, warmup=1, threads=1, lr=1e-3), tmp_path / "b", progress=False)
