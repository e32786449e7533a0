"""The transformers CLIP adapter (``--backbone hf:...``): parity with the model's own ``get_text_features`` /
``get_image_features`` for both EOS pooling rules, exact truncation, loading from a saved directory, the CLI end to
end, and the offline / missing-library messages. Tiny random ``CLIPModel``s, no download."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from vlprompt.backbones import create_backbone
from vlprompt.backbones.hf import features_tensor
from vlprompt.errors import BackboneError, WeightsNotFoundError
from vlprompt.eval.zeroshot import zero_shot_weights
from vlprompt.prompts import CoOp, CoOpConfig

NAMES = ["dog", "golden_retriever", "sea lion", "cat"]
EQUIVALENT_TEXT = {"end": "a photo of a {}.", "middle": "a photo {} of a.", "front": "{} a photo of a."}
LEGACY_EOS, EOT = 2, 49407
PREPROCESSOR = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25], "crop_size": {"height": 32, "width": 32},
                "size": {"shortest_edge": 32}, "resample": 2}


def tiny_clip(eos_token_id: int = EOT, vocab_size: int = 49408, seed: int = 0, hidden_act: str = "quick_gelu"):
    """A tiny random transformers ``CLIPModel`` (2 layers, width 32/64, CLIP's vocabulary and 77 positions)."""
    transformers = pytest.importorskip("transformers")
    text = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2, "num_hidden_layers": 2,
            "vocab_size": vocab_size, "max_position_embeddings": 77, "eos_token_id": eos_token_id,
            "bos_token_id": 49406, "pad_token_id": 1, "hidden_act": hidden_act}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 2,
              "image_size": 32, "patch_size": 16, "hidden_act": hidden_act}
    torch.manual_seed(seed)
    config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    return transformers.CLIPModel(config).eval()


def text_features(model, ids: torch.Tensor) -> torch.Tensor:
    """transformers' own text features (a tensor in 4.x, an output object in 5.x)."""
    from vlprompt.backbones.hf import features_tensor

    with torch.no_grad():
        return features_tensor(model.get_text_features(input_ids=ids))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """``{eos_token_id: (model, directory)}``: tiny models saved with ``save_pretrained`` (one per pooling rule)."""
    out = {}
    for eos in (LEGACY_EOS, EOT):
        model = tiny_clip(eos, seed=eos)
        d = tmp_path_factory.mktemp(f"hf-clip-eos{eos}")
        model.save_pretrained(str(d))
        (d / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR))
        out[eos] = (model, d)
    return out


@pytest.mark.parametrize("eos", [LEGACY_EOS, EOT])
@pytest.mark.parametrize("position", ["end", "middle", "front"])
def test_coop_init_equals_get_text_features(saved, eos, position):
    model, d = saved[eos]
    bb = create_backbone(f"hf:{d}")
    assert bb.eos_token_id == eos
    learner = CoOp(bb, NAMES, CoOpConfig(ctx_init="a photo of a", class_token_position=position))
    embeds, ids = learner()
    ours = bb.encode_text_embeddings(embeds, ids)
    texts = [EQUIVALENT_TEXT[position].format(n.replace("_", " ")) for n in NAMES]
    theirs = text_features(model, bb.tokenize(texts))  # the original in-memory model, full 77 tokens
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    if position == "end":  # hence the same logits as zero-shot CLIP with that template
        zs = zero_shot_weights(bb, NAMES, ["a photo of a {}."])
        torch.testing.assert_close(torch.nn.functional.normalize(ours, dim=-1), zs, atol=1e-5, rtol=0)


def test_hidden_act_of_the_config_is_honoured(tmp_path):
    """OpenAI's HF configs say ``hidden_act: quick_gelu``: the adapter runs transformers' own MLPs, so its features
    equal ``get_text_features``/``get_image_features`` for either activation (same weights), the two differ, and the
    activation is recorded."""
    feats = {}
    for act in ("quick_gelu", "gelu"):
        model = tiny_clip(seed=7, hidden_act=act)  # same seed: identical weights, only the activation differs
        model.save_pretrained(str(tmp_path / act))
        (tmp_path / act / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR))
        bb = create_backbone(f"hf:{tmp_path / act}")
        assert bb.identity()["activation"] == act
        texts = ["a photo of a dog.", "itap of a sea lion"]
        images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ours = bb.encode_text(texts), bb.encode_image(images)
            ref = features_tensor(model.get_image_features(pixel_values=images))
        torch.testing.assert_close(ours[0], text_features(model, bb.tokenize(texts)), atol=1e-5, rtol=0)
        torch.testing.assert_close(ours[1], ref, atol=1e-5, rtol=0)
        feats[act] = ours
    for i in (0, 1):
        diff = (feats["gelu"][i] - feats["quick_gelu"][i]).norm(dim=-1) / feats["quick_gelu"][i].norm(dim=-1)
        assert float(diff.max()) > 1e-3


