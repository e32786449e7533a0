"""Issue 15's application paths for a learner that prompts the image tower (``prompts_image``): training on image
batches, evaluation through the prompted tower (never the feature cache), the artifact, ``PromptClassifier``,
``eval``/``predict``, the refusals of ``export``/``interpret``/``cached:K``, and resuming.

The learner is ``test-deep`` (tests/deep_learners.py: IVLP-style text and vision tokens at depth 2 on the tiny
random ``vlp-tiny-vit``). The logits are checked against a computation written here from the backbone hook alone
(the official prompt "a photo of a {name}." with its first two token embeddings replaced by ``ctx``, the deep text
tokens, the images' test transform and the vision tokens), not against another run of the same code.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

import deep_learners
from vlprompt.api import PromptClassifier
from vlprompt.backbones import create_backbone
from vlprompt.cli.main import main
from vlprompt.data.transforms import build_transform
from vlprompt.errors import ConfigError
from vlprompt.runs import state as TS

TESTS = Path(__file__).resolve().parents[1]
EPOCHS = 3
BASE = ["--backbone", "vlp-tiny-vit", "--pretrained", "random", "--device", "cpu"]


@pytest.fixture
def deep():
    with deep_learners.registered() as method:
        yield method


def _argv(folder, out, *extra, cache="", method=deep_learners.METHOD):
    return ["train", "--dataset", f"folder:{folder}", "--shots", "4", "--epochs", str(EPOCHS), "--method",
            method, "--out", str(out), "--cache-dir", str(cache), *BASE, *extra]


def _test_images(folder: Path) -> list[Path]:
    return sorted((folder / "test").rglob("*.png"))


def _reference_logits(run: Path, paths: list[Path]) -> torch.Tensor:
    """``[N, C]`` logits of the saved prompt, computed from the backbone hook and the saved tensors only."""
    meta = json.loads((run / "learner.json").read_text())
    state = load_file(str(run / "learner.safetensors"))
    torch.manual_seed(0)
    bb = create_backbone("vlp-tiny-vit", "random")
    names = [n.replace("_", " ") for n in meta["classnames"]]
    ids = bb.tokenize([f"a photo of a {n}." for n in names])  # (C, 77)
    emb = bb.embed_tokens(ids).clone()  # (C, 77, D)
    emb[:, 1:3] = state["ctx"]  # the learned "a photo"; "of a" kept
    with torch.no_grad():
        text = F.normalize(bb.encode_text_embeddings(emb, ids, truncate=False, deep_text=state["deep_text"]), dim=-1)
        tf = build_transform(bb.preprocess, train=False)
        x = torch.stack([tf(Image.open(p).convert("RGB")) for p in paths])  # (N, 3, 32, 32)
        img = F.normalize(bb.encode_image(x, vision_prompts=deep_learners.vision_tokens(state)), dim=-1)  # (N, E)
        frozen = F.normalize(bb.encode_image(x), dim=-1)
    assert not torch.allclose(img, frozen, atol=1e-3)  # the vision tokens change the features
    return bb.logit_scale * img @ text.t()


def test_train_eval_predict_through_the_prompted_tower(deep, textured_folder, tmp_path, capsys):
    run, cache = tmp_path / "run", tmp_path / "cache"
    assert main(_argv(textured_folder, run, "--augment", "none", cache=cache)) == 0
    meta = json.loads((run / "learner.json").read_text())
    state = load_file(str(run / "learner.safetensors"))
    assert meta["prompts_image"] is True
    # M counts the learned input-layer tokens (n_ctx = 2 of "a photo of a", the official deep rule), not the words
    assert json.loads((run / "config.json").read_text())["label"] == "TestDeep M=2 end init 'a photo of a'"
    assert {k: tuple(v.shape) for k, v in state.items()} == {"ctx": (2, 64), "deep_text": (1, 2, 64),
                                                             "deep_vision": (2, 2, 64), "epochs_seen": ()}
    assert float(state["epochs_seen"]) == EPOCHS  # on_epoch_end ran once per epoch, its buffer saved
    # --augment none trained on images (test transform): nothing was encoded into the feature cache, test included
    assert not cache.exists() or not any(p.is_file() for p in cache.rglob("*"))
    paths = _test_images(textured_folder)
    ref = _reference_logits(run, paths)  # (12, 3)
    clf = PromptClassifier.load(run)
    assert clf.prompts_image and not clf.conditional
    torch.testing.assert_close(clf.logits([str(p) for p in paths]), ref, atol=1e-5, rtol=0)
    labels = torch.tensor([clf.classnames.index(p.parent.name) for p in paths])
    acc = 100.0 * (ref.argmax(-1) == labels).float().mean().item()
    assert json.loads((run / "metrics.json").read_text())["accuracy"] == pytest.approx(acc)
    with pytest.raises(ConfigError, match="prompted encoder"):
        clf.feature_logits(torch.randn(2, 32))

    # eval --run (the path of base-to-new's new classes and of the DG/xd targets) on the same data, cache on
    assert main(["eval", "--run", str(run), "--dataset", f"folder:{textured_folder}", "--device", "cpu",
                 "--cache-dir", str(cache)]) == 0
    assert json.loads((run / "eval_textured" / "metrics.json").read_text())["accuracy"] == pytest.approx(acc)
    assert not cache.exists() or not any(p.is_file() for p in cache.rglob("*"))
    capsys.readouterr()
    assert main(["predict", "--run", str(run), *map(str, paths[:4]), "--json", "--top-k", "3", "--device", "cpu"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    probs = F.softmax(ref[:4], dim=-1)
    for line, p in zip(lines, probs, strict=True):
        got = {t["label"]: t["prob"] for t in line["top"]}
        assert got == pytest.approx({clf.classnames[i]: float(p[i]) for i in range(3)}, abs=1e-5)

    # export and interpret refuse such a run, with the reason
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "inside the image tower" in capsys.readouterr().err
    assert main(["interpret", "--run", str(run)]) == 2
    assert "no words" in capsys.readouterr().err


def test_cached_views_are_refused_before_the_run_is_written(deep, textured_folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_argv(textured_folder, out, "--augment", "cached:2")) == 2
    err = capsys.readouterr().err
    assert "--augment cached:2" in err and "prompts the image tower" in err and "--augment online" in err
    assert not (out / "config.json").exists()


def test_batches_are_images_with_the_right_transform(deep, textured_folder):
    """--augment online: the train transform (random crops, flips); none: the test transform; never features."""
    from vlprompt.engine.config import TrainConfig
    from vlprompt.engine.model import PromptModel
    from vlprompt.engine.spec import RunSpec
    from vlprompt.runs.folder import load_inputs
    from vlprompt.runs.train import _resolve, _train_batches

    for augment, train in (("online", True), ("none", False)):
        spec = RunSpec(dataset=f"folder:{textured_folder}", shots=4, backbone="vlp-tiny-vit", pretrained="random",
                       device="cpu", method=deep_learners.METHOD, cache_dir="", out="unused",
                       train=TrainConfig(augment=augment, epochs=1))
        inputs = load_inputs(spec)
        spec, learner = _resolve(spec, inputs)
        loader, are_feats = _train_batches(spec, PromptModel(inputs.backbone, learner), inputs.data, False)
        assert not are_feats and loader.batch_size == spec.train.batch_size
        tf = loader.dataset.transform
        want = build_transform(inputs.backbone.preprocess, train=train, flip=spec.train.flip,
                               crop_scale=(spec.train.crop_scale_min, 1.0))
        assert repr(tf) == repr(want)


CHILD = r"""
import sys
import open_clip, torch
from safetensors.torch import save_file
open_clip.add_model_config(sys.argv[1])
torch.set_num_threads(int(sys.argv[2]))
sys.path.insert(0, sys.argv[3])
import deep_learners
deep_learners.register()
from vlprompt.api import PromptClassifier
clf = PromptClassifier.load(sys.argv[4])
save_file({"logits": clf.logits(sys.argv[6:]).contiguous(), "text": clf.text_features().contiguous()}, sys.argv[5])
"""


@pytest.mark.parametrize("method, learned", [
    (deep_learners.METHOD, {"ctx", "deep_text", "deep_vision", "epochs_seen"}),
    (deep_learners.COUPLED, {"ctx", "deep_text", "couple.0.weight", "couple.0.bias", "couple.1.weight", "couple.1.bias"}),
])
def test_artifact_reloaded_in_another_process_gives_identical_logits(deep, textured_folder, tmp_path,
                                                                     tiny_model_configs, method, learned):
    """Every learned tensor (tokens of both towers, coupling layers, state buffers) is in the safetensors file."""
    run = tmp_path / "run"
    assert main(_argv(textured_folder, run, "--augment", "online", method=method)) == 0
    assert set(load_file(str(run / "learner.safetensors"))) == learned
    paths = [str(p) for p in _test_images(textured_folder)]
    threads = 1 if torch.get_num_threads() > 1 else 2
    res = subprocess.run([sys.executable, "-c", CHILD, str(tiny_model_configs), str(threads), str(TESTS), str(run),
                          str(tmp_path / "child.safetensors"), *paths], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    child = load_file(str(tmp_path / "child.safetensors"))
    clf = PromptClassifier.load(run)
    # equal to fp32 rounding, not bit for bit: with another thread count the towers' fp32 kernels may sum in another
    # order (a wrong or missing loaded tensor would move these by far more than 1e-4)
    torch.testing.assert_close(child["text"], clf.text_features(), atol=1e-6, rtol=0)
    torch.testing.assert_close(child["logits"], clf.logits(paths), atol=5e-6, rtol=0)
    torch.testing.assert_close(child["logits"], _reference_logits(run, [Path(p) for p in paths]), atol=1e-5, rtol=0)


class _Stop(Exception):
    pass


def test_a_run_interrupted_after_an_epoch_resumes_to_the_same_result(deep, textured_folder, tmp_path, monkeypatch):
    ref, out = tmp_path / "ref", tmp_path / "out"
    assert main(_argv(textured_folder, ref, "--augment", "online")) == 0
    save = TS.save_train_state

    def stop_after_2(*a, **k):
        save(*a, **k)
        if k["epoch"] == 2:
            raise _Stop

    with monkeypatch.context() as m:
        m.setattr(TS, "save_train_state", stop_after_2)
        with pytest.raises(_Stop):
            main(["--debug", *_argv(textured_folder, out, "--augment", "online")])
    assert not (out / "metrics.json").exists()
    assert main(_argv(textured_folder, out, "--augment", "online")) == 0
    assert json.loads((out / "config.json").read_text())["resumes"][0]["after_epoch"] == 2
    a, b = (load_file(str(d / "learner.safetensors")) for d in (ref, out))
    assert set(a) == set(b) == {"ctx", "deep_text", "deep_vision", "epochs_seen"}
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (ref, out))
    assert ma["accuracy"] == mb["accuracy"] and ma["per_class_accuracy"] == mb["per_class_accuracy"]
    ha, hb = ([json.loads(x) for x in (d / "history.jsonl").read_text().splitlines()] for d in (ref, out))
    assert [(h["loss"], h["train_accuracy"]) for h in ha] == [(h["loss"], h["train_accuracy"]) for h in hb]


KILLABLE = r"""
import sys, time
import open_clip, torch
open_clip.add_model_config(sys.argv[1])
torch.set_num_threads(int(sys.argv[2]))
sys.path.insert(0, sys.argv[3])
import deep_learners
deep_learners.register()
from vlprompt.runs import state as TS
save = TS.save_train_state
def slow_save(*a, **k):  # a pause after each saved epoch, so that the parent can kill the run between epochs
    save(*a, **k)
    time.sleep(1.0)
