"""Atomic file writes: write to a temporary file in the same folder, fsync, then rename.

An interrupted run therefore never leaves a half-written file that a later command trusts.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The process umask, read once (os.umask can only be read by setting it): files written here get the permissions a
# plain open() would give (0o666 & ~umask), not mkstemp's private 0o600 — a run folder is shared with other users.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` and atomically move the result to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # after write(): a writer may recreate the file (safetensors does)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write ``text`` (UTF-8) to ``path``."""

    def _write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, _write)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_save_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """Atomically save a dict of tensors with safetensors (tensors are made contiguous on the CPU)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def append_jsonl(path: str | os.PathLike, obj: Any, fsync: bool = True) -> None:
    """Append one JSON line (flushed, and fsynced unless ``fsync=False``; readers ignore a torn last line)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(obj) + "\n")
        f.flush()
        if fsync:
            os.fsync(f.fileno())


def read_json_object(path: str | os.PathLike, damaged: str = "the run folder is damaged") -> dict:
    """Read a JSON object from ``path``; any unreadable, invalid or non-object content is an ArtifactError that
    names the file and ends with ``damaged`` (what it means for the user)."""
    from vlprompt.errors import ArtifactError

    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ArtifactError(f"'{path}' is not valid JSON ({e}); {damaged}.") from e
    if not isinstance(obj, dict):
        raise ArtifactError(f"'{path}' must hold a JSON object; {damaged}.")
    return obj


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks (provenance of split files, exports, saved states)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