def test_pooling_rules_differ_where_they_should(saved):
    bb_legacy, bb_new = (create_backbone(f"hf:{saved[e][1]}") for e in (LEGACY_EOS, EOT))
    ids = torch.tensor([[49406, 320, 49407, 0, 0], [49406, 49407, 2, 0, 0]])
    assert bb_legacy.eos_positions(ids).tolist() == [2, 1] == bb_new.eos_positions(ids).tolist()
    odd = torch.tensor([[49406, 49407, 320, 49407, 49407]])  # HF-style EOT padding: both take the first EOT
    assert bb_legacy.eos_positions(odd).tolist() == [1] == bb_new.eos_positions(odd).tolist()


@pytest.mark.parametrize("eos", [LEGACY_EOS, EOT])
def test_truncation_is_exact(saved, eos):
    bb = create_backbone(f"hf:{saved[eos][1]}")
    ids = bb.tokenize(["a photo of a dog.", "a long photo of a golden retriever on the grass."])
    emb = bb.embed_tokens(ids)
    full = bb.encode_text_embeddings(emb, ids, truncate=False)
    cut = bb.encode_text_embeddings(emb, ids, truncate=True)
    torch.testing.assert_close(cut, full, atol=1e-5, rtol=0)


def test_image_features_and_preprocessing(saved):
    model, d = saved[EOT]
    bb = create_backbone(f"hf:{d}")
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        from vlprompt.backbones.hf import features_tensor

        theirs = features_tensor(model.get_image_features(pixel_values=images))
    torch.testing.assert_close(bb.encode_image(images), theirs, atol=1e-6, rtol=0)
    assert bb.preprocess.image_size == 32 and bb.preprocess.interpolation == "bilinear"
    assert bb.preprocess.mean == (0.5, 0.5, 0.5) and bb.preprocess.std == (0.25, 0.25, 0.25)
    torch.testing.assert_close(bb.logit_scale, model.logit_scale.exp().detach())


def test_saved_directory_round_trip_and_identity(saved, tmp_path, monkeypatch):
    model, d = saved[EOT]
    a, b = create_backbone(f"hf:{d}"), create_backbone(f"hf:{d}")
    assert a.fingerprint == b.fingerprint and a.name == f"hf:{d}" and a.pretrained is None
    assert (a.context_length, a.token_dim, a.embed_dim) == (77, 64, 16)
    ids = a.tokenize(["a photo of a cat."])
    torch.testing.assert_close(a.encode_text(["a photo of a cat."]), text_features(model, ids), atol=1e-6, rtol=0)
    assert not any(p.requires_grad for p in a.parameters())
    a.train()
    assert not a.model.training
    # A relative directory is recorded absolute; --pretrained DIR says where the files of a named repo are now.
    monkeypatch.chdir(d.parent)
    assert create_backbone(f"hf:{d.name}").name == f"hf:{d}"
    moved = create_backbone("hf:org/tiny-clip", pretrained=str(d))
    assert moved.name == "hf:org/tiny-clip" and moved.pretrained == str(d) and moved.fingerprint == a.fingerprint
    assert create_backbone(f"hf:{saved[LEGACY_EOS][1]}").fingerprint != a.fingerprint


def test_fp16_precision_casts_every_weight(saved):
    bb = create_backbone(f"hf:{saved[EOT][1]}", precision="fp16")
    assert bb.dtype == torch.float16 and {p.dtype for p in bb.parameters()} == {torch.float16}


