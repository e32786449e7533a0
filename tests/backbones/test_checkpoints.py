"""Local checkpoint files in each supported format load through `create_backbone(name, pretrained=PATH)`."""

from __future__ import annotations

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from vlprompt.backbones import create_backbone
from vlprompt.errors import BackboneError, WeightsNotFoundError


def _reference(name="vlp-tiny-rn"):
    torch.manual_seed(123)
    return open_clip.create_model(name).eval()


def _same_outputs(bb, ref):
    torch.manual_seed(0)
    img = torch.randn(2, 3, bb.preprocess.image_size, bb.preprocess.image_size)
    txt = ["a photo of a dog.", "a cat"]
    torch.testing.assert_close(bb.encode_image(img), ref.encode_image(img), atol=1e-5, rtol=0)
    torch.testing.assert_close(bb.encode_text(txt), ref.encode_text(bb.tokenizer(txt)), atol=1e-5, rtol=0)


def test_open_clip_state_dict_pt(tmp_path):
    ref = _reference()
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}, "epoch": 3}, path)
    bb = create_backbone("vlp-tiny-rn", str(path))
    _same_outputs(bb, ref)
    assert bb.identity()["pretrained"] == str(path)


def test_safetensors(tmp_path):
    ref = _reference("vlp-tiny-vit")
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    _same_outputs(create_backbone("vlp-tiny-vit", str(path)), ref)


def test_openai_torchscript_archive(tmp_path):
    ref = _reference()  # OpenAI-style architecture with QuickGELU, as the OpenAI archives
    with torch.no_grad():  # OpenAI archives hold fp16 weights (open_clip rebuilds them through fp16)
        for p in ref.parameters():
            p.copy_(p.half().float())
    img = torch.randn(1, 3, 64, 64)
    traced = torch.jit.trace(ref, (img, ref_text := open_clip.tokenize(["a dog"])), check_trace=False, strict=False)
    del ref_text
    path = tmp_path / "RN-tiny.pt"
    torch.jit.save(traced, str(path))
    bb = create_backbone("vlp-tiny-rn", str(path))
    _same_outputs(bb, ref)


def test_openai_state_dict_with_metadata_keys(tmp_path):
    ref = _reference()
    sd = dict(ref.state_dict())
    sd.update(input_resolution=torch.tensor(64), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    path = tmp_path / "openai_sd.pt"
    torch.save(sd, path)
    _same_outputs(create_backbone("vlp-tiny-rn", str(path)), ref)


def test_wrong_architecture_is_explained(tmp_path):
    ref = _reference("vlp-tiny-vit")
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    with pytest.raises(BackboneError, match="does not match architecture 'vlp-tiny-rn'"):
        create_backbone("vlp-tiny-rn", str(path))


def test_missing_file_and_unknown_tag():
    with pytest.raises(WeightsNotFoundError, match="no such file"):
        create_backbone("vlp-tiny-rn", "/nonexistent/weights.pt")
    with pytest.raises(BackboneError, match="Known tags: openai"):
        create_backbone("RN50", "not-a-tag")


def test_offline_tag_names_the_file_and_the_fix(tmp_path, monkeypatch):
    from hub_cache import offline_hub

    # huggingface_hub reads these at import: patching only the environment let it try the network (46 s here)
    offline_hub(monkeypatch, tmp_path / "hub")
    monkeypatch.setattr("os.path.expanduser", lambda p: p.replace("~", str(tmp_path)))
    with pytest.raises(WeightsNotFoundError) as e:
        create_backbone("RN50", "openai")
    msg = str(e.value)
    assert "resnet50_clip.openai" in msg and "RN50.pt" in msg
    assert "--pretrained /path/to/" in msg
