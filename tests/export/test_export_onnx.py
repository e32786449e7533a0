"""`vlprompt export --format onnx`: onnxruntime — a runtime vlprompt did not write — gives the probabilities
`PromptClassifier.predict` gives (max |diff| ≤ 1e-4) on real PNG/JPEG files, for batches of 1 and 3 (the batch
axis is dynamic), for CoOp on a ResNet tower (micro-CLIP) and a ViT tower, and for KgCoOp; CoCoOp, zero-shot and
linear-probe run folders are refused with the reason; the sidecar JSON describes the preprocessing well enough to
reproduce `preprocess` without vlprompt or torchvision (PIL + numpy only)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import vlprompt.export as E
from vlprompt import PromptClassifier
from vlprompt.cli.main import main

ort = pytest.importorskip("onnxruntime")
TOL = 1e-4
TINY = ["--shots", "2", "--epochs", "1", "--n-ctx", "2", "--device", "cpu", "--cache-dir", ""]
BACKBONES = {"microclip": ["--backbone", "microclip"],
             "vlp-tiny-vit": ["--backbone", "vlp-tiny-vit", "--pretrained", "random"]}


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_model_configs):
    """A 3-class image folder (train/test) and, apart, query images: PNG and JPEG files of several sizes and
    aspect ratios (so the resize and the centre crop matter), one of them greyscale."""
    root = tmp_path_factory.mktemp("export")
    rng = np.random.default_rng(0)
    colors = {"red_fox": (200, 40, 40), "green_frog": (40, 180, 60), "blue_jay": (40, 60, 200)}
    for split, n in (("train", 2), ("test", 1)):
        for cls, col in colors.items():
            (root / "data" / split / cls).mkdir(parents=True)
            for i in range(n):
                arr = np.clip(np.add(col, rng.integers(-40, 40, (28, 28, 3))), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(root / "data" / split / cls / f"{i}.png")
    queries = []
    for i, (w, h, ext) in enumerate([(40, 30, "png"), (30, 50, "jpg"), (64, 64, "png"), (97, 71, "jpg")]):
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        arr[:, : w // 2] = list(colors.values())[i % 3]  # half flat colour, half noise: varied probabilities
        img = Image.fromarray(arr)
        path = root / f"query{i}.{ext}"
        (img.convert("L") if i == 3 else img).save(path, **({"quality": 90} if ext == "jpg" else {}))
        queries.append(path)
    return root, queries


_RUNS: dict = {}


def _run(data, method: str, backbone: str):
    """Train (once per module) a tiny run of ``method`` on ``backbone``; returns its folder."""
    root, _ = data
    key = (method, backbone)
    if key not in _RUNS or not _RUNS[key].exists():
        out = root / f"run-{method}-{backbone}"
        extra = ["--batch-size", "8"] if method != "coop" else []  # a few steps, not one per image
        assert main(["train", "--dataset", f"folder:{root / 'data'}", "--method", method, "--out", str(out),
                     *BACKBONES[backbone], *TINY, *extra]) == 0
        _RUNS[key] = out
    return _RUNS[key]


def _ort_probs(path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (probs,) = session.run(["probs"], {"images": x})
    return probs


@pytest.mark.parametrize(("method", "backbone"), [("coop", "microclip"), ("coop", "vlp-tiny-vit"),
                                                  ("kgcoop", "microclip")])
def test_onnxruntime_equals_predict_on_image_files(data, tmp_path, capsys, method, backbone):
    _, queries = data
    run = _run(data, method, backbone)
    out = tmp_path / "deploy" / "model.onnx"  # the folder does not exist yet: export creates it
    capsys.readouterr()
    assert main(["export", "--run", str(run), "--format", "onnx", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "dynamo exporter" in printed and "checked with onnxruntime" in printed
    meta = json.loads((tmp_path / "deploy" / "model.onnx.json").read_text())

    clf = PromptClassifier.load(run)
    learner = json.loads((run / "learner.json").read_text())
    size = clf.backbone.preprocess.image_size
    assert size == {"microclip": 64, "vlp-tiny-vit": 32}[backbone]
    assert meta["classnames"] == learner["classnames"] == clf.classnames == ["blue_jay", "green_frog", "red_fox"]
    assert meta["method"] == method and meta["backbone"] == learner["backbone"]
    assert meta["input"] == {"name": "images", "shape": ["batch", 3, size, size], "dtype": "float32",
                             "layout": meta["input"]["layout"]}
    assert meta["output"]["name"] == "probs" and meta["output"]["shape"] == ["batch", 3]
    pre = meta["preprocessing"]
    assert (pre["image_size"], pre["interpolation"], pre["resize_mode"], pre["crop"]) == (size, "bicubic",
                                                                                            "shortest", "center")
    assert pre["mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])  # OpenAI CLIP's, as open_clip's
    assert pre["std"] == pytest.approx([0.26862954, 0.26130258, 0.27577711])
    assert meta["exporter"]["name"] == "dynamo" and isinstance(meta["exporter"]["opset"], int)
    assert meta["check"]["max_abs_diff"] <= TOL and meta["check"]["batch_sizes"] == [1, 3]

    import hashlib

    import onnx

    assert meta["model_sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    graph = onnx.load(str(out)).graph
    assert [i.name for i in graph.input] == ["images"] and [o.name for o in graph.output] == ["probs"]
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"  # symbolic: any batch size
    weights = [init.name for init in graph.initializer if init.name.startswith("backbone.")]
    assert weights and all(w.startswith("backbone.model.visual.") for w in weights)  # the image tower only

    x = clf.preprocess(queries)  # (4, 3, S, S)
    assert x.dtype == torch.float32 and x.shape == (4, 3, size, size)
    want = clf.predict(queries)
    assert want.probs.max() - want.probs.min() > 0.02  # not a uniform output, which would match trivially
    for batch in (queries[:1], queries[1:4]):
        got = _ort_probs(out, clf.preprocess(batch).numpy())
        ref = clf.predict(batch).probs.numpy()
        assert got.shape == ref.shape == (len(batch), 3)
        assert np.abs(got - ref).max() <= TOL
        assert [meta["classnames"][i] for i in got.argmax(1)] == clf.predict(batch).labels


def test_preprocess_is_predicts_input_and_the_sidecar_reproduces_it(data, tmp_path):
    """predict(paths) == predict(preprocess(paths)) exactly; and PIL + numpy following the sidecar's numbers give
    preprocess's tensor (what a deployment without vlprompt or torchvision must do)."""
    _, queries = data
    run = _run(data, "coop", "vlp-tiny-vit")
    clf = PromptClassifier.load(run)
    x = clf.preprocess(queries)
    assert torch.equal(clf.predict(queries).probs, clf.predict(x).probs)
    assert torch.equal(clf.preprocess(queries[0]), x[:1])  # one path is one image, not a sequence of characters

    meta = E.export_onnx(clf, tmp_path / "m.onnx", check=False)
    assert meta["check"] is None
    pre = meta["preprocessing"]
    s = pre["image_size"]
    mine = []
    for q in queries:
        img = Image.open(q).convert("RGB")
        w, h = img.size
        short, long = min(w, h), max(w, h)
        new_long = int(s * long / short)
        img = img.resize((s, new_long) if w <= h else (new_long, s), Image.Resampling.BICUBIC)
        w, h = img.size
        top, left = int(round((h - s) / 2)), int(round((w - s) / 2))
        arr = np.asarray(img.crop((left, top, left + s, top + s)), dtype=np.float32) / 255.0  # (S, S, 3)
        arr = (arr - np.array(pre["mean"], np.float32)) / np.array(pre["std"], np.float32)
        mine.append(arr.transpose(2, 0, 1))
    assert np.abs(np.stack(mine) - x.numpy()).max() < 1e-5
    assert np.abs(_ort_probs(tmp_path / "m.onnx", np.stack(mine)) - clf.predict(queries).probs.numpy()).max() <= TOL


