"""Joining a ``torchrun`` launch: whether this process is one, its rank and device, and the process group for the
duration of a run (:func:`process_group`). Used by :mod:`vlprompt.engine.execution` (the execution strategy the
library passes around); :mod:`vlprompt.engine.distributed` re-exports every name for older callers.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from datetime import timedelta

import torch
import torch.distributed as dist

from vlprompt.errors import DistributedError

_logger = logging.getLogger(__name__)

#: How long a collective waits for the other ranks before failing (PyTorch's own default for gloo).
TIMEOUT = timedelta(minutes=30)
#: Environment variables ``torchrun`` sets for every worker.
LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def launched() -> bool:
    """Whether this process was started by ``torchrun`` with more than one process (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


_inside = 0  # how many process_group() blocks are open: vlprompt shares work only inside one


def active() -> bool:
    """Whether work is shared over ranks: inside :func:`process_group` with more than one process (read once by
    :func:`vlprompt.engine.execution.open_execution`, and by the free functions kept for older callers). A process group the caller opened elsewhere (say, a DDP script calling the library on rank 0
    only) is not used outside such a block, so no rank waits in a collective the others never enter."""
    return _inside > 0 and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank (0 outside torchrun; ``$RANK`` before the group is initialised or after it ends)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0") or 0) if launched() else 0


def world_size() -> int:
    """The number of processes (1 outside a process group)."""
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Whether this process is rank 0: the one that writes files, logs and shows progress bars."""
    return rank() == 0


def local_device(device: torch.device) -> torch.device:
    """The device of this rank: ``cuda:$LOCAL_RANK`` for a CUDA device under torchrun, else ``device`` itself."""
    if not launched() or device.type != "cuda":
        return device
    local = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0") or 0))
    if device.index is not None and device.index != local.index:
        _logger.warning("--device %s ignored under torchrun: rank %d uses %s (its LOCAL_RANK)", device, rank(), local)
    return local


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[None]:
    """Initialise the process group for a torchrun launch for the duration of the block (a no-op otherwise).

    NCCL is used for CUDA devices (each rank on ``cuda:$LOCAL_RANK``), gloo for the CPU. A group that the caller
    already initialised is used as it is and left open (inside the block only: see :func:`active`). While the group is open, ranks other than 0
    log errors only (the root and ``vlprompt`` loggers), so each message appears once.

    Raises:
        DistributedError: ``WORLD_SIZE`` > 1 but the rendezvous fails (names ``MASTER_ADDR``/``MASTER_PORT``).
    """
    global _inside
    if not launched() or dist.is_initialized():
        _inside += 1
        try:
            yield
        finally:
            _inside -= 1
        return
    if not dist.is_available():
        raise DistributedError("WORLD_SIZE > 1 (a torchrun launch) but this PyTorch build has no torch.distributed.")
    missing = [k for k in LAUNCH_ENV if k not in os.environ and k != "LOCAL_RANK"]
    if missing:
        raise DistributedError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} is set but {', '.join(missing)} is not: "
                               "launch with torchrun (it sets RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT), or "
                               "unset WORLD_SIZE to run in one process.")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_device(device))
    try:
        dist.init_process_group(backend, init_method="env://", timeout=TIMEOUT)
    except Exception as e:
        raise DistributedError(
            f"could not join the {backend} process group as rank {os.environ['RANK']} of {os.environ['WORLD_SIZE']} "
            f"at MASTER_ADDR={os.environ['MASTER_ADDR']} MASTER_PORT={os.environ['MASTER_PORT']} ({type(e).__name__}: "
            f"{e}); check that every node uses the same --master_addr/--master_port, that rank 0's node is reachable "
            "on that port, and that the port is free.") from e
    loggers = [logging.getLogger(), logging.getLogger("vlprompt")]  # root (third-party libraries) and ours
    old_levels = [lg.level for lg in loggers]
    if not is_main():
        for lg in loggers:
            lg.setLevel(logging.ERROR)
    _logger.info("process group: %s, %d processes", backend, dist.get_world_size())
    _inside += 1
    try:
        yield
    finally:
        _inside -= 1
        for lg, level in zip(loggers, old_levels, strict=True):
            lg.setLevel(level)
        dist.destroy_process_group()



__all__ = ["LAUNCH_ENV", "TIMEOUT", "active", "is_main", "launched", "local_device", "process_group", "rank",
           "world_size"]
