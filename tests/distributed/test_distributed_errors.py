"""An error raised on rank 0 inside ``on_main`` reaches the other ranks as the same class with the same message.

Before issue 13 only classes defined in ``vlprompt.errors`` were rebuilt; ``TrainingDivergedError`` (then in
``engine/fit.py``), ``DistributedError`` and every ``OSError`` (a missing file) reached rank 1 as a generic
``DistributedError("rank 0 failed: …")``, so ``except FileNotFoundError`` or the CLI's one-line message for a vlprompt
error behaved differently on rank 1 than on rank 0.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch
from dist_ranks import run_ranks

from vlprompt import errors
from vlprompt.engine import distributed as D
from vlprompt.engine.fit import TrainingDivergedError

pytestmark = pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")


def _cases(folder: str) -> list:
    """Errors rank 0 raises, each as rank 0's own code raises it (the other ranks never run these)."""
    missing = os.path.join(folder, "no-such-run", "config.json")

    def diverged():
        raise TrainingDivergedError("the training loss became nan at epoch 1, step 1; lower --lr")

    def bad_data():
        raise errors.DataError("split file 'split.json': 'train' is empty; list at least one image per class")

    def no_file():
        with open(missing, encoding="utf-8"):  # the OS's own FileNotFoundError: errno, strerror, filename
            pass

    def no_weights():
        raise errors.WeightsNotFoundError("weights 'openai' for RN50 are not cached; download them once online")

    def permission():
        raise PermissionError(errno.EACCES, "Permission denied", os.path.join(folder, "out"))

    def key():
        raise KeyError("epoch")

    class ThirdPartyError(RuntimeError):
        pass

    def third_party():
        raise ThirdPartyError("something inside a library")

    return [diverged, bad_data, no_file, no_weights, permission, key, third_party]


def _record(e: BaseException) -> dict:
    out = {"class": f"{type(e).__module__}.{type(e).__qualname__}", "message": str(e)}
    if isinstance(e, OSError):
        out.update(errno=e.errno, strerror=e.strerror, filename=e.filename)
    return out


def _worker(rank: int, ports: list[int], folder: str) -> None:
    got = []
    with D.process_group(torch.device("cpu")):
        for case in _cases(folder):
            try:
                D.on_main(case)
            except Exception as e:  # every rank raises: rank 0 the original, rank 1 the rebuilt copy
                got.append(_record(e))
            else:
                got.append(None)
        assert D.on_main(lambda: "still in step") == "still in step"  # no rank left behind in a collective
    Path(folder, f"rank{rank}.json").write_text(json.dumps(got))


def test_rank0_errors_surface_on_rank1_as_the_same_class_and_message(tmp_path):
    run_ranks(_worker, str(tmp_path))
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    missing = str(tmp_path / "no-such-run" / "config.json")
    assert rank0[0] == {"class": "vlprompt.errors.TrainingDivergedError",
                        "message": "the training loss became nan at epoch 1, step 1; lower --lr"}
    assert rank0[1]["class"] == "vlprompt.errors.DataError"
    assert rank0[2] == {"class": "builtins.FileNotFoundError", "errno": errno.ENOENT,
                        "strerror": os.strerror(errno.ENOENT), "filename": missing,
                        "message": f"[Errno {errno.ENOENT}] {os.strerror(errno.ENOENT)}: '{missing}'"}
    assert rank0[3]["class"] == "vlprompt.errors.WeightsNotFoundError"
    assert rank0[4]["class"] == "builtins.PermissionError" and rank0[4]["errno"] == errno.EACCES
    assert rank0[5] == {"class": "builtins.KeyError", "message": "'epoch'"}
    # The faithful copies: every field equal to rank 0's own exception.
    assert rank1[:6] == rank0[:6]
    # A class vlprompt cannot rebuild by name (defined in some other module) stays a DistributedError naming it.
    assert rank0[6]["class"].endswith("ThirdPartyError")
    assert rank1[6] == {"class": "vlprompt.errors.DistributedError",
                        "message": "rank 0 failed: ThirdPartyError: something inside a library"}


def test_rebuild_round_trips_every_registered_class():
    """Every class in the registry comes back as itself with its message, in one process (no group needed)."""
    assert {"TrainingDivergedError", "DistributedError", "DataError", "ConfigError", "BackboneError",
            "WeightsNotFoundError", "ArtifactError", "VLPromptError"} <= set(errors.ERROR_CLASSES)
    for name, cls in errors.ERROR_CLASSES.items():
        e = errors.rebuild_error(errors.describe_error(cls(f"{name}: what was wrong and how to fix it")))
        assert type(e) is cls and str(e) == f"{name}: what was wrong and how to fix it"
    assert D.DistributedError is errors.DistributedError and TrainingDivergedError is errors.TrainingDivergedError


def test_an_unknown_oserror_subclass_comes_back_as_the_oserror_of_its_errno():
    class CacheLockedError(OSError):
        pass

    e = errors.rebuild_error(errors.describe_error(CacheLockedError(errno.ENOENT, "No such file", "/cache/x.lock")))
    assert type(e) is FileNotFoundError and e.filename == "/cache/x.lock"
    assert str(e) == f"[Errno {errno.ENOENT}] No such file: '/cache/x.lock'"


def test_keyboard_interrupt_is_not_rebuilt_as_itself():
    """Only ``Exception`` subclasses are rebuilt by name: rank 1 reports rank 0's interrupt as an error."""
    e = errors.rebuild_error(errors.describe_error(KeyboardInterrupt()))
    assert type(e) is errors.DistributedError and "KeyboardInterrupt" in str(e)
