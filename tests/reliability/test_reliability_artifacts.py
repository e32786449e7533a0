"""Safe loading: nothing is unpickled or executed, and every damaged or mismatched artifact is a clear error."""

from __future__ import annotations

import json
import os
import pickle
import re
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from vlprompt.api import PromptClassifier
from vlprompt.backbones import create_backbone
from vlprompt.engine.checkpoint import classnames_digest, load_learner, save_learner
from vlprompt.errors import ArtifactError, BackboneError
from vlprompt.prompts import create_prompt_learner

SRC = Path(__file__).resolve().parents[2] / "src" / "vlprompt"
CLASSES = ["cat", "dog", "bird"]


class _Evil:
    """Unpickling this creates the file ``target`` (a stand-in for arbitrary code execution)."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.parametrize("container", ["pickle", "torch.save", "fake-torchscript"])
def test_malicious_checkpoint_is_refused_and_not_executed(tmp_path, container):
    sentinel = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"state_dict": {"visual.proj": _Evil(sentinel)}}
    if container == "pickle":
        path.write_bytes(pickle.dumps(payload, protocol=2))
    elif container == "torch.save":
        torch.save(payload, path)
    else:  # a zip that claims to be TorchScript (has code/), with pickled objects in data.pkl and constants.pkl
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/code/__torch__.py", "")
            z.writestr("archive/data.pkl", pickle.dumps(payload, protocol=2))
            z.writestr("archive/constants.pkl", pickle.dumps((_Evil(sentinel),), protocol=2))
            z.writestr("archive/version", "3\n")
    assert not sentinel.exists()
    with pytest.warns(FutureWarning) if container == "fake-torchscript" else _nullcontext():
        with pytest.raises(BackboneError):
            create_backbone("vlp-tiny-rn", str(path), device="cpu")
    assert not sentinel.exists(), "the checkpoint's pickled code was executed"


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_damaged_safetensors_checkpoint_is_refused(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", 1 << 60) + b"{}")  # header length far beyond the file
    with pytest.raises(BackboneError, match="not a readable safetensors file"):
        create_backbone("vlp-tiny-rn", str(path), device="cpu")


def test_library_never_unpickles():
    """Artifacts are safetensors + JSON: no pickle, no torch.save, torch.load only with weights_only=True.

    The one module allowed to import ``pickle`` is the restricted unpickler of Dassl's few-shot files
    (``data/dassl_fewshot.py``), and there only through its ``find_class``-restricted ``Unpickler`` subclass: plain
    ``pickle.load``/``loads``/``Unpickler(...)`` calls are offences everywhere; a module may import ``pickle`` to catch
    ``pickle.UnpicklingError`` and nothing else.
    """
    offenders = []
    restricted = SRC / "data" / "dassl_fewshot.py"
    for f in SRC.rglob("*.py"):
        text = f.read_text()
        if f == restricted:
            assert re.search(r"class _RestrictedUnpickler\(pickle\.Unpickler\)", text)
            assert re.search(r"def find_class\(self", text)
        # importing pickle only to catch torch's UnpicklingError (hf_loading.py) unpickles nothing
        catch_only = set(re.findall(r"\bpickle\.(\w+)", text)) <= {"UnpicklingError"}
        imports = () if f == restricted else (r"^\s*from pickle",) if catch_only else (r"^\s*import pickle",
                                                                                       r"^\s*from pickle")
        for pattern in (*imports, r"pickle\.loads?\(", r"pickle\.Unpickler\(", r"torch\.save\(",
                        r"allow_pickle\s*=\s*True", r"import dill", r"joblib"):
            offenders += [f"{f.name}: {pattern}" for _ in re.finditer(pattern, text, re.M)]
        offenders += [f"{f.name}: torch.load without weights_only=True" for m in re.finditer(r"torch\.load\(([^)]*)\)",
                      text) if "weights_only=True" not in m.group(1)]
    assert offenders == []


@pytest.fixture(scope="module")
def backbone():
    return create_backbone("vlp-tiny-rn", "random", device="cpu")


def _saved(tmp_path, backbone, csc=False):
    learner = create_prompt_learner("coop", backbone, CLASSES, {"n_ctx": 4, "csc": csc})
    run = tmp_path / "run"
    save_learner(run, learner, backbone)
    return run, learner


def _edit_json(run, fn):
    meta = json.loads((run / "learner.json").read_text())
    out = fn(meta)
    (run / "learner.json").write_text(out if isinstance(out, str) else json.dumps(meta))


def _edit_weights(run, fn, keep_header=True):
    from safetensors import safe_open

    with safe_open(str(run / "learner.safetensors"), "pt") as f:
        header = f.metadata()
    state = load_file(str(run / "learner.safetensors"))
    fn(state)
    save_file(state, str(run / "learner.safetensors"), metadata=header if keep_header else None)


def _cut(path, n):
    path.write_bytes(path.read_bytes()[:n])


VIT = {}


def _vit_identity():
    if not VIT:
        VIT.update(create_backbone("vlp-tiny-vit", "random", device="cpu").identity())
    return VIT


TAMPERS = {
    "json truncated": (lambda r: _cut(r / "learner.json", 40), "not valid JSON"),
    "json not an object": (lambda r: _edit_json(r, lambda m: "[1, 2]"), "must hold a JSON object"),
    "json missing key": (lambda r: _edit_json(r, lambda m: m.pop("classnames")), "lacks the 'classnames'"),
    "classnames not strings": (lambda r: _edit_json(r, lambda m: m.update(classnames=[1, 2, 3])), "list of strings"),
    "classnames repeated": (lambda r: _edit_json(r, lambda m: m.update(classnames=["a", "a", "b"])), "twice"),
    "config not an object": (lambda r: _edit_json(r, lambda m: m.update(config=[4])), "'config' must be an object"),
    "backbone not an object": (lambda r: _edit_json(r, lambda m: m.update(backbone="RN50")), "'backbone' must be"),
    "unknown method": (lambda r: _edit_json(r, lambda m: m.update(method="cocoop2")), "not describe a valid learner"),
    "unknown config key": (lambda r: _edit_json(r, lambda m: m["config"].update(depth=3)), "not describe a valid"),
    "invalid config value": (lambda r: _edit_json(r, lambda m: m["config"].update(n_ctx=0, ctx_init=None)),
                             "not describe a valid"),
    "other n_ctx": (lambda r: _edit_json(r, lambda m: m["config"].update(n_ctx=8)), r"'ctx' is \(4, 64\).*\(8, 64\)"),
    "other class list": (lambda r: _edit_json(r, lambda m: m.update(classnames=["fox", "owl", "eel"])),
                         "another classnames_sha256"),
    "other backbone name": (lambda r: _edit_json(r, lambda m: m["backbone"].update(name="vlp-tiny-vit")),
                            "differing: fingerprint"),
    "other backbone identity": (lambda r: _edit_json(r, lambda m: m.update(backbone=_vit_identity())),
                                "another backbone_name and backbone_fingerprint"),
    "weights truncated": (lambda r: _cut(r / "learner.safetensors", 100), "truncated or damaged"),
    "weights empty": (lambda r: (r / "learner.safetensors").write_bytes(b""), "truncated or damaged"),
    "weights huge header": (lambda r: (r / "learner.safetensors").write_bytes(struct.pack("<Q", 1 << 62) + b"{}"),
                            "truncated or damaged"),
    "weights missing": (lambda r: (r / "learner.safetensors").unlink(), "not found"),
    "weights wrong dtype": (lambda r: _edit_weights(r, lambda s: s.update(ctx=s["ctx"].double())), "float64"),
    "weights wrong shape": (lambda r: _edit_weights(r, lambda s: s.update(ctx=s["ctx"][:3])), r"\(3, 64\)"),
    "weights missing key": (lambda r: _edit_weights(r, lambda s: s.update(other=s.pop("ctx"))), "holds \\['other'\\]"),
    "weights extra key": (lambda r: _edit_weights(r, lambda s: s.update(bias=torch.zeros(2))),
                          "holds \\['bias', 'ctx'\\]"),
    "weights NaN": (lambda r: _edit_weights(r, lambda s: s["ctx"].__setitem__((0, 0), float("nan"))), "NaN or Inf"),
}


@pytest.mark.parametrize("case", list(TAMPERS))
def test_tampered_prompt_is_a_clear_artifact_error(tmp_path, backbone, case):
    run, _ = _saved(tmp_path, backbone)
    tamper, message = TAMPERS[case]
    tamper(run)
    with pytest.raises(ArtifactError, match=message):
        PromptClassifier.load(run, device="cpu")


def test_csc_context_for_another_class_count(tmp_path, backbone):
    run, _ = _saved(tmp_path, backbone, csc=True)
    _edit_weights(run, lambda s: None, keep_header=False)  # a file from before the header binding: shapes still checked
    _edit_json(run, lambda m: m.update(classnames=[*CLASSES, "fox"]))
    with pytest.raises(ArtifactError, match="class-specific context for 3 classes, but learner.json lists 4"):
        load_learner(run, backbone)


def test_untampered_prompt_round_trips_and_binding_is_recorded(tmp_path, backbone):
    from safetensors import safe_open

    run, learner = _saved(tmp_path, backbone)
    with safe_open(str(run / "learner.safetensors"), "pt") as f:
        assert f.metadata()["classnames_sha256"] == classnames_digest(CLASSES)
    loaded = load_learner(run, backbone)
    assert torch.equal(loaded.ctx, learner.ctx) and loaded.classnames == CLASSES
    assert sorted(os.listdir(run)) == ["learner.json", "learner.safetensors"]


def test_predict_cli_reports_a_damaged_run_in_one_line(tmp_path, backbone, capsys):
    from vlprompt.cli.main import main

    run, _ = _saved(tmp_path, backbone)
    (run / "learner.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    img = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(img)
    assert main(["predict", "--run", str(run), str(img), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "learner.safetensors" in err and "Traceback" not in err


def test_damaged_feature_cache_entry_is_rebuilt_not_trusted(tmp_path, caplog):
    from vlprompt.features.cache import FeatureCache

    cache = FeatureCache(tmp_path)
    key = {"split": "test", "n": 1}
    feats = torch.randn(5, 4)
    cache.put(key, feats)
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".safetensors"]
    data = next(tmp_path.glob("*.safetensors"))
    data.write_bytes(data.read_bytes()[:-7])  # truncated
    assert cache.get(key) is None and "invalid" in caplog.text
    assert torch.equal(cache.get_or_compute(key, lambda: feats), feats) and torch.equal(cache.get(key), feats)


def test_atomic_writes_get_the_umask_permissions_not_private_ones(tmp_path):
    """Run-folder files are readable as a plain ``open()`` would make them (mkstemp alone gives 0o600, so a run
    folder could not be shared with a colleague or a serving account)."""
    import os
    import stat

    from vlprompt._io import atomic_save_safetensors, atomic_write_json

    old = os.umask(0o022)
    os.umask(old)
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    atomic_save_safetensors(tmp_path / "b.safetensors", {"t": torch.zeros(2)})
    (tmp_path / "plain.txt").write_text("x")
    want = stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    assert want == 0o666 & ~old
    for name in ("a.json", "b.safetensors"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == want, name
