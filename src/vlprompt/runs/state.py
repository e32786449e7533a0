"""The training state saved after every epoch, so that an interrupted run resumes exactly where it stopped.

Files in the run folder while a run is unfinished:

- ``train_state-e<EPOCH>.safetensors``: the learner's learned tensors (``learner.<name>``), the optimizer's state
  tensors (``optim.<param index>.<name>``, e.g. SGD momentum buffers) and the RNG states as integer tensors:
  torch CPU (``rng.torch``), every CUDA device (``rng.cuda.<i>``), the data-order generator (``rng.data``), the
  NumPy MT19937 key (``rng.numpy``) and Python's Mersenne Twister (``rng.python``).
- ``train_state.json``: the completed epoch, the weights file's name and SHA-256, the digest of the resolved run
  configuration, the optimizer's parameter groups and non-tensor state, the GradScaler state, and the scalar
  parts of the NumPy/Python RNG states.

Write order: the weights under a new per-epoch name (atomically), then the JSON that names it (atomically), then
the previous weights file is deleted. A kill at any moment therefore leaves either the previous or the new
complete state; weights files the JSON does not name are leftovers, deleted on the next save or removal. The
learning-rate schedule needs no state: it is a pure function of the epoch. The files are removed when the run
finishes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from vlprompt._io import atomic_save_safetensors, atomic_write_json, atomic_write_text, file_sha256, read_json_object
from vlprompt.engine.checkpoint import check_state
from vlprompt.errors import ArtifactError, ConfigError

_logger = logging.getLogger(__name__)

TRAIN_STATE_JSON = "train_state.json"
LOCK_FILE = ".vlprompt.lock"
_FORMAT = "vlprompt-train-state/1"
#: Entries of ``config.json`` that may differ between the interrupted and the resuming invocation.
VOLATILE_CONFIG_KEYS = ("started", "threads", "versions", "device", "label", "resumes")


def comparable_config(config: dict) -> dict:
    """``config`` without the entries that do not change what is computed (start time, versions, device, …)."""
    return {k: v for k, v in config.items() if k not in VOLATILE_CONFIG_KEYS}


def config_digest(config: dict) -> str:
    """SHA-256 of :func:`comparable_config` (stored with the training state)."""
    return hashlib.sha256(json.dumps(comparable_config(config), sort_keys=True, default=str).encode()).hexdigest()


def config_differences(old: dict, new: dict, limit: int = 5) -> list[str]:
    """Readable ``key: old → new`` lines for the comparable entries that differ (dotted keys, at most ``limit``)."""

    def short(v: object) -> str:
        text = json.dumps(v, default=str, ensure_ascii=False)
        return text if len(text) <= 60 else text[:57] + "..."

    out: list[str] = []

    def walk(a: object, b: object, key: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b), key=str):
                walk(a.get(k, "<absent>"), b.get(k, "<absent>"), f"{key}.{k}" if key else str(k))
        elif json.dumps(a, sort_keys=True, default=str) != json.dumps(b, sort_keys=True, default=str):
            if isinstance(a, list) and isinstance(b, list) and max(len(short(a)), len(short(b))) > 20:
                out.append(f"{key}: {len(a)} → {len(b)} entries, contents differ")  # e.g. the few-shot image lists
            else:
                out.append(f"{key}: {short(a)} → {short(b)}")

    walk(comparable_config(old), comparable_config(new), "")
    return out[:limit] + ([f"… and {len(out) - limit} more"] if len(out) > limit else [])


def read_json(path: Path) -> dict:
    """A JSON object from a run folder (``config.json``, ``metrics.json``), or an ArtifactError naming the file."""
    return read_json_object(path)


def check_same_config(out: Path, what: str, old: dict, new: dict) -> None:
    """Refuse to continue ``what`` in ``out`` (recorded with config ``old``) under a different config ``new``."""
    diffs = config_differences(old, new)
    if diffs:
        raise ConfigError(
            f"--out '{out}' holds {what} with a different configuration ({'; '.join(diffs)}); rerun with the same "
            "options to continue it, pass --overwrite to start over, or choose another --out."
        )


def resume_point(out: Path, config: dict) -> int:
    """The completed epoch to resume after in run folder ``out`` for the new ``config`` (0: start afresh).

    Raises:
        ConfigError: ``out`` holds an unfinished run with saved state but another configuration.
        ArtifactError: the saved state or ``config.json`` is damaged.
    """
    state = read_train_state_json(out)
    if state is None or not (out / "config.json").exists():
        return 0
    check_same_config(out, f"an unfinished run (epoch {state['epoch']} saved)", read_json(out / "config.json"), config)
    return state["epoch"]




def _capture_rng(generator: torch.Generator | None) -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    if generator is not None:
        tensors["rng.data"] = generator.get_state()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))  # (624,) uint32 values
    version, internal, gauss_next = random.getstate()
    tensors["rng.python"] = torch.tensor(internal, dtype=torch.int64)  # (625,) 32-bit words + index
    return tensors, {"numpy": [name, int(pos), int(has_gauss), float(cached)], "python": [version, gauss_next]}


def _restore_rng(tensors: dict[str, torch.Tensor], scalars: dict, generator: torch.Generator | None) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k[9:]))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    elif cuda:
        _logger.warning("the interrupted run had %d CUDA device(s); their RNG states are not restored", len(cuda))
    if generator is not None:
        generator.set_state(tensors["rng.data"])
    name, pos, has_gauss, cached = scalars["numpy"]
    np.random.set_state((name, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, gauss_next = scalars["python"]
    random.setstate((version, tuple(int(x) for x in tensors["rng.python"].tolist()), gauss_next))


def save_train_state(
    run_dir: str | Path,
    *,
    epoch: int,
    learner: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator | None,
    scaler: torch.amp.GradScaler | None = None,
    digest: str = "",
) -> None:
    """Save everything needed to continue training after ``epoch`` (see the module docstring for the layout)."""
    run_dir = Path(run_dir)
    tensors = {f"learner.{k}": v for k, v in learner.state_dict().items()}
    opt = optimizer.state_dict()
    opt_scalars: dict[str, dict] = {}
    for idx, st in opt["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{idx}.{k}"] = v
            else:
                opt_scalars.setdefault(str(idx), {})[k] = v
    rng_tensors, rng_scalars = _capture_rng(generator)
    tensors.update(rng_tensors)
    name = f"train_state-e{epoch:04d}.safetensors"
    atomic_save_safetensors(run_dir / name, tensors, metadata={"format": _FORMAT, "epoch": str(epoch)})
    atomic_write_json(run_dir / TRAIN_STATE_JSON, {
        "format": _FORMAT, "epoch": epoch, "weights": name, "sha256": file_sha256(run_dir / name), "config_digest": digest,
        "optimizer": {"param_groups": opt["param_groups"], "state": opt_scalars},
        "scaler": scaler.state_dict() if scaler is not None else None, "rng": rng_scalars,
    })
    _remove_leftovers(run_dir, keep=name)


def _remove_leftovers(run_dir: Path, keep: str | None) -> None:
    for p in run_dir.glob("train_state-e*.safetensors"):
        if p.name != keep:
            p.unlink(missing_ok=True)


def read_train_state_json(run_dir: str | Path) -> dict | None:
    """The validated ``train_state.json`` of ``run_dir``, or ``None`` when the run has no saved state."""
    path = Path(run_dir) / TRAIN_STATE_JSON
    if not path.exists():
        return None
    fix = "the training state is damaged; pass --overwrite to start the run over"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ArtifactError(f"'{path}' is not valid JSON ({e}); {fix}.") from e
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        raise ArtifactError(f"'{path}' is not a {_FORMAT} file; {fix}.")
    missing = [k for k in ("epoch", "weights", "sha256", "optimizer", "rng") if k not in meta]
    if missing or not isinstance(meta["epoch"], int) or meta["epoch"] < 0 or "/" in str(meta["weights"]):
        raise ArtifactError(f"'{path}' lacks or has invalid entries {missing or ['epoch/weights']}; {fix}.")
    return meta


def has_train_state(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a saved training state (it may still be invalid)."""
    return (Path(run_dir) / TRAIN_STATE_JSON).exists()


