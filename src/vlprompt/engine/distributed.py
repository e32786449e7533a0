"""The free functions of distributed execution, kept for existing callers (import paths of earlier releases).

The library now passes one execution strategy object, made once at the top of a run: :mod:`vlprompt.engine.execution`
(:func:`~vlprompt.engine.execution.open_execution`, :class:`~vlprompt.engine.execution.SingleProcess`,
:class:`~vlprompt.engine.execution.Torchrun`), where the design is described. The names here act on the process group
opened by :func:`process_group` (``open_execution`` opens it too): :class:`BatchShard` and :func:`sync_train_state`
use :func:`~vlprompt.engine.execution.current_execution`.
"""

from __future__ import annotations

import torch

from vlprompt.engine.collectives import (
    all_gather_rows,
    all_reduce_sum,
    broadcast_object,
    broadcast_tensor,
    cached_on_main,
    gather_rows,
    on_main,
    shard_range,
)
from vlprompt.engine.execution import BatchShard, current_execution
from vlprompt.engine.launch import (
    LAUNCH_ENV,
    TIMEOUT,
    active,
    is_main,
    launched,
    local_device,
    process_group,
    rank,
    world_size,
)
from vlprompt.errors import DistributedError  # re-exported


def sync_train_state(learner: torch.nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator | None,
                     scaler: torch.amp.GradScaler | None = None) -> None:
    """Give every rank rank 0's learner, optimizer, GradScaler and RNG states (a no-op outside a process group):
    :meth:`vlprompt.engine.execution.Execution.sync_train_state` of the current execution."""
    current_execution().sync_train_state(learner, optimizer, generator, scaler)


__all__ = [
    "BatchShard", "DistributedError", "LAUNCH_ENV", "TIMEOUT", "active", "all_gather_rows", "all_reduce_sum",
    "broadcast_object", "broadcast_tensor", "cached_on_main", "gather_rows", "is_main", "launched", "local_device",
    "on_main", "process_group", "rank", "shard_range", "sync_train_state", "world_size",
]
