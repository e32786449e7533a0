"""Write weights exactly where open_clip looks for a tag's files, for offline tests (no download, no real weights).

- Hugging Face hub cache (what open_clip ≥ 2.x reads first when a tag has ``hf_hub``; ``open_clip/pretrained.py``
  ``download_pretrained_from_hf``): ``$HF_HUB_CACHE/models--ORG--NAME/{blobs/<sha256>, snapshots/<rev>/<file> →
  ../../blobs/<sha256>, refs/main = <rev>}``, the layout ``huggingface_hub`` itself writes and reads offline.
- open_clip's URL cache (``download_pretrained_from_url``): ``~/.cache/clip/<basename of the URL>``. open_clip
  checks it against the SHA-256 in the URL for ``openaipublic`` (full hash in the path) and ``mlfoundations``
  (8-hex-digit suffix) URLs, so only a file with that hash is accepted there: a stand-in for OpenAI's weights
  cannot be placed in that cache. With ``huggingface_hub`` installed (an open_clip dependency) every built-in tag
  that has an ``hf_hub`` entry is read from the hub cache and the URL is never consulted.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

REVISION = "0123456789abcdef0123456789abcdef01234567"


def hub_file(cache: Path, repo_id: str, filename: str) -> Path:
    """The snapshot path of ``filename`` in ``repo_id`` (parents created, ``refs/main`` written)."""
    folder = Path(cache) / f"models--{repo_id.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(REVISION)
    snap = folder / "snapshots" / REVISION / filename
    snap.parent.mkdir(parents=True, exist_ok=True)
    return snap


def put_in_hub_cache(cache: Path, repo_id: str, filename: str, data: bytes) -> Path:
    """Store ``data`` as huggingface_hub does (content-addressed blob, snapshot symlink) and return the snapshot path."""
    snap = hub_file(cache, repo_id, filename)
    blobs = snap.parents[2] / "blobs"
    blobs.mkdir(exist_ok=True)
    blob = blobs / hashlib.sha256(data).hexdigest()
    blob.write_bytes(data)
    if snap.exists() or snap.is_symlink():
        snap.unlink()
    os.symlink(os.path.relpath(blob, snap.parent), snap)
    return snap


def state_dict_bytes(state: dict[str, torch.Tensor], filename: str, tmp: Path) -> bytes:
    """``state`` serialised as ``filename``'s format: safetensors for ``.safetensors``, else ``torch.save``."""
    path = Path(tmp) / ("weights" + Path(filename).suffix)
    if filename.endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    data = path.read_bytes()
    path.unlink()
    return data


def offline_hub(monkeypatch, cache: Path) -> None:
    """Point this process *and* its subprocesses at ``cache``, offline.

    ``huggingface_hub`` reads ``HF_HUB_CACHE``/``HF_HUB_OFFLINE`` into ``huggingface_hub.constants`` when first
    imported, so the environment alone only reaches new processes; the constants are patched for this one.
    """
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
