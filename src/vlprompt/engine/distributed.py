"""Multi-GPU and multi-node runs under ``torchrun``: process group, rank helpers, sharding and gathering.

Launched by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment), ``vlprompt train`` and ``vlprompt eval`` run one
process per device inside :func:`process_group` (NCCL on CUDA, gloo on the CPU). Every rank builds the same data,
backbone and learner from the same seeds, so every rank sees the same few-shot sample, the same initial context and
the same global batch order. Work is then split by rank ``r`` of ``W`` and the results gathered, so that the run
equals the single-process run up to float rounding:

- **Feature extraction** (test/val features, the ``cached:K`` views): rank ``r`` loads and encodes the contiguous
  shard ``records[lo_r:hi_r]`` (:func:`shard_range`; views: of the flat view-major (view, image) list) and
  :func:`gather_rows` concatenates the shards in rank order, so every rank ends with the full ``[N, E]`` in record
  order. A view's augmentation is seeded per (seed, view, image) (:mod:`vlprompt.features.views`), so it does not
  matter which rank draws it. Only rank 0 reads and writes the feature cache and the run folder (:func:`on_main`);
  the others wait for it, then receive its result.
- **Text encoding** (training and evaluation): the ``C`` class prompts are split the same way; rank ``r`` encodes
  ``[C_r, L, D] → [C_r, E]`` and :func:`all_gather_rows` gives every rank the full ``[C, E]`` *with gradient
  support*: its backward sums the ``[C, E]`` gradient over ranks (an all-reduce, which gloo also supports for
  uneven shards, where a reduce-scatter would not) and returns rank ``r``'s rows ``[C_r, E]``. Conditional
  learners (CoCoOp) are not class-sharded (their prompts depend on the rank's own images), nor are fewer classes
  than ranks; the gradient all-reduce below keeps those exact too.
- **The image batch**: every rank draws the same global batch ``[B, ...]`` and keeps its rows ``[B_r, ...]``
  (:class:`BatchShard`). Its loss is its own training loss (mean cross-entropy over its ``B_r`` rows, plus any
  regularizer of the gathered text features) times ``B_r / B``; these shares sum to 1, so the ranks' losses sum
  to the single-process loss (the global mean, plus the regularizer once). Backward on rank ``r`` gives the
  gradient of its own loss through its ``[B_r, C]`` logits; the gather's backward adds the other ranks'
  contributions to its classes' text features, and :meth:`BatchShard.reduce_grads` sums the learner's gradients
  over ranks, so every rank holds ``dL/dθ`` of the global loss and takes the same SGD step (``θ`` stays identical
  on every rank). The logged loss and accuracy are summed over ranks, so a NaN stops every rank at once.

Shapes per step on rank ``r`` (``B`` global batch, ``C`` classes, ``E`` embedding, ``L`` tokens, ``D`` width):
``images [B_r, 3, H, W] → img [B_r, E]``; ``prompts [C_r, L, D] → text_r [C_r, E] → (gather) text [C, E]``;
``logits [B_r, C] = s · img @ text.T``; loss ``()``; learner gradients all-reduced (``M × D`` floats for CoOp).

Design choice: logits stay sharded by image rows (rather than gathering all images and computing the full
``[B, C]`` on every rank), so no rank repeats another's work and the text encoder's activations are those of
``C / W`` classes. Under torchrun the image loader still decodes and augments the whole global batch on every rank
(``--augment online``): that keeps the augmentation RNG stream identical to the single-process run; only the
image encoder is sharded.

Resuming: rank 0 reads the saved state and :func:`sync_train_state` hands learner, optimizer and RNG states to the
others. Only rank 0 needs the run folder; every node needs the dataset (``eval``: also the ``--run`` folder) at the
same path. Hooks: ``engine/fit.py`` (batch rows, loss share, gradient all-reduce), ``engine/model.py`` (class
sharding), ``engine/pipeline.py`` and ``features/extract.py`` (sharded extraction, rank-0 cache), ``engine/run.py``
(process group, rank-0 files). Outside torchrun :func:`active` is ``False`` and every hook is skipped.

Modules: :mod:`vlprompt.engine.launch` (joining the launch, ranks, the process group),
:mod:`vlprompt.engine.collectives` (sharding, gathering, broadcasts, rank-0 work) and this one (the data-parallel
training step: :class:`BatchShard`, :func:`sync_train_state`), which re-exports the other two.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
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
from vlprompt.errors import ConfigError, DistributedError  # DistributedError: re-exported


class BatchShard:
    """This rank's rows of each global batch, and the scaling that makes the ranks' losses add up to one run.

    Per global batch: :meth:`split` it, multiply this rank's loss (a mean over its ``B_r`` rows, plus any
    regularizer computed from the gathered text features) by :attr:`share` ``= B_r / B`` (the shares sum to 1, so
    the ranks' losses sum to the global mean plus the regularizer once), get the global loss and accuracy with
    :meth:`stats`, and call :meth:`reduce_grads` between ``backward()`` and ``optimizer.step()``.
    """

    def __init__(self) -> None:
        self.total = 0  # B: rows of the current global batch
        self.share = 1.0  # B_r / B

    def split(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [B, ...]``, ``y [B]`` → this rank's rows ``[B_r, ...]``, ``[B_r]``.

        Raises:
            ConfigError: the batch has fewer rows than there are processes (a rank would have no image).
        """
        self.total, w = y.shape[0], world_size()
        if self.total < w:
            raise ConfigError(f"a training batch holds {self.total} images but {w} processes share it; launch fewer "
                              "processes (torchrun --nproc_per_node) or use more training images.")
        lo, hi = shard_range(self.total)
        self.share = (hi - lo) / self.total
        return x[lo:hi], y[lo:hi]

    def stats(self, loss: torch.Tensor, correct: torch.Tensor, rows: int) -> tuple[float, int, int]:
        """Global ``(loss, correct predictions, rows)`` from this rank's loss share, correct count and rows."""
        out = all_reduce_sum(torch.stack([loss.detach().double().reshape(()), correct.double().reshape(()),
                                          torch.tensor(float(rows), dtype=torch.float64, device=correct.device)]))
        return float(out[0]), int(out[1]), int(out[2])

    @staticmethod
    def reduce_grads(optimizer: torch.optim.Optimizer) -> None:
        """Sum the gradients of the optimizer's parameters over ranks (one flat all-reduce).

        A parameter that has no gradient on any rank keeps ``grad = None`` (as SGD expects: no decay, no momentum).
        """
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if not params:
            return
        device = params[0].device
        grads = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(device) for p in params]
        has = torch.tensor([p.grad is not None for p in params], dtype=params[0].dtype, device=device)  # (P,)
        flat = torch.cat([*grads, has])  # (Σ numel + P,)
        flat = all_reduce_sum(flat)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p).to(p.dtype).clone()
            offset += n
        for p, had in zip(params, flat[offset:].tolist(), strict=True):
            if not had:
                p.grad = None


