"""A weights tag builds the model those weights were trained with (issue 12 §1), through the path users take.

Random weights are written where open_clip looks for a tag's files (the offline Hugging Face hub cache, open_clip's
URL cache: see ``hub_cache.py``); ``create_backbone(name, TAG)`` must then equal open_clip's own model built with
the tag's settings (``create_model(name, pretrained=TAG, force_quick_gelu=...)``, and open_clip's own eval
transform from the preprocessing it attached). The GELU build that ``create_model(name, pretrained=TAG)`` gives in
open_clip ≥ 3.0 (what vlprompt built before) is checked to differ, so each test fails for that bug.

Full-size RN50 and ViT-B-32 with ``openai`` here; RN101, ViT-B-16 and a LAION tag in
``benchmarks/pretrained_tags.py``. The cheap cases (preprocessing modes, URL cache, local files) use the tiny
architectures of ``conftest.py`` with tags registered for the test.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import numpy as np
import open_clip
import pytest
import torch
from hub_cache import offline_hub, put_in_hub_cache, state_dict_bytes
from open_clip.pretrained import _PRETRAINED, _pcfg
from open_clip.transform import PreprocessCfg as OCPreprocessCfg
from open_clip.transform import image_transform_v2
from PIL import Image

from vlprompt.backbones import create_backbone
from vlprompt.data.transforms import build_transform
from vlprompt.errors import BackboneError

TEXTS = ["a photo of a dog.", "a photo of a golden retriever on the grass.", "itap of a cat"]


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max over rows of ‖a - b‖ / ‖b‖."""
    return float(((a - b).norm(dim=-1) / b.norm(dim=-1)).max())


