"""The project's own exception types.

Every error a user can cause (a wrong flag, a missing file, a bad checkpoint) is raised as one of these, with a
message that names the argument, file or value, says what was expected, and how to fix it. The CLI turns them
into one readable line (no traceback unless ``--debug``).

Every vlprompt exception class is defined here (and only here), so that one registry (:data:`ERROR_CLASSES`) knows
them all: an error raised on rank 0 of a torchrun launch is rebuilt on the other ranks as the same class with the
same message (:func:`describe_error` / :func:`rebuild_error`, used by :func:`vlprompt.engine.distributed.on_main`).
Modules that raised a class before it moved here re-export it (``vlprompt.engine.fit.TrainingDivergedError``,
``vlprompt.engine.distributed.DistributedError``).
"""

from __future__ import annotations

import builtins


class VLPromptError(Exception):
    """Base class for every error vlprompt raises on purpose."""


class ConfigError(VLPromptError, ValueError):
    """A configuration value or combination of values is invalid."""


class DataError(VLPromptError, ValueError):
    """A dataset, split file, CSV or image cannot be read as expected."""


class BackboneError(VLPromptError, ValueError):
    """A backbone cannot be built, loaded, or used for prompt learning."""


class WeightsNotFoundError(BackboneError, FileNotFoundError):
    """Pretrained weights are not available locally (offline, not cached)."""


class ArtifactError(VLPromptError, ValueError):
    """A saved artifact (run folder, learned prompt, cache entry) is missing, corrupt or incompatible."""


class TrainingDivergedError(VLPromptError, RuntimeError):
    """The loss became NaN or infinite (raised by the training loop, :func:`vlprompt.engine.fit.fit`)."""


class DistributedError(VLPromptError, RuntimeError):
    """The process group cannot be set up, or another rank failed (:mod:`vlprompt.engine.distributed`)."""


#: Every vlprompt error class by name: how an error raised on rank 0 is rebuilt, as the same class, on the other
#: ranks (:func:`rebuild_error`). Every class above is in it (``tests/architecture`` checks that no vlprompt module
#: defines an exception class anywhere else).
ERROR_CLASSES: dict[str, type[VLPromptError]] = {
    name: obj for name, obj in list(globals().items()) if isinstance(obj, type) and issubclass(obj, VLPromptError)
}

_SIMPLE = (str, int, float, bool, bytes, type(None))


def describe_error(e: BaseException) -> dict:
    """A small, picklable record of ``e`` from which :func:`rebuild_error` makes the same exception in another process.

    Holds the class (``kind``, ``module``), ``str(e)`` (``message``), the constructor ``args`` where they are plain
    values (else ``None``), and for an :class:`OSError` its ``errno``, ``strerror``, ``filename`` and ``filename2``.
    """
    args = e.args if all(isinstance(a, _SIMPLE) for a in e.args) else None
    record = {"kind": type(e).__name__, "module": type(e).__module__, "message": str(e), "args": args, "os": None}
    if isinstance(e, OSError):
        names = [e.filename, e.filename2]
        record["os"] = {"errno": e.errno, "strerror": e.strerror,
                        "filename": [str(n) if n is not None else None for n in names]}  # os.PathLike → str
    return record


def _known_class(record: dict) -> type[BaseException] | None:
    """The class a record names, if it is a vlprompt error or a built-in ``Exception`` subclass (never e.g.
    ``KeyboardInterrupt`` or a class from an arbitrary module: nothing is imported by name)."""
    kind, module = record.get("kind"), record.get("module")
    if module == __name__ and kind in ERROR_CLASSES:
        return ERROR_CLASSES[kind]
    if module == "builtins":
        cls = getattr(builtins, str(kind), None)
        if isinstance(cls, type) and issubclass(cls, Exception):
            return cls
    return None


def _construct(cls: type[BaseException], record: dict) -> BaseException | None:
    """``cls`` built so that its ``str()`` is the recorded message (``None`` if no constructor call gives that)."""
    os_info, message = record.get("os"), record["message"]
    attempts: list[tuple] = []
    if os_info and os_info.get("errno") is not None:
        filename, filename2 = os_info["filename"]
        attempts.append((os_info["errno"], os_info["strerror"], filename, None, filename2) if filename2 is not None
                        else (os_info["errno"], os_info["strerror"], filename) if filename is not None
                        else (os_info["errno"], os_info["strerror"]))
    if record.get("args") is not None:
        attempts.append(tuple(record["args"]))
    attempts.append((message,))
    for args in attempts:
        try:
            e = cls(*args)
        except Exception:  # a class with another constructor
            continue
        if str(e) == message:
            return e
    return None


def rebuild_error(record: dict) -> BaseException:
    """The exception :func:`describe_error` recorded, rebuilt in this process.

    A vlprompt error or a built-in exception comes back as the same class with the same message (an
    :class:`OSError` with the same ``errno``, ``strerror`` and file names); another :class:`OSError` subclass as the
    :class:`OSError` of its ``errno`` (e.g. :class:`FileNotFoundError`) with the same message; anything else as a
    :class:`DistributedError` naming the original class and message.
    """
    cls = _known_class(record)
    rebuilt = _construct(cls, record) if cls is not None else None
    if rebuilt is None and record.get("os"):
        rebuilt = _construct(OSError, record)
    if rebuilt is not None:
        return rebuilt
    return DistributedError(f"rank 0 failed: {record.get('kind')}: {record.get('message')}")