def test_cocoop_is_refused_with_the_reason(data, tmp_path, capsys):
    run = _run(data, "cocoop", "microclip")
    capsys.readouterr()
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert "cocoop prompt cannot be exported as a fixed classifier" in err and "depend on each image" in err
    assert list(tmp_path.iterdir()) == []


def test_zeroshot_and_linear_probe_runs_are_refused_with_the_reason(data, tmp_path, capsys):
    root, _ = data
    common = ["--dataset", f"folder:{root / 'data'}", *BACKBONES["microclip"], "--device", "cpu", "--cache-dir", ""]
    assert main(["zeroshot", *common, "--out", str(tmp_path / "zs")]) == 0
    assert main(["linear-probe", *common, "--shots", "2", "--out", str(tmp_path / "lp")]) == 0
    capsys.readouterr()
    for run, says in (("zs", "is a zero-shot run"), ("lp", "is a linear-probe run")):
        assert main(["export", "--run", str(tmp_path / run), "--out", str(tmp_path / f"{run}.onnx")]) == 2
        err = capsys.readouterr().err
        assert f"'{tmp_path / run}' {says}" in err and "PromptClassifier" in err and "vlprompt train" in err
        assert not (tmp_path / f"{run}.onnx").exists()


def test_torchscript_fallback_when_the_dynamo_exporter_fails(data, tmp_path, monkeypatch):
    from vlprompt.backbones import microclip as mc
    from vlprompt.microclip import world2
    from vlprompt.microclip.pretrain import vocabulary_token_ids

    root, queries = data
    # a micro-CLIP v2 file (random weights, the real compact format): its ViT tower takes nn.MultiheadAttention's
    # inference fast path, which has no TorchScript ONNX symbol
    weights = tmp_path / "microclip-v2-random.safetensors"
    torch.manual_seed(0)
    mc.save_compact(weights, mc.create_microclip_model(mc.MICROCLIP_V2_CONFIG), vocabulary_token_ids(world2), 0,
                    config=mc.MICROCLIP_V2_CONFIG)  # fmt: skip
    assert main(["train", "--dataset", f"folder:{root / 'data'}", "--method", "coop", "--out", str(tmp_path / "run"),
                 "--backbone", "microclip", "--pretrained", str(weights), *TINY]) == 0  # fmt: skip
    clf = PromptClassifier.load(tmp_path / "run")
    assert type(clf.backbone.model.visual).__name__ == "VisionTransformer"
    real = torch.onnx.export

    def dynamo_breaks(*args, **kwargs):
        if kwargs.get("dynamo", True):
            raise RuntimeError("dynamo cannot trace this")
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", dynamo_breaks)
    meta = E.export_onnx(clf, tmp_path / "m.onnx")
    assert meta["exporter"]["name"] == "torchscript" and meta["exporter"]["opset"] == E.TORCHSCRIPT_OPSET
    assert json.loads((tmp_path / "m.onnx.json").read_text())["exporter"]["name"] == "torchscript"
    got = _ort_probs(tmp_path / "m.onnx", clf.preprocess(queries[1:]).numpy())
    assert np.abs(got - clf.predict(queries[1:]).probs.numpy()).max() <= TOL
    with pytest.raises(E.ArtifactError, match="dynamo ONNX exporter failed: RuntimeError: dynamo cannot trace"):
        E.export_onnx(clf, tmp_path / "m2.onnx", exporter="dynamo")