def photo(w: int = 300, h: int = 200) -> Image.Image:
    """A non-square RGB image (so shortest / squash / longest resizing differ)."""
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def random_state(name: str, seed: int) -> dict[str, torch.Tensor]:
    """Seeded random weights of ``name`` as fp16 values (as OpenAI's releases)."""
    torch.manual_seed(seed)
    model = open_clip.create_model(name)
    return {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """An offline hub cache holding random RN50 (``.bin``) and ViT-B-32 (``.safetensors``) ``openai`` weights."""
    cache = tmp_path_factory.mktemp("hub")
    tmp = tmp_path_factory.mktemp("ser")
    for name, fname, seed in (("RN50", "open_clip_pytorch_model.bin", 1), ("ViT-B-32", "open_clip_model.safetensors", 2)):
        repo = open_clip.get_pretrained_cfg(name, "openai")["hf_hub"].rstrip("/")
        put_in_hub_cache(cache, repo, fname, state_dict_bytes(random_state(name, seed), fname, tmp))
    return cache


@pytest.mark.parametrize(("name", "pretrained"), [("RN50", None), ("ViT-B-32", "openai")])
def test_openai_tag_is_open_clips_quickgelu_model(hub, monkeypatch, name, pretrained):
    """``--backbone NAME`` (default tag) / ``--pretrained openai``: QuickGELU, open_clip's features and transform."""
    offline_hub(monkeypatch, hub)
    bb = create_backbone(name, pretrained)
    ident = bb.identity()
    assert (ident["pretrained"], ident["activation"]) == ("openai", "quick_gelu")
    torch.manual_seed(0)
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ours_t, ours_i = bb.encode_text(TEXTS), bb.encode_image(images)
        ref = open_clip.create_model(name, pretrained="openai", force_quick_gelu=True).eval()
        ids = open_clip.get_tokenizer(name)(TEXTS)
        ref_t, ref_i = ref.encode_text(ids), ref.encode_image(images)
        # open_clip's own eval transform from the preprocessing it attached for the tag (create_model_and_transforms)
        theirs_tf = image_transform_v2(OCPreprocessCfg(**ref.visual.preprocess_cfg), is_train=False)
        del ref
        gelu = open_clip.create_model(name, pretrained="openai").eval()  # open_clip 3.x default: GELU (+ a warning)
        gelu_t, gelu_i = gelu.encode_text(ids), gelu.encode_image(images)
        del gelu
    assert rel_diff(ours_t, ref_t) < 1e-5 and rel_diff(ours_i, ref_i) < 1e-5
    assert rel_diff(gelu_t, ref_t) > 1e-3  # the bug this test names: GELU text features differ
    if name.startswith("ViT"):
        assert rel_diff(gelu_i, ref_i) > 1e-3  # ViT image towers have MLPs too (ModifiedResNet has none)
    pil = photo()
    assert torch.equal(build_transform(bb.preprocess, train=False)(pil), theirs_tf(pil))
    assert bb.preprocess.resize_mode == "shortest" and bb.preprocess.interpolation == "bicubic"


def test_cli_default_pretrained_reads_the_hub_cache(hub, tmp_path, image_folder):
    """A new user's command, in a fresh process with only HF_HUB_CACHE/HF_HUB_OFFLINE set: ``vlprompt zeroshot
    --backbone RN50`` uses the cached ``openai`` weights with QuickGELU and records both in config.json."""
    env = {**os.environ, "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "HOME": str(tmp_path / "home")}
    out = tmp_path / "zs"
    r = subprocess.run([sys.executable, "-m", "vlprompt", "zeroshot", "--dataset", f"folder:{image_folder}",
                        "--backbone", "RN50", "--device", "cpu", "--cache-dir", "", "--out", str(out)],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    backbone = json.loads((out / "config.json").read_text())["backbone"]
    assert (backbone["name"], backbone["pretrained"], backbone["activation"]) == ("RN50", "openai", "quick_gelu")
    assert "QuickGELU mismatch" not in r.stderr and "random" not in r.stderr.lower()


# --- tiny architectures with tags registered for the test: preprocessing, activation and the URL cache --------


@pytest.fixture
def tiny_tags(monkeypatch):
    """Tags for ``vlp-tiny-vit`` (whose config has no quick_gelu): a hub tag with squash/bilinear/own mean+std and
    QuickGELU, a hub tag with ``longest`` and GELU, and a URL-only tag (no hash check for this host)."""
    tags = {
        "squashy": _pcfg(hf_hub="vlp-test/tiny-squash/", mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3),
                         interpolation="bilinear", resize_mode="squash", quick_gelu=True),
        "longish": _pcfg(hf_hub="vlp-test/tiny-longest/", resize_mode="longest"),
        "fromurl": _pcfg(url="https://weights.example.invalid/v1/vlp-tiny-vit-fromurl.pt", quick_gelu=True),
    }
    monkeypatch.setitem(_PRETRAINED, "vlp-tiny-vit", tags)
    return tags


@pytest.mark.parametrize(("tag", "activation"), [("squashy", "quick_gelu"), ("longish", "gelu")])
def test_tag_preprocessing_and_activation_follow_its_config(tmp_path, monkeypatch, tiny_tags, tag, activation):
    offline_hub(monkeypatch, tmp_path / "hub")
    repo = tiny_tags[tag]["hf_hub"].rstrip("/")
    state = random_state("vlp-tiny-vit", 3)
    put_in_hub_cache(tmp_path / "hub", repo, "open_clip_model.safetensors",
                     state_dict_bytes(state, "x.safetensors", tmp_path))
    bb = create_backbone("vlp-tiny-vit", tag)
    assert bb.activation == activation
    ref = open_clip.create_model("vlp-tiny-vit", pretrained=tag, force_quick_gelu=activation == "quick_gelu").eval()
    pil = photo()
    theirs = image_transform_v2(OCPreprocessCfg(**ref.visual.preprocess_cfg), is_train=False)(pil)
    ours = build_transform(bb.preprocess, train=False)(pil)
    assert torch.equal(ours, theirs)
    shortest = build_transform(type(bb.preprocess)(image_size=32, mean=bb.preprocess.mean, std=bb.preprocess.std,
                                                   interpolation=bb.preprocess.interpolation), train=False)(pil)
    assert not torch.equal(ours, shortest)  # the resize mode matters for this image
    with torch.no_grad():
        torch.testing.assert_close(bb.encode_text(TEXTS), ref.encode_text(bb.tokenizer(TEXTS)), atol=1e-5, rtol=0)
        images = torch.randn(2, 3, 32, 32)
        torch.testing.assert_close(bb.encode_image(images), ref.encode_image(images), atol=1e-5, rtol=0)


def test_url_cache_tag(tmp_path, monkeypatch, tiny_tags):
    """A tag with only a URL is read from open_clip's URL cache, ``~/.cache/clip/<basename>``."""
    monkeypatch.setenv("HOME", str(tmp_path))
    clip_cache = tmp_path / ".cache" / "clip"
    clip_cache.mkdir(parents=True)
    state = random_state("vlp-tiny-vit", 4)
    torch.save(state, clip_cache / "vlp-tiny-vit-fromurl.pt")
    bb = create_backbone("vlp-tiny-vit", "fromurl")
    assert bb.activation == "quick_gelu"
    assert torch.equal(bb.token_embedding_weight, state["token_embedding.weight"].float())  # the cached file's
    ref = open_clip.create_model("vlp-tiny-vit", pretrained="fromurl",
                                 force_quick_gelu=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(bb.encode_text(TEXTS), ref.encode_text(bb.tokenizer(TEXTS)), atol=1e-5, rtol=0)


def test_quickgelu_name_with_a_gelu_tag_is_refused(tiny_tags):
    with pytest.raises(BackboneError, match="trained with GELU.*--backbone vlp-tiny-vit"):
        create_backbone("vlp-tiny-vit-quickgelu", "longish")


# --- local files: detect what can be detected, make the rest explicit --------------------------------------------


def _tiny_reference(quick_gelu: bool, seed: int = 5):
    torch.manual_seed(seed)
    return open_clip.create_model("vlp-tiny-vit", force_quick_gelu=quick_gelu).eval()


def _same_text(bb, ref) -> bool:
    with torch.no_grad():
        return rel_diff(bb.encode_text(TEXTS), ref.encode_text(bb.tokenizer(TEXTS))) < 1e-5


def test_hub_snapshot_file_reads_its_open_clip_config(tmp_path):
    """``--pretrained .../snapshots/<rev>/open_clip_model.safetensors`` of a ``timm/*.openai`` repo: the
    ``open_clip_config.json`` beside it (``model_cfg.quick_gelu: true``, as open_clip's push_to_hf_hub writes for
    openai) decides the activation, and its ``preprocess_cfg`` the preprocessing."""
    ref = _tiny_reference(True)
    repo = "timm/vlp_tiny_vit.openai"
    weights = put_in_hub_cache(tmp_path, repo, "open_clip_model.safetensors",
                               state_dict_bytes(ref.state_dict(), "x.safetensors", tmp_path))
    config = {"model_cfg": {"embed_dim": 32, "quick_gelu": True},
              "preprocess_cfg": {"mean": [0.1, 0.2, 0.3], "std": [0.3, 0.2, 0.1], "interpolation": "bilinear",
                                 "resize_mode": "squash"}}
    put_in_hub_cache(tmp_path, repo, "open_clip_config.json", json.dumps(config).encode())
    bb = create_backbone("vlp-tiny-vit", str(weights))
    assert bb.activation == "quick_gelu" and _same_text(bb, ref)
    assert not _same_text(bb, _tiny_reference(False))
    assert (bb.preprocess.mean, bb.preprocess.resize_mode, bb.preprocess.interpolation) == (
        (0.1, 0.2, 0.3), "squash", "bilinear")


def test_unknown_activation_warns_and_quickgelu_name_is_the_explicit_choice(tmp_path, caplog):
    ref = _tiny_reference(True)
    path = tmp_path / "weights.safetensors"
    path.write_bytes(state_dict_bytes(ref.state_dict(), "x.safetensors", tmp_path))
    with caplog.at_level(logging.WARNING, logger="vlprompt"):
        plain = create_backbone("vlp-tiny-vit", str(path))
    assert plain.activation == "gelu"
    assert "--backbone vlp-tiny-vit-quickgelu" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vlprompt"):
        explicit = create_backbone("vlp-tiny-vit-quickgelu", str(path))
    assert not caplog.records
    assert explicit.identity()["activation"] == "quick_gelu" and explicit.identity()["name"] == "vlp-tiny-vit-quickgelu"
    assert _same_text(explicit, ref) and not _same_text(plain, ref)


def test_openai_metadata_keys_mean_quickgelu(tmp_path):
    ref = _tiny_reference(True)
    sd = dict(ref.state_dict())
    sd.update(input_resolution=torch.tensor(32), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    torch.save(sd, tmp_path / "openai.pt")
    bb = create_backbone("vlp-tiny-vit", str(tmp_path / "openai.pt"))
    assert bb.activation == "quick_gelu" and _same_text(bb, ref)


def test_config_saying_gelu_contradicts_a_quickgelu_name(tmp_path):
    ref = _tiny_reference(False)
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"quick_gelu": False}}))
    save = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(ref.state_dict(), save)
    with pytest.raises(BackboneError, match="open_clip_config.json.*GELU.*--backbone vlp-tiny-vit"):
        create_backbone("vlp-tiny-vit-quickgelu", str(save))
    assert create_backbone("vlp-tiny-vit", str(save)).activation == "gelu"


def test_a_prompt_is_refused_by_a_backbone_with_another_activation():
    """The weights fingerprint cannot see the activation; the recorded one is compared."""
    from vlprompt.engine.checkpoint import check_backbone
    from vlprompt.errors import ArtifactError

    bb = create_backbone("vlp-tiny-vit", "random")
    meta = {"backbone": {**bb.identity(), "activation": "quick_gelu"}}
    with pytest.raises(ArtifactError, match=r"activation \(quick_gelu vs gelu\)"):
        check_backbone(meta, bb, "run")
    check_backbone({"backbone": {k: v for k, v in bb.identity().items() if k != "activation"}}, bb, "run")  # 0.1.0