TS.save_train_state = slow_save
from vlprompt.cli.main import main
sys.exit(main(sys.argv[4:]))
"""


@pytest.mark.slow
def test_a_sigkilled_prompted_run_resumes_to_the_same_result(deep, textured_folder, tmp_path, tiny_model_configs):
    import os
    import signal
    import time

    ref, out = tmp_path / "ref", tmp_path / "killed"
    assert main(_argv(textured_folder, ref, "--augment", "online")) == 0
    cmd = [sys.executable, "-c", KILLABLE, str(tiny_model_configs), str(torch.get_num_threads()), str(TESTS),
           *_argv(textured_folder, out, "--augment", "online")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    saved = 0
    while saved < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
        try:
            saved = json.loads((out / TS.TRAIN_STATE_JSON).read_text())["epoch"]
        except (OSError, ValueError):
            saved = 0
    assert proc.poll() is None, proc.stderr.read()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    saved = json.loads((out / TS.TRAIN_STATE_JSON).read_text())["epoch"]
    assert 1 <= saved < EPOCHS and not (out / "metrics.json").exists()
    assert main(_argv(textured_folder, out, "--augment", "online")) == 0  # the same command continues
    assert json.loads((out / "config.json").read_text())["resumes"][0]["after_epoch"] == saved
    a, b = (load_file(str(d / "learner.safetensors")) for d in (ref, out))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((ref / "metrics.json").read_text())["accuracy"] == json.loads(
        (out / "metrics.json").read_text())["accuracy"]


def test_prompted_features_are_batched_with_the_prompts_taken_once(deep, textured_folder, monkeypatch):
    """eval_batch_size images per forward of the prompted tower, the learner's deep prompts taken once per
    evaluation; the rows equal one image at a time through the backbone hook."""
    from vlprompt.data.load import load_dataset
    from vlprompt.engine.model import PromptModel
    from vlprompt.engine.prompted import prompted_image_features
    from vlprompt.prompts import create_prompt_learner

    torch.manual_seed(0)
    bb = create_backbone("vlp-tiny-vit", "random")
    records = list(load_dataset(f"folder:{textured_folder}", None).test)  # 12 images
    learner = create_prompt_learner(deep_learners.METHOD, bb, ["a", "b", "c"]).eval()
    model = PromptModel(bb, learner)
    batches, taken = [], []
    encode, deep_prompts = model.encode_images, learner.deep_prompts
    monkeypatch.setattr(model, "encode_images", lambda x, d: batches.append(x.shape[0]) or encode(x, d))
    monkeypatch.setattr(learner, "deep_prompts", lambda: taken.append(1) or deep_prompts())
    tf = build_transform(bb.preprocess, train=False)
    feats = prompted_image_features(model, records, tf, batch_size=5)
    assert batches == [5, 5, 2] and len(taken) == 1 and feats.shape == (12, 32)
    with torch.no_grad():
        one = torch.cat([F.normalize(bb.encode_image(tf(Image.open(r.path).convert("RGB"))[None],
                                                     vision_prompts=learner.deep_vision), dim=-1) for r in records])
    torch.testing.assert_close(feats, one, atol=1e-6, rtol=0)