def load_train_state(
    run_dir: str | Path,
    *,
    learner: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator | None,
    scaler: torch.amp.GradScaler | None = None,
    digest: str | None = None,
) -> int:
    """Restore the learner, optimizer, scaler and RNG states saved in ``run_dir``; return the completed epoch.

    Raises:
        ArtifactError: the state is missing, damaged, or was saved for another configuration (``digest``).
    """
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    meta = read_train_state_json(run_dir)
    fix = "pass --overwrite to start the run over"
    if meta is None:
        raise ArtifactError(f"'{run_dir}' holds no training state to resume from; {fix}.")
    path = run_dir / meta["weights"]
    if not path.is_file() or file_sha256(path) != meta["sha256"]:
        raise ArtifactError(f"'{path}' is missing or does not match the checksum in {TRAIN_STATE_JSON}; {fix}.")
    if digest is not None and meta.get("config_digest") != digest:
        raise ArtifactError(f"the training state in '{run_dir}' was saved for another configuration; {fix}.")
    try:
        tensors = load_file(str(path))
        learned = {k[len("learner."):]: v for k, v in tensors.items() if k.startswith("learner.")}
        check_state(path, learned, learner.state_dict(), type(learner).__name__)
        learner.load_state_dict(learned)
        opt_state: dict[int, dict] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, idx, name = k.split(".", 2)
                opt_state.setdefault(int(idx), {})[name] = v
        for idx, st in meta["optimizer"]["state"].items():
            opt_state.setdefault(int(idx), {}).update(st)
        optimizer.load_state_dict({"state": opt_state, "param_groups": meta["optimizer"]["param_groups"]})
        if scaler is not None and meta.get("scaler"):
            scaler.load_state_dict(meta["scaler"])
        _restore_rng(tensors, meta["rng"], generator)
    except ArtifactError:
        raise
    except Exception as e:  # any failure to restore (bad tensors, tampered JSON entries) means a damaged state
        raise ArtifactError(f"the training state in '{run_dir}' could not be restored ({type(e).__name__}: {e}); "
                            f"{fix}.") from e
    return meta["epoch"]