def test_a_failed_check_writes_nothing(data, tmp_path, monkeypatch):
    clf = PromptClassifier.load(_run(data, "coop", "microclip"))
    monkeypatch.setattr(E, "CHECK_TOLERANCE", -1.0)  # no graph can pass
    with pytest.raises(E.ArtifactError, match="differ from vlprompt's by up to .*nothing was written"):
        E.export_onnx(clf, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []  # neither the graph, its sidecar nor the temporary folder


def test_bad_input_is_one_readable_line(data, tmp_path, monkeypatch, capsys):
    run = _run(data, "coop", "microclip")
    (tmp_path / "empty").mkdir()
    (tmp_path / "a_file").write_text("x")

    def line(argv):
        capsys.readouterr()
        assert main(["export", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert "Traceback" not in err and len(err.splitlines()) == 1, err
        return err

    assert "not a finished vlprompt training run" in line(["--run", str(tmp_path / "empty"), "--out",
                                                           str(tmp_path / "m.onnx")])
    err = line(["--run", str(run), "--out", str(tmp_path / "a_file" / "m.onnx")])
    assert f"--out '{tmp_path / 'a_file' / 'm.onnx'}': cannot create its folder" in err and "is a file" in err
    err = line(["--run", str(tmp_path / "empty"), "--out", str(tmp_path / "new" / "m.onnx")])
    assert "not a finished vlprompt training run" in err and not (tmp_path / "new").exists()  # nothing created
    assert "is a folder; give the path of the file" in line(["--run", str(run), "--out", str(tmp_path / "empty")])
    err = line(["--run", str(run), "--out", "m", "--format", "tflite"])
    assert "argument --format: invalid choice: 'tflite' (choose from" in err and "onnx" in err
    assert "--opset must be ≥ 7, got 0" in line(["--run", str(run), "--out", "m", "--opset", "0"])

    import builtins

    real_import = builtins.__import__

    def no_onnxscript(name, *args, **kwargs):
        if name == "onnxscript":
            raise ImportError("No module named 'onnxscript'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnxscript)
    err = line(["--run", str(run), "--out", str(tmp_path / "m.onnx")])
    assert "needs the optional package 'onnxscript'" in err and "pip install 'vlprompt[onnx]'" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "empty"]  # nothing written on any failure


def test_cli_constants_agree_with_the_library():
    import vlprompt.cli.export as C

    assert (C.FORMATS, C.CHECK_TOLERANCE, C.ONNX_INSTALL_HINT) == (E.FORMATS, E.CHECK_TOLERANCE,
                                                                    E.ONNX_INSTALL_HINT)


def test_transformers_backbone_exports_with_its_own_preprocessing(data, tmp_path):
    """A transformers CLIPModel (the other backbone family): its preprocessor_config's mean/std/size (not CLIP's)
    are what preprocess applies and what the sidecar records, and onnxruntime still equals predict."""
    transformers = pytest.importorskip("transformers")
    root, queries = data
    text = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2, "num_hidden_layers": 2,
            "vocab_size": 49408, "max_position_embeddings": 77, "eos_token_id": 49407, "bos_token_id": 49406,
            "pad_token_id": 1}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 2,
              "image_size": 48, "patch_size": 16}
    torch.manual_seed(0)
    model = transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    model.save_pretrained(str(tmp_path / "hf"))
    (tmp_path / "hf" / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.5, 0.4, 0.3], "image_std": [0.25, 0.2, 0.3], "crop_size": {"height": 48, "width": 48},
         "size": {"shortest_edge": 48}, "resample": 3}))  # PIL 3 = bicubic
    run = tmp_path / "run"
    assert main(["train", "--dataset", f"folder:{root / 'data'}", "--backbone", f"hf:{tmp_path / 'hf'}",
                 "--out", str(run), *TINY]) == 0
    clf = PromptClassifier.load(run)
    meta = E.export_onnx(clf, tmp_path / "hf.onnx", source=run)
    pre = meta["preprocessing"]
    assert (pre["image_size"], pre["mean"], pre["std"], pre["interpolation"]) == (48, [0.5, 0.4, 0.3],
                                                                                 [0.25, 0.2, 0.3], "bicubic")
    assert meta["input"]["shape"] == ["batch", 3, 48, 48] and meta["backbone"]["name"] == f"hf:{tmp_path / 'hf'}"
    assert meta["exporter"]["name"] == "dynamo" and meta["check"]["max_abs_diff"] <= TOL
    import onnx

    names = [init.name for init in onnx.load(str(tmp_path / "hf.onnx")).graph.initializer]
    assert any("vision_model" in n for n in names) and not any("text_model" in n for n in names)
    for batch in (queries[:1], queries[1:4]):
        got = _ort_probs(tmp_path / "hf.onnx", clf.preprocess(batch).numpy())
        assert np.abs(got - clf.predict(batch).probs.numpy()).max() <= TOL