def test_train_end_to_end_through_cli(saved, image_folder, tmp_path):
    from vlprompt.cli.main import main

    d = saved[EOT][1]
    out = tmp_path / "run"
    argv = ["train", "--dataset", f"folder:{image_folder}", "--shots", "2", "--epochs", "1", "--n-ctx", "4",
            "--out", str(out), "--cache-dir", "", "--backbone", f"hf:{d}", "--device", "cpu"]
    assert main(argv) == 0
    learner = json.loads((out / "learner.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert learner["backbone"]["name"] == f"hf:{d}" and metrics["num_test"] == 12
    assert main(["eval", "--run", str(out), "--dataset", f"folder:{image_folder}", "--device", "cpu",
                 "--cache-dir", ""]) == 0
    ev = json.loads((out / "eval_data" / "metrics.json").read_text())
    assert ev["accuracy"] == pytest.approx(metrics["accuracy"])


def test_offline_hub_repo_explains_cache_and_local_directory(image_folder, tmp_path, monkeypatch, capsys):
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(WeightsNotFoundError) as e:
        create_backbone("hf:openai/clip-vit-base-patch16")
    msg = str(e.value)
    for part in ("'openai/clip-vit-base-patch16'", str(tmp_path / "hub"), "--backbone hf:/path/to/clip-vit-base-patch16",
                 "--pretrained", "hf download openai/clip-vit-base-patch16"):
        assert part in msg
    from vlprompt.cli.main import main

    capsys.readouterr()
    assert main(["train", "--dataset", f"folder:{image_folder}", "--out", str(tmp_path / "o"), "--cache-dir", "",
                 "--backbone", "hf:openai/clip-vit-base-patch16", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and "hf download openai/clip" in err


def test_hub_download_failure_is_explained(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)

    def unreachable(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", unreachable)
    with pytest.raises(WeightsNotFoundError, match="could not be downloaded .OSError: We couldn't connect"):
        create_backbone("hf:org/name")
    with pytest.raises(WeightsNotFoundError, match="no such directory"):
        create_backbone(f"hf:{tmp_path / 'missing'}")


def test_missing_transformers_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` raise ImportError
    with pytest.raises(BackboneError, match=r"pip install 'vlprompt\[hf\]'"):
        create_backbone("hf:openai/clip-vit-base-patch16")


def test_refusals(tmp_path):
    from vlprompt.backbones.hf import HFClipBackbone

    with pytest.raises(BackboneError, match="49000 tokens, not CLIP's 49408"):
        HFClipBackbone(tiny_clip(vocab_size=49000), "hf:x")
    with pytest.raises(BackboneError, match="eos_token_id=1"):
        HFClipBackbone(tiny_clip(eos_token_id=1), "hf:x")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(BackboneError, match="could not load a CLIPModel from directory"):
        create_backbone(f"hf:{tmp_path}")


def test_vocab_json_must_be_clips(saved, tmp_path):
    from vlprompt.backbones.clip_bpe import clip_bpe_tokenizer

    model, _ = saved[EOT]
    model.save_pretrained(str(tmp_path))
    vocab = {("<|startoftext|>" if t == "<start_of_text>" else "<|endoftext|>" if t == "<end_of_text>" else t): i
             for t, i in clip_bpe_tokenizer().encoder.items()}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    create_backbone(f"hf:{tmp_path}")  # HF's spelling of CLIP's vocabulary is accepted
    vocab["a</w>"], vocab["the</w>"] = vocab["the</w>"], vocab["a</w>"]
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(BackboneError, match="is not CLIP's BPE vocabulary"):
        create_backbone(f"hf:{tmp_path}")


@pytest.mark.parametrize("eos", [LEGACY_EOS, EOT])
def test_shared_prefix_path_matches_plain_full_length(saved, eos):
    """The exact speed paths (shared prefix, truncation, chunks) give the plain 77-token logits and gradients."""
    import torch.nn.functional as F

    from vlprompt.engine.model import PromptModel

    bb = create_backbone(f"hf:{saved[eos][1]}")
    assert bb.shared_prefix_unsupported is None
    names = [*NAMES, "a very long class name indeed"]
    img = F.normalize(torch.randn(6, bb.embed_dim, generator=torch.Generator().manual_seed(1)), dim=-1)
    labels = torch.arange(6) % len(names)

    def run(truncate: bool, ctx: torch.Tensor | None = None, **kw):
        torch.manual_seed(0)
        learner = CoOp(bb, names, CoOpConfig(n_ctx=4, truncate=truncate))
        if ctx is not None:
            with torch.no_grad():
                learner.ctx.copy_(ctx)
        model = PromptModel(bb, learner, **kw)
        logits = model.logits(img)
        F.cross_entropy(logits, labels).backward()
        return logits.detach(), learner.ctx.grad.clone(), learner.ctx.detach().clone(), model.text_path()

    ref_logits, ref_grad, ctx, path = run(False, shared_prefix=False)
    assert path == "plain" and ref_grad.abs().max() > 1e-3
    for kw in ({}, {"text_chunk": 2}, {"text_chunk": 2, "text_checkpoint": False}):
        logits, grad, _, path = run(True, ctx, **kw)
        assert path == "shared-prefix", kw
        torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(grad, ref_grad, atol=1e-5, rtol=1e-4)
