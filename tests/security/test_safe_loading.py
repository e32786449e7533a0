"""Safe loading, proven (issue 12 §4): every loader refuses a file whose pickle would run code, with vlprompt's own
error, and the code never runs.

Each hostile file is written the way an attacker would (``torch.save`` of an object whose ``__reduce__`` calls
``os.system``, which would create a marker file), and each test first proves that its payload is live: unpickling
the same bytes unsafely *does* create the marker. A loader that unpickled with ``weights_only=False`` (or fell back
to it) would therefore fail these tests, which a file written with ``pickle.dump`` (rejected by ``torch.load`` for
"Invalid magic number" whatever ``weights_only`` is) could not show.

Loaders covered: state dicts (``.pt``/``.pth``/``.bin`` through ``create_backbone``), TorchScript archives, Hugging
Face ``pytorch_model.bin``, and the safetensors readers (backbone checkpoints, learned prompts, micro-CLIP weights),
which parse no pickle at all. The Dassl few-shot unpickler has its own file (``test_dassl_unpickler.py``).
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
import zipfile

import pytest
import torch

from vlprompt.backbones import create_backbone
from vlprompt.errors import ArtifactError, BackboneError


class RunsShell:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


@pytest.fixture
def marker(tmp_path):
    """A file that exists only if a payload ran."""
    path = tmp_path / "payload-ran"
    yield path
    assert not path.exists(), "the payload ran"


def _assert_live(load, path, marker) -> None:
    """The payload in ``path`` is real: unpickling it unsafely creates the marker (removed again)."""
    assert not marker.exists()
    copy = path.parent / (path.name + ".live")  # own suffix: torch.load reads *.safetensors with safetensors
    shutil.copy(path, copy)
    load(copy)
    assert marker.exists(), "the test payload does not run when unpickled unsafely"
    marker.unlink()


def _state_dict():
    torch.manual_seed(0)
    import open_clip

    return open_clip.create_model("vlp-tiny-rn").state_dict()


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin"])
@pytest.mark.parametrize("where", ["wrapper", "tensor", "top"])
def test_state_dict_with_code_is_refused(tmp_path, marker, suffix, where):
    sd = _state_dict()
    evil = RunsShell(marker)
    obj = {"state_dict": sd, "epoch": 3, "optimizer": evil} if where == "wrapper" else (
        {**sd, "visual.conv1.weight": evil} if where == "tensor" else evil)
    path = tmp_path / f"ckpt{suffix}"
    torch.save(obj, path)
    with pytest.raises(BackboneError, match=r"could not be loaded safely with torch.load\(weights_only=True\)"):
        create_backbone("vlp-tiny-rn", str(path))
    assert not marker.exists()
    _assert_live(lambda p: torch.load(p, weights_only=False), path, marker)


def _script_archive(path) -> None:
    """A genuine TorchScript archive (torch.jit.save of a scripted module)."""

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)

        def forward(self, x):
            return self.lin(x)

    torch.jit.save(torch.jit.script(Tiny()), str(path))


def _evil_data_pkl(marker) -> bytes:
    """The ``data.pkl`` record of ``torch.save(RunsShell(marker))``: a pickle calling ``os.system``."""
    buf = io.BytesIO()
    torch.save(RunsShell(marker), buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
        return z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))


def test_torchscript_archive_with_hostile_data_pkl_is_refused(tmp_path, marker):
    """torch.jit.load resolves data.pkl's globals in TorchScript's own (C++) unpickler, which knows only TorchScript
    types: 'posix.system' is an unknown type, nothing runs."""
    good = tmp_path / "good.pt"
    _script_archive(good)
    path = tmp_path / "RN50.pt"
    evil = _evil_data_pkl(marker)
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            dst.writestr(info, evil if info.filename.endswith("/data.pkl") else src.read(info.filename))
    with pytest.raises(BackboneError, match="looks like a TorchScript archive but failed to load"):
        create_backbone("vlp-tiny-rn", str(path))
    assert not marker.exists()
    _assert_live(lambda p: pickle.loads(evil), path, marker)


def test_torch_save_zip_posing_as_torchscript_is_refused(tmp_path, marker):
    """A torch.save file with a ``code/`` entry is sent to torch.jit.load (not a real archive: refused); a loader
    that then fell back to torch.load(weights_only=False), as open_clip's OpenAI loader once did, would run it."""
    plain = tmp_path / "plain.pt"
    torch.save({"state_dict": _state_dict(), "x": RunsShell(marker)}, plain)
    path = tmp_path / "RN50.pt"
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        prefix = src.namelist()[0].split("/", 1)[0]
        for info in src.infolist():
            dst.writestr(info, src.read(info.filename))
        dst.writestr(f"{prefix}/code/__torch__.py", "")
    with pytest.raises(BackboneError, match="looks like a TorchScript archive but failed to load"):
        create_backbone("vlp-tiny-rn", str(path))
    assert not marker.exists()
    _assert_live(lambda p: torch.load(p, weights_only=False), path, marker)


def test_hf_pytorch_model_bin_with_code_is_refused(tmp_path, marker):
    """transformers reads pytorch_model.bin with torch.load(weights_only=True); vlprompt reports the refusal."""
    pytest.importorskip("transformers")
    import transformers

    text = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 1,
            "vocab_size": 49408, "max_position_embeddings": 77, "eos_token_id": 49407, "bos_token_id": 49406,
            "pad_token_id": 1}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 1,
              "image_size": 32, "patch_size": 16}
    model = transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    d = tmp_path / "hf-clip"
    model.save_pretrained(str(d))
    (d / "model.safetensors").unlink()
    torch.save(dict(model.state_dict()), d / "pytorch_model.bin")
    create_backbone(f"hf:{d}")  # the benign .bin loads: the refusal below is the payload's, not the format's
    torch.save({**model.state_dict(), "extra": RunsShell(marker)}, d / "pytorch_model.bin")
    with pytest.raises(BackboneError, match=r"torch.load\(weights_only=True\)"):
        create_backbone(f"hf:{d}")
    assert not marker.exists()
    _assert_live(lambda p: torch.load(p, weights_only=False), d / "pytorch_model.bin", marker)


def _pickle_file(path, marker) -> None:
    torch.save({"w": torch.zeros(2), "x": RunsShell(marker)}, path)


def test_safetensors_readers_parse_no_pickle(tmp_path, marker):
    """Backbone .safetensors, learned prompts and micro-CLIP weights are read with safetensors, which has no code
    path into pickle: a pickle under those names is an unreadable file, nothing runs."""
    from vlprompt.engine.checkpoint import _read_weights
    from vlprompt.microclip.model import load_compact_state

    path = tmp_path / "model.safetensors"
    _pickle_file(path, marker)
    with pytest.raises(BackboneError, match="is not a readable safetensors file"):
        create_backbone("vlp-tiny-vit", str(path))
    with pytest.raises(ArtifactError, match="could not be read"):
        _read_weights(path, torch.device("cpu"))
    with pytest.raises(Exception):  # noqa: B017 (safetensors' own error type; what matters is that nothing ran)
        load_compact_state(path)
    assert not marker.exists()
    _assert_live(lambda p: torch.load(p, weights_only=False), path, marker)
