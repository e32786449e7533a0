"""On-disk cache of frozen image features, shared by every shot count, seed and method.

An entry is keyed by the backbone identity (name, weights fingerprint), the precision, the dataset, the split,
the exact records (relative paths, labels, and each file's size and modification time) and the transform
fingerprint. It is stored as
``<hash>.safetensors`` + ``<hash>.json`` (the sidecar holds the full key and a SHA-256 of the tensor). The sidecar is
written last, atomically, so it marks a complete entry; an entry whose sidecar, key, shape or checksum does not
match is treated as absent and rebuilt, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch

from vlprompt._io import atomic_save_safetensors, atomic_write_json

_logger = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$VLPROMPT_CACHE/features`` or ``~/.cache/vlprompt/features``."""
    base = os.environ.get("VLPROMPT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "vlprompt")
    return Path(base) / "features"


def records_digest(records, root: str | None) -> str:
    """SHA-256 of the records' (relative path, label, file size, modification time) list, in order.

    The file's size and ``st_mtime_ns`` make an image rewritten at the same path (a regenerated or edited dataset,
    another copy of a dataset under the same name and layout) a new entry instead of silently serving the old
    file's features; a file that cannot be stat-ed is keyed as missing (its extraction then fails with its own
    message). One ``stat`` per image: seconds for ImageNet's 1.28 M files, next to hours of encoding.
    """
    h = hashlib.sha256()
    for r in records:
        path = os.path.relpath(r.path, root) if root else r.path
        try:
            st = os.stat(r.path)
            stamp = f"{st.st_size}\t{st.st_mtime_ns}"
        except (OSError, TypeError, ValueError):
            stamp = "missing"
        h.update(f"{path}\t{r.label}\t{stamp}\n".encode())
    return h.hexdigest()


def _tensor_digest(t: torch.Tensor) -> str:
    """SHA-256 of the tensor's raw bytes (any dtype, bf16 included: NumPy has no bf16, so hash bytes directly)."""
    raw = t.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
    return hashlib.sha256(raw.numpy().tobytes()).hexdigest()


class FeatureCache:
    """A folder of cached feature tensors.

    Args:
        root: the cache folder (created on first write).
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def _paths(self, key: dict) -> tuple[Path, Path, str]:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
        return self.root / f"{digest}.safetensors", self.root / f"{digest}.json", digest

    def get(self, key: dict) -> torch.Tensor | None:
        """The cached tensor for ``key``, or ``None`` if absent or invalid (an invalid entry is logged)."""
        data_path, meta_path, _ = self._paths(key)
        if not meta_path.exists():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("key") != json.loads(json.dumps(key)):
                raise ValueError("key mismatch")
            from safetensors.torch import load_file

            t = load_file(str(data_path))["features"]
            if list(t.shape) != meta["shape"] or str(t.dtype) != meta.get("dtype", str(t.dtype)):
                raise ValueError("shape or dtype mismatch")
            if _tensor_digest(t) != meta["sha256"]:
                raise ValueError("checksum mismatch")
            return t
        except Exception as e:  # any damage means: do not trust, rebuild
            _logger.warning("feature cache entry %s is invalid (%s); rebuilding it", meta_path, e)
            return None

    def put(self, key: dict, features: torch.Tensor) -> None:
        """Store ``features`` under ``key`` (tensor first, sidecar last; both atomic)."""
        data_path, meta_path, _ = self._paths(key)
        features = features.detach().cpu().contiguous()
        atomic_save_safetensors(data_path, {"features": features})
        meta = {"key": key, "shape": list(features.shape), "dtype": str(features.dtype), "sha256": _tensor_digest(features)}
        atomic_write_json(meta_path, meta)

    def get_or_compute(self, key: dict, compute) -> torch.Tensor:
        """Return the cached tensor for ``key`` or compute it with ``compute()`` and store it."""
        t = self.get(key)
        if t is None:
            t = compute()
            self.put(key, t)
        else:
            _logger.info("feature cache hit: %s", key.get("split"))
        return t