@contextlib.contextmanager
def run_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on ``run_dir`` (``.vlprompt.lock``) while training into it.

    Two processes training into one folder would interleave their files; the second is refused instead. The lock
    is ``flock``-based, so the kernel releases it when the holder dies, even by SIGKILL (no stale locks). On
    systems without ``fcntl`` no lock is taken.

    Raises:
        ConfigError: another process holds the lock.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    path = Path(run_dir) / LOCK_FILE
    with open(path, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise ConfigError(f"another vlprompt process (pid {holder}) is training into --out '{run_dir}'; wait for "
                              "it to finish or choose another --out.") from e
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def remove_stale_temporaries(run_dir: str | Path) -> None:
    """Delete the temporary files of atomic writes that a killed process left in ``run_dir`` (never trusted)."""
    for p in Path(run_dir).glob(".*.tmp"):
        p.unlink(missing_ok=True)


def remove_train_state(run_dir: str | Path) -> None:
    """Delete the training state (the JSON first, so that a kill in between leaves no state that is trusted)."""
    run_dir = Path(run_dir)
    (run_dir / TRAIN_STATE_JSON).unlink(missing_ok=True)
    _remove_leftovers(run_dir, keep=None)


def read_history(path: str | Path) -> list[dict]:
    """Records of ``history.jsonl``; a torn (unparsable) last line, left by a kill mid-write, is ignored.

    Raises:
        ArtifactError: a line other than the last is not a JSON object.
    """
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    out = []
    for i, line in enumerate(lines):
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError("not an object")
        except (ValueError, RecursionError) as e:
            if i == len(lines) - 1:
                _logger.warning("%s: ignoring a torn last line (%r)", path, line[:40])
                break
            raise ArtifactError(f"'{path}' line {i + 1} is not a JSON object ({e}); the file is damaged.") from e
        out.append(rec)
    return out


def truncate_history(path: str | Path, epoch: int) -> list[dict]:
    """Atomically keep only the records of epochs ``<= epoch`` in ``history.jsonl`` (before resuming after it)."""
    kept = [r for r in read_history(path) if isinstance(r.get("epoch"), int) and r["epoch"] <= epoch]
    if [r["epoch"] for r in kept] != list(range(1, epoch + 1)):
        _logger.warning("%s does not hold one record for each of epochs 1..%d", path, epoch)
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
    return kept


__all__ = [
    "TRAIN_STATE_JSON",
    "check_same_config",
    "comparable_config",
    "config_differences",
    "config_digest",
    "has_train_state",
    "load_train_state",
    "read_history",
    "read_json",
    "read_train_state_json",
    "remove_stale_temporaries",
    "remove_train_state",
    "resume_point",
    "run_lock",
    "save_train_state",
    "truncate_history",
]
