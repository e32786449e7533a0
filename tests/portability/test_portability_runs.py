"""A prompt trained anywhere loads anywhere the same weights are loaded (issue 12 §2), through the CLI in real
processes: trained with 1 thread, used with 2; learned in fp16, used in fp32; written by vlprompt 0.1.0."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from portability_child import run
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from vlprompt.api import PromptClassifier
from vlprompt.backbones import create_backbone
from vlprompt.backbones.base import legacy_fingerprint_v0
from vlprompt.cli.main import main
from vlprompt.engine.checkpoint import load_learner, migrate_learner
from vlprompt.errors import ArtifactError

TRAIN = ["--shots", "4", "--epochs", "2", "--n-ctx", "4", "--device", "cpu", "--cache-dir", ""]


def _tiny_checkpoint(path, seed=3):
    """A seeded random vlp-tiny-rn state dict as .safetensors (a local checkpoint file, as users pass one)."""
    import open_clip

    torch.manual_seed(seed)
    save_file({k: v.contiguous() for k, v in open_clip.create_model("vlp-tiny-rn").state_dict().items()}, str(path))
    return path


def _cli(configs, threads, *argv):
    proc = run(str(configs), threads, "cli", *argv)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize("kind", ["microclip", "local-file"])
def test_trained_with_1_thread_used_with_2(tiny_model_configs, image_folder, tmp_path, kind):
    backbone = ["--backbone", "microclip"]
    if kind == "local-file":
        backbone = ["--backbone", "vlp-tiny-rn", "--pretrained", str(_tiny_checkpoint(tmp_path / "tiny.safetensors"))]
    out = tmp_path / "run"
    _cli(tiny_model_configs, 1, "train", "--dataset", f"folder:{image_folder}", "--out", str(out), *backbone, *TRAIN)
    trained = json.loads((out / "metrics.json").read_text())["accuracy"]
    pred = _cli(tiny_model_configs, 2, "predict", "--run", str(out), str(image_folder / "test" / "red_fox"), "--json",
                "--device", "cpu")
    lines = [json.loads(x) for x in pred.stdout.splitlines() if x.startswith("{")]
    assert len(lines) == 4 and all(x["top"][0]["label"] in ("blue_jay", "green_frog", "red_fox") for x in lines)
    _cli(tiny_model_configs, 2, "eval", "--run", str(out), "--dataset", f"folder:{image_folder}", "--device", "cpu",
         "--cache-dir", "")
    assert json.loads((out / "eval_data" / "metrics.json").read_text())["accuracy"] == pytest.approx(trained)


def test_prompt_learned_in_fp16_is_used_in_fp32(image_folder, tmp_path, capsys):
    out = tmp_path / "fp16"
    assert main(["train", "--dataset", f"folder:{image_folder}", "--out", str(out), "--backbone", "microclip",
                 "--precision", "fp16", *TRAIN]) == 0
    meta = json.loads((out / "learner.json").read_text())
    saved = load_file(str(out / "learner.safetensors"))["ctx"]
    assert meta["dtypes"] == {"ctx": "float16"} and saved.dtype == torch.float16  # recorded as learned
    assert main(["eval", "--run", str(out), "--dataset", f"folder:{image_folder}", "--device", "cpu",
                 "--cache-dir", ""]) == 0
    capsys.readouterr()
    assert main(["predict", "--run", str(out), str(image_folder / "test" / "red_fox"), "--json", "--device",
                 "cpu"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 4
    learner = load_learner(out, create_backbone("microclip"))  # fp32 learner: exact upcast of the fp16 values
    assert learner.ctx.dtype == torch.float32 and torch.equal(learner.ctx.detach(), saved.float())
    back = load_learner(out, create_backbone("microclip", precision="fp16"))  # and back into fp16, unchanged
    assert back.ctx.dtype == torch.float16 and torch.equal(back.ctx.detach(), saved)


def _edit(run_dir, meta_fn=None, state_fn=None, header_fn=None):
    meta = json.loads((run_dir / "learner.json").read_text())
    if meta_fn:
        meta_fn(meta)
    (run_dir / "learner.json").write_text(json.dumps(meta))
    path = str(run_dir / "learner.safetensors")
    with safe_open(path, "pt") as f:
        header = dict(f.metadata())
    state = load_file(path)
    if state_fn:
        state_fn(state)
    if header_fn:
        header_fn(header)
    save_file(state, path, metadata=header)


@pytest.fixture(scope="module")
def microclip_run(tmp_path_factory, tiny_model_configs):
    """One fp32 micro-CLIP run (copied per test)."""
    import numpy as np

    from conftest import make_image

    root = tmp_path_factory.mktemp("mc")
    for split, n in (("train", 4), ("test", 2)):
        for i, (cls, col) in enumerate({"red_fox": (200, 40, 40), "blue_jay": (40, 60, 200)}.items()):
            (root / "data" / split / cls).mkdir(parents=True)
            for j in range(n):
                make_image(root / "data" / split / cls / f"{j}.png", tuple(int(c) for c in np.add(col, 7 * j + i)))
    assert main(["train", "--dataset", f"folder:{root / 'data'}", "--out", str(root / "run"), "--backbone",
                 "microclip", *TRAIN]) == 0
    return root / "run"


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_damaged_dtypes_are_still_refused(microclip_run, tmp_path):
    bb = create_backbone("microclip")
    cases = {
        "integer": (lambda m: None, lambda s: s.update(ctx=s["ctx"].to(torch.int32)), "torch.int32"),
        "float64": (lambda m: m.pop("dtypes"), lambda s: s.update(ctx=s["ctx"].double()), "torch.float64"),
        "not as recorded": (None, lambda s: s.update(ctx=s["ctx"].half()), "records it was learned in"),
    }
    for i, (meta_fn, state_fn, msg) in enumerate(cases.values()):
        r = _copy(microclip_run, tmp_path / str(i))
        _edit(r, meta_fn, state_fn)
        with pytest.raises(ArtifactError, match=re.escape(msg)):
            load_learner(r, bb)
    r = _copy(microclip_run, tmp_path / "big")
    _edit(r, state_fn=lambda s: s["ctx"].__setitem__((0, 0), 1e6))  # fine in fp32, beyond fp16's range
    load_learner(r, bb)
    with pytest.raises(ArtifactError, match="beyond the range of torch.float16.*--precision"):
        load_learner(r, create_backbone("microclip", precision="fp16"))


def test_one_ulp_other_weights_are_refused(image_folder, tmp_path):
    a = _tiny_checkpoint(tmp_path / "a.safetensors")
    state = load_file(str(a))
    w = state["token_embedding.weight"]
    w[30000, 7] = torch.nextafter(w[30000, 7], torch.tensor(1.0))
    b = tmp_path / "b.safetensors"
    save_file(state, str(b))
    out = tmp_path / "run"
    assert main(["train", "--dataset", f"folder:{image_folder}", "--out", str(out), "--backbone", "vlp-tiny-rn",
                 "--pretrained", str(a), *TRAIN]) == 0
    load_learner(out, create_backbone("vlp-tiny-rn", str(a)))
    with pytest.raises(ArtifactError, match="differing: fingerprint"):
        load_learner(out, create_backbone("vlp-tiny-rn", str(b)))


def _as_0_1_0(run_dir, legacy):
    """Rewrite a run folder as vlprompt 0.1.0 wrote it: old fingerprint (json and header), no dtypes."""
    def meta_fn(m):
        m.pop("dtypes")
        m["vlprompt_version"] = "0.1.0"
        m["backbone"]["fingerprint"] = legacy

    _edit(run_dir, meta_fn, header_fn=lambda h: h.update(backbone_fingerprint=legacy))
    return run_dir


def test_0_1_0_run_folder_is_verified_in_another_thread_count(tiny_model_configs, microclip_run, tmp_path):
    model = create_backbone("microclip").model
    legacy = legacy_fingerprint_v0(model, threads=1)  # what a 1-thread 0.1.0 process (the demo's) recorded
    assert legacy != legacy_fingerprint_v0(model, threads=2)  # a 2-thread process cannot simply recompute it
    r = _as_0_1_0(_copy(microclip_run, tmp_path / "old"), legacy)
    proc = _cli(tiny_model_configs, 2, "-v", "predict", "--run", str(r), str(microclip_run.parent / "data" / "test"),
                "--device", "cpu")
    assert f"verified against its vlprompt 0.1.0 fingerprint {legacy} (it was computed with 1 torch" in proc.stderr
    new = migrate_learner(r)  # verified, then re-bound to the exact fingerprint
    meta = json.loads((r / "learner.json").read_text())
    assert meta["backbone"]["fingerprint"] == new == create_backbone("microclip").fingerprint
    assert meta["migrated_from"]["fingerprint"] == legacy and meta["migrated_from"]["verified"] is True
    assert meta["dtypes"] == {"ctx": "float32"}
    with safe_open(str(r / "learner.safetensors"), "pt") as f:
        assert f.metadata()["backbone_fingerprint"] == new
    load_learner(r, create_backbone("microclip"))


def test_unverifiable_0_1_0_folder_says_how_to_migrate(microclip_run, tmp_path):
    model = create_backbone("microclip").model
    with torch.no_grad():
        model.logit_scale.add_(1.0)  # other weights
    r = _copy(microclip_run, tmp_path / "old")
    _as_0_1_0(r, legacy_fingerprint_v0(model, threads=1))
    with pytest.raises(ArtifactError, match="0.1.0 with the old weights fingerprint") as e:
        load_learner(r, create_backbone("microclip"))
    msg = str(e.value)
    assert "retrain" in msg and "thread counts 1-" in msg
    command = re.search(r"`vlprompt (migrate .*?)`", msg).group(1)
    assert command == f"migrate --run {r} --force"
    # the command the message gives, as a user runs it (a fresh process)
    subprocess.run([sys.executable, "-m", "vlprompt", *command.split()], check=True, timeout=300)
    meta = json.loads((r / "learner.json").read_text())
    assert meta["migrated_from"]["verified"] is False and meta["backbone"]["fingerprint"].startswith("w2:")
    load_learner(r, create_backbone("microclip"))


V010 = Path(__file__).parent / "v0_1_0"


@pytest.mark.parametrize(("name", "threads", "dtype"), [("coop_microclip_fp32_1thread", 1, torch.float32),
                                                        ("coop_microclip_fp16_2threads", 2, torch.float16)])
def test_run_folders_written_by_0_1_0_itself_load(tmp_path, caplog, name, threads, dtype):
    """learner.json/.safetensors written by vlprompt 0.1.0 (commit 0c29069): `vlprompt train --backbone microclip
    --dataset folder:… --shots 4 --epochs 2` with OMP_NUM_THREADS=1, and with OMP_NUM_THREADS=2 --precision fp16
    (a folder 0.1.0 itself could not load: it refused the fp16 context as damaged). Its micro-CLIP was then the
    default, v1 (recorded as pretrained=None): it loads on v1, and the new default (v2) is refused naming the fix."""
    r = _copy(V010 / name, tmp_path / "run")
    meta = json.loads((r / "learner.json").read_text())
    assert meta["vlprompt_version"] == "0.1.0" and "dtypes" not in meta and meta["backbone"]["pretrained"] is None
    with caplog.at_level(logging.INFO, logger="vlprompt.engine.checkpoint"):
        learner = load_learner(r, create_backbone("microclip", "v1"))
    assert f"0.1.0 fingerprint {meta['backbone']['fingerprint']} (it was computed with {threads} torch" in caplog.text
    saved = load_file(str(r / "learner.safetensors"))["ctx"]
    assert saved.dtype == dtype and saved.shape == (16, 128)
    assert learner.ctx.dtype == torch.float32 and torch.equal(learner.ctx.detach(), saved.float())
    half = load_learner(r, create_backbone("microclip", "v1", precision="fp16"))  # verified on the weights as loaded
    assert half.ctx.dtype == torch.float16 and torch.equal(half.ctx.detach(), saved.half())
    with pytest.raises(ArtifactError, match=r"micro-CLIP v1, the default before micro-CLIP v2.*--pretrained v1"):
        load_learner(r, create_backbone("microclip"))  # the new default, v2: refused before any 0.1.0 verification
    clf = PromptClassifier.load(r)  # no backbone given: rebuilt from learner.json, pretrained=None → v1
    assert clf.backbone.pretrained == "v1" and torch.equal(clf.model.learner.ctx.detach(), saved.float())