def _to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor in nested dicts/lists/tuples moved to the CPU (for pickling between ranks)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def sync_train_state(learner: torch.nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator | None,
                     scaler: torch.amp.GradScaler | None = None) -> None:
    """Give every rank rank 0's learner, optimizer, GradScaler and RNG states (after a resume; a no-op otherwise).

    Ranks start from the same seeds anyway; this also covers a resumed run, whose state only rank 0 reads.
    """
    if not active():
        return
    state = None
    if is_main():
        state = {
            "learner": _to_cpu(learner.state_dict()),
            "optimizer": _to_cpu(optimizer.state_dict()),  # tensors are re-placed on each rank's parameters
            "scaler": scaler.state_dict() if scaler is not None else None,
            "generator": generator.get_state() if generator is not None else None,
            "torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
        }
    state = broadcast_object(state)
    if is_main():
        return
    learner.load_state_dict(state["learner"])
    optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    if generator is not None and state["generator"] is not None:
        generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


__all__ = [
    "BatchShard", "DistributedError", "LAUNCH_ENV", "TIMEOUT", "active", "all_gather_rows", "all_reduce_sum",
    "broadcast_object", "broadcast_tensor", "cached_on_main", "gather_rows", "is_main", "launched", "local_device",
    "on_main", "process_group", "rank", "shard_range", "sync_train_state", "world_size",
]
