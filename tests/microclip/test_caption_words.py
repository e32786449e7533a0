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
    assert tr.word_weights[sos] == 0 and tr.word_weights[eos] == 0  # in every caption: no weight
    assert tr.word_weights[row["star"]] > 1.5 and tr.word_weights[row["ring"]] > 1.5 and tr.word_weights[row["a"]] < 0.5
    feats = torch.randn(2, 128)
    ids = tokenize(["a photo of a red star.", "a sketch of a ring."])
    t = cw.caption_word_targets(ids, tr.remap[ids], len(tr.rows))
    w = t * tr.word_weights
    w = w / w.sum(-1, keepdim=True)
    expected = -(w * torch.log_softmax(tr.word_head(feats), -1)).sum(-1).mean()
    assert torch.allclose(cw.softmax_idf_loss(tr.word_head, feats, t, tr.word_weights), expected)
    with pytest.raises(ConfigError, match="word_form"):
        PretrainConfig(**SMALL, word_loss=1.0, word_form="softmax")


def test_nouns_form_trains_only_the_caption_head_nouns_rows():
    from vlprompt.errors import ConfigError

    tr = Trainer(PretrainConfig(**SMALL, word_loss=1.0, word_form="sigmoid-nouns"))
    mask = tr.word_weights  # bool[K]
    row = {w: int(tr.remap[tokenize([w])[0, 1]]) for w in ("star", "left", "photo", "red", "small", "striped", "a")}
    assert mask.dtype == torch.bool and all(mask[row[w]] for w in ("star", "left", "photo"))
    assert not any(mask[row[w]] for w in ("red", "small", "striped", "a"))  # modifiers and function words
    noun_ids = {t for w in world2.CAPTION_NOUNS for t in tokenize([w])[0].tolist() if 0 < t < 49406}  # BPE only
    assert int(mask.sum()) == len(noun_ids) and len(noun_ids) > len(world2.CAPTION_NOUNS)  # hexagon: 2 tokens
    assert world2.CAPTION_NOUNS <= world2.caption_words()
    feats = torch.randn(2, 128)
    ids = tokenize(["a photo of a red star.", "a sketch of a ring."])
    t = cw.caption_word_targets(ids, tr.remap[ids], len(tr.rows))
    base = cw.word_loss("sigmoid-nouns", tr.word_head, feats, t, mask)
    with torch.no_grad():  # a modifier's logit moves: the loss does not; a noun's logit moves: it does
        tr.word_head.proj.bias[row["red"]] += 5.0
        assert torch.equal(cw.word_loss("sigmoid-nouns", tr.word_head, feats, t, mask), base)
        tr.word_head.proj.bias[row["star"]] += 5.0
        assert not torch.equal(cw.word_loss("sigmoid-nouns", tr.word_head, feats, t, mask), base)
    logits = tr.word_head(feats)[:, mask]
    expected = F.binary_cross_entropy_with_logits(logits, t[:, mask], reduction="sum") / 2
    assert torch.allclose(cw.word_loss("sigmoid-nouns", tr.word_head, feats, t, mask), expected)
    with pytest.raises(ConfigError, match="version 2"):
        PretrainConfig(**{**SMALL, "version": 1}, word_loss=1.0, word_form="sigmoid-nouns")


def test_objects_form_is_a_softmax_over_the_object_nouns_the_caption_names():
    tr = Trainer(PretrainConfig(**SMALL, word_loss=1.0, word_form="softmax-objects"))
    mask = tr.word_weights  # bool[K]: one row per object noun
    assert mask.dtype == torch.bool and int(mask.sum()) == len(world2.CAPTION_OBJECTS) == 14
    obj = [int(tr.remap[tokenize([w])[0, 1]]) for w in world2.CAPTION_OBJECTS]  # object rows, first BPE token
    assert sorted(obj) == torch.nonzero(mask).flatten().tolist()
    feats = torch.randn(3, 128)
    caps = ["a photo of a small red star on the left.", "a sketch of a ring and a hexagon.", "a photo of a shape."]
    ids = tokenize(caps)
    t = cw.caption_word_targets(ids, tr.remap[ids], len(tr.rows))
    logp = torch.log_softmax(tr.word_head(feats)[:, mask], -1)  # [3, 14] columns in row order
    col = {w: sorted(obj).index(r) for w, r in zip(world2.CAPTION_OBJECTS, obj)}
    expected = -(logp[0, col["star"]] + 0.5 * (logp[1, col["ring"]] + logp[1, col["hexagon"]]) + logp[2, col["shape"]]) / 3
    assert torch.allclose(cw.word_loss("softmax-objects", tr.word_head, feats, t, mask), expected)
    with torch.no_grad():  # a non-object row (a colour word) has no say in the loss
        before = cw.word_loss("softmax-objects", tr.word_head, feats, t, mask)
        tr.word_head.proj.bias[int(tr.remap[tokenize(["red"])[0, 1]])] += 5.0
        assert torch.equal(cw.word_loss("softmax-objects", tr.word_head, feats, t, mask), before)