def test_a_classifier_off_the_cpu_or_not_fp32_is_refused(data, tmp_path):
    from vlprompt.backbones import create_backbone

    run = _run(data, "coop", "microclip")
    fp16 = PromptClassifier.load(run, backbone=create_backbone("microclip", precision="fp16"))
    with pytest.raises(E.ConfigError, match="traces the model on the CPU in fp32; this classifier is on cpu in "
                                            "float16"):
        E.export_onnx(fp16, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_weights_saved_as_external_data_move_with_the_graph(data, tmp_path, monkeypatch):
    """Graphs over 2 GB keep their weights in a file beside them (protobuf's limit); forced here on a tiny one:
    both files land beside each other under their final names, and onnxruntime loads them from there."""
    _, queries = data
    clf = PromptClassifier.load(_run(data, "coop", "microclip"))
    real_save = torch.onnx.ONNXProgram.save
    monkeypatch.setattr(torch.onnx.ONNXProgram, "save",
                        lambda self, dest, **kw: real_save(self, dest, **{**kw, "external_data": True}))
    E.export_onnx(clf, tmp_path / "m.onnx")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[0] == "m.onnx" and names[-1] == "m.onnx.json" and len(names) == 3  # + the weights file
    assert (tmp_path / names[1]).stat().st_size > (tmp_path / "m.onnx").stat().st_size
    got = _ort_probs(tmp_path / "m.onnx", clf.preprocess(queries[:3]).numpy())
    assert np.abs(got - clf.predict(queries[:3]).probs.numpy()).max() <= TOL
