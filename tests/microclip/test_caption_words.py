"""The caption-word pretraining loss (``PretrainConfig.word_loss``): targets from the caption's own tokens, a head
that is checkpointed with the run and never exported, and runs without it unchanged."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from open_clip import tokenize
from safetensors.torch import load_file

from vlprompt.backbones.microclip import encode_text_truncated, images_to_tensor
from vlprompt.microclip import caption_words as cw
from vlprompt.microclip import world2
from vlprompt.microclip.pretrain import PretrainConfig, Trainer, main, pretrain

SMALL = {"version": 2, "steps": 2, "batch_size": 6, "warmup": 1, "threads": 1, "checkpoint_every": 1, "log_every": 1}


def test_targets_mark_exactly_the_caption_tokens_between_sos_and_eos():
    tr = Trainer(PretrainConfig(**SMALL, word_loss=1.0))
    ids = tokenize(["a photo of a red star.", "a sketch of a ring."])  # [2, 77]
    t = cw.caption_word_targets(ids, tr.remap[ids], len(tr.rows))  # [2, K]
    for i in range(2):
        eos = int(ids[i].argmax())
        expected = set(tr.remap[ids[i, : eos + 1]].tolist())
        assert set(torch.nonzero(t[i]).flatten().tolist()) == expected  # no padding row, every word once
    assert t.max() == 1.0 and t[0].sum() == len(set(ids[0, : int(ids[0].argmax()) + 1].tolist()))


def test_the_head_is_trained_checkpointed_and_never_exported(tmp_path):
    cfg = PretrainConfig(**SMALL, word_loss=0.5)
    pretrain(cfg, tmp_path / "a", progress=False, stop_after=1)
    snap = load_file(str(tmp_path / "a" / "ckpt" / "model-1.safetensors"))
    assert {"word_head.proj.weight", "word_head.proj.bias"} <= set(snap)
    pretrain(cfg, tmp_path / "a", progress=False)  # resumes with the head
    pretrain(cfg, tmp_path / "b", progress=False)  # straight through
    wa, wb = (load_file(str(tmp_path / d / "microclip.safetensors")) for d in "ab")
    assert all(torch.equal(wa[k], wb[k]) for k in wa) and not any(k.startswith("word_head") for k in wa)
    log = (tmp_path / "b" / "log.jsonl").read_text()
    assert '"word_loss"' in log


def test_the_word_loss_changes_training_and_without_it_the_loss_is_plain_infonce():
    batch = world2.generate(0, 0, 6)
    out = {}
    for w in (0.0, 1.0):
        torch.manual_seed(0)
        tr = Trainer(PretrainConfig(**SMALL, word_loss=w))
        stats = tr.train_step(batch, tokenize)
        out[w] = (stats["loss"], tr.model.visual.conv1.weight.detach().clone())
    assert out[1.0][0] > out[0.0][0] + 10  # ≈ K·ln 2 of word loss at init
    assert not torch.equal(out[0.0][1], out[1.0][1])
    # without the head the step's loss is exactly the symmetric InfoNCE of the model before the step
    torch.manual_seed(0)
    tr = Trainer(PretrainConfig(**SMALL))
    with torch.no_grad():
        img = tr.model.encode_image(images_to_tensor(batch.images), normalize=True)  # [6, E]
        ids = tokenize(batch.captions)
        txt = encode_text_truncated(tr.model, ids, embed_ids=tr.remap[ids], normalize=True)  # [6, E]
        logits = tr.model.logit_scale.exp() * img @ txt.t()
        t = torch.arange(6)
        infonce = float(0.5 * (F.cross_entropy(logits, t) + F.cross_entropy(logits.t(), t)))
    stats = tr.train_step(batch, tokenize)
    assert tr.word_head is None and "word_loss" not in stats and stats["loss"] == pytest.approx(infonce, abs=1e-6)


def test_cli_takes_word_loss_and_clip_grad(tmp_path, capsys):
    assert main(["--version", "2", "--out", str(tmp_path / "r"), "--steps", "1", "--batch-size", "4", "--warmup", "1",
                 "--word-loss", "0.25", "--clip-grad", "1.0", "--no-progress"]) == 0  # fmt: skip
    import json

    saved = json.loads((tmp_path / "r" / "checkpoint.json").read_text())["config"]
    assert (saved["word_loss"], saved["clip_grad"]) == (0.25, 1.0)
    with pytest.raises(SystemExit):
        main(["--version", "2", "--out", str(tmp_path / "r"), "--word-loss", "lots"])


def test_softmax_idf_form_weights_rare_caption_words_and_refuses_unknown_forms(monkeypatch):
    from vlprompt.errors import ConfigError

    monkeypatch.setattr(cw, "IDF_CAPTIONS", 1024)  # one batch of captions is enough to see the weights' shape
    tr = Trainer(PretrainConfig(**SMALL, word_loss=1.0, word_form="softmax-idf"))
    row = {tok: int(tr.remap[tokenize([tok])[0, 1]]) for tok in ("a", "star", "ring")}
    sos, eos = int(tr.remap[49406]), int(tr.remap[49407])
    assert tr.idf[sos] == 0 and tr.idf[eos] == 0  # in every caption: no weight
    assert tr.idf[row["star"]] > 1.5 and tr.idf[row["ring"]] > 1.5 and tr.idf[row["a"]] < 0.5
    feats = torch.randn(2, 128)
    ids = tokenize(["a photo of a red star.", "a sketch of a ring."])
    t = cw.caption_word_targets(ids, tr.remap[ids], len(tr.rows))
    w = t * tr.idf
    w = w / w.sum(-1, keepdim=True)
    expected = -(w * torch.log_softmax(tr.word_head(feats), -1)).sum(-1).mean()
    assert torch.allclose(cw.softmax_idf_loss(tr.word_head, feats, t, tr.idf), expected)
    with pytest.raises(ConfigError, match="word_form"):
        PretrainConfig(**SMALL, word_loss=1.0, word_form="softmax")