def test_sigmoid_plus_objects_form_is_the_sum_of_the_two_losses():
    tr = Trainer(PretrainConfig(**SMALL, word_loss=1.0, word_form="sigmoid+objects"))
    feats = torch.randn(2, 128)
    ids = tokenize(["a photo of a red star.", "a sketch of a ring."])
    t = cw.caption_word_targets(ids, tr.remap[ids], len(tr.rows))
    base, objects = tr.word_weights  # (the sigmoid form's: None, the object mask)
    assert base is None and torch.equal(objects, cw.object_mask(world2, tr.rows))
    both = cw.word_loss("sigmoid+objects", tr.word_head, feats, t, tr.word_weights)
    parts = cw.caption_word_loss(tr.word_head, feats, t) + cw.softmax_objects_loss(tr.word_head, feats, t, objects)
    assert torch.equal(both, parts)  # the very same ops: the shipped recipe's loss is unchanged bit for bit


def test_nouns_plus_objects_form_is_the_sum_of_the_nouns_and_objects_losses():
    tr = Trainer(PretrainConfig(**SMALL, word_loss=1.0, word_form="nouns+objects"))
    nouns, objects = tr.word_weights  # (bool[K], bool[K])
    assert torch.equal(nouns, cw.noun_mask(world2, tr.rows)) and torch.equal(objects, cw.object_mask(world2, tr.rows))
    feats = torch.randn(2, 128)
    ids = tokenize(["a photo of a red star on the left.", "a sketch of a ring."])
    t = cw.caption_word_targets(ids, tr.remap[ids], len(tr.rows))
    both = cw.word_loss("nouns+objects", tr.word_head, feats, t, tr.word_weights)
    parts = cw.caption_word_loss(tr.word_head, feats, t, nouns) + cw.softmax_objects_loss(tr.word_head, feats, t, objects)
    assert torch.allclose(both, parts)


def test_object_weight_scales_the_object_term_and_is_part_of_the_recipe(tmp_path):
    from vlprompt.errors import ArtifactError, ConfigError

    tr = Trainer(PretrainConfig(**SMALL, word_loss=1.0, word_form="sigmoid+objects"))
    feats = torch.randn(2, 128)
    ids = tokenize(["a photo of a red star.", "a sketch of a ring."])
    t = cw.caption_word_targets(ids, tr.remap[ids], len(tr.rows))
    sig = cw.caption_word_loss(tr.word_head, feats, t)
    obj = cw.softmax_objects_loss(tr.word_head, feats, t, tr.word_weights[1])  # (None, the object mask)
    assert torch.allclose(cw.word_loss("sigmoid+objects", tr.word_head, feats, t, tr.word_weights, 4.0), sig + 4 * obj)
    cfg = PretrainConfig(**SMALL, word_loss=1.0, word_form="sigmoid+objects", object_weight=4.0)
    pretrain(cfg, tmp_path / "r", progress=False, stop_after=1)
    with pytest.raises(ArtifactError, match="object_weight"):  # resuming with another weight is refused
        pretrain(PretrainConfig(**SMALL, word_loss=1.0, word_form="sigmoid+objects"), tmp_path / "r", progress=False)
    with pytest.raises(ConfigError, match="object_weight"):
        PretrainConfig(**SMALL, object_weight=-1.0)
