"""Run a function in N CPU processes joined by a gloo process group, as torchrun would start them.

Processes are forked (not spawned), so they start in milliseconds with torch, open_clip and the tiny test model
configs already imported. Each gets the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT on a free port), so the code under test initialises the group itself through
``vlprompt.engine.distributed.process_group``.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port that is free on this machine now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn: Callable, nprocs: int, ports: list[int], args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(ports[0]), RANK=str(rank), WORLD_SIZE=str(nprocs),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    fn(rank, ports, *args)


def run_ranks(fn: Callable, *args, nprocs: int = 2, ports: int = 1, timeout: float = 120.0) -> None:
    """Call ``fn(rank, ports, *args)`` in ``nprocs`` forked processes; re-raise the first failure.

    ``ports`` free ports are reserved (the first is ``MASTER_PORT``; a worker that opens a second process group
    sets ``MASTER_PORT`` to the next one). Children still running after ``timeout`` seconds are killed.
    """
    chosen = [free_port() for _ in range(ports)]
    ctx = mp.start_processes(_entry, args=(fn, nprocs, chosen, args), nprocs=nprocs, join=False, start_method="fork")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            raise TimeoutError(f"distributed workers did not finish within {timeout:.0f} s")
