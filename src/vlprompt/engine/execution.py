"""The execution strategy of a run: one process (:class:`SingleProcess`) or one rank of a ``torchrun`` launch
(:class:`Torchrun`), behind one small protocol (:class:`Execution`).

A run makes its strategy once, at the top (:func:`open_execution`, which joins a torchrun launch when ``WORLD_SIZE``
> 1 and otherwise changes nothing), and passes it explicitly to everything that shares work: the training loop
(:func:`vlprompt.engine.fit.fit`), the prompt model's text encoding (:class:`vlprompt.engine.model.PromptModel`),
feature extraction and the feature cache (:mod:`vlprompt.engine.pipeline`) and the run functions' rank-0 file work.
Those callers never ask whether they are distributed: a :class:`SingleProcess` shards ``n`` rows as ``[0, n)``,
gathers by returning its rows, and runs :meth:`~Execution.on_main` work itself. Under torchrun
(NCCL on CUDA, gloo on the CPU) every rank builds the same data, backbone and learner from the same seeds, so every
rank sees the same few-shot sample, the same initial context and the same global batch order; work is split by rank
``r`` of ``W`` and gathered, so that the run equals the single-process run up to float rounding:

- **Feature extraction** (test/val features, the ``cached:K`` views): rank ``r`` loads and encodes the contiguous
  shard ``records[lo_r:hi_r]`` (:meth:`~Execution.shard_range`; views: of the flat view-major (view, image) list) and
  :meth:`~Execution.gather_rows` concatenates the shards in rank order, so every rank ends with the full ``[N, E]``
  in record order. A view's augmentation is seeded per (seed, view, image) (:mod:`vlprompt.features.views`), so it
  does not matter which rank draws it. Only rank 0 reads and writes the feature cache and the run folder
  (:meth:`~Execution.on_main`, :meth:`~Execution.cached`); the others wait for it, then receive its result.
- **Text encoding** (training and evaluation): the ``C`` class prompts are split the same way; rank ``r`` encodes
  ``[C_r, L, D] → [C_r, E]`` and :meth:`~Execution.all_gather_rows` gives every rank the full ``[C, E]`` *with
  gradient support*: its backward sums the ``[C, E]`` gradient over ranks (an all-reduce, which gloo also supports
  for uneven shards, where a reduce-scatter would not) and returns rank ``r``'s rows ``[C_r, E]``. Conditional
  learners (CoCoOp) are not class-sharded (their prompts depend on the rank's own images), nor are fewer classes
  than ranks; the gradient all-reduce below keeps those exact too.
- **The image batch**: every rank draws the same global batch ``[B, ...]`` and keeps its rows ``[B_r, ...]``
  (:class:`BatchShard`, from :meth:`~Execution.batch_shard`). Its loss is its own
  training loss (mean cross-entropy over its ``B_r`` rows, plus any regularizer of the gathered text features) times
  ``B_r / B``; these shares sum to 1, so the ranks' losses sum to the single-process loss. Backward on rank ``r``
  gives the gradient of its own loss through its ``[B_r, C]`` logits; the gather's backward adds the other ranks'
  contributions to its classes' text features, and the learner's gradients are summed over ranks, so every rank
  holds ``dL/dθ`` of the global loss and takes the same SGD step. The logged loss and accuracy are summed over ranks,
  so a NaN stops every rank at once.

Shapes per step on rank ``r`` (``B`` global batch, ``C`` classes, ``E`` embedding, ``L`` tokens, ``D`` width):
``images [B_r, 3, H, W] → img [B_r, E]``; ``prompts [C_r, L, D] → text_r [C_r, E] → (gather) text [C, E]``;
``logits [B_r, C] = s · img @ text.T``; loss ``()``; learner gradients all-reduced (``M × D`` floats for CoOp).

Design choice: logits stay sharded by image rows (rather than gathering all images and computing the full
``[B, C]`` on every rank), so no rank repeats another's work and the text encoder's activations are those of
``C / W`` classes. Under torchrun the image loader still decodes and augments the whole global batch on every rank
(``--augment online``): that keeps the augmentation RNG stream identical to the single-process run; only the
image encoder is sharded.

Errors: work done on rank 0 alone that fails there fails on every rank, as the same class with the same message
(:func:`vlprompt.errors.describe_error` / :func:`~vlprompt.errors.rebuild_error`), so no rank waits in a later
collective. Resuming: rank 0 reads the saved state and :meth:`~Execution.sync_train_state` hands learner, optimizer
and RNG states to the others. Only rank 0 needs the run folder; every node needs the dataset at the same path.

Below this module (the rest of the library calls only this one): :mod:`vlprompt.engine.launch` (joining the
launch, the process group) and :mod:`vlprompt.engine.collectives` (the ``torch.distributed`` calls).
:mod:`vlprompt.engine.distributed` keeps the old free functions for existing callers.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np
import torch
import torch.distributed as dist

from vlprompt.engine import collectives as _c
from vlprompt.engine.launch import active, local_device, process_group
from vlprompt.errors import ConfigError

T = TypeVar("T")


@runtime_checkable
class Execution(Protocol):
    """How a run's work is shared: the members the library calls (attributes are plain values, fixed for a run)."""

    rank: int  #: this process's rank (0 in one process)
    world_size: int  #: the number of processes sharing the work (1 in one process)
    device: torch.device  #: where this process computes (under torchrun: ``cuda:$LOCAL_RANK`` for a CUDA run)
    is_main: bool  #: rank 0: the one that writes files, logs and shows progress bars

    def shard_range(self, n: int) -> tuple[int, int]:
        """This rank's contiguous rows ``[lo, hi)`` of ``n`` (``torch.tensor_split``'s sizes, in rank order)."""

    def gather_rows(self, local: torch.Tensor, n: int) -> torch.Tensor:
        """Every rank's ``[n_r, *]`` (its :meth:`shard_range` rows) → the full ``[n, *]`` on every rank; no gradient."""

    def all_gather_rows(self, local: torch.Tensor, n: int) -> torch.Tensor:
        """:meth:`gather_rows` whose backward sums the ``[n, *]`` gradient over ranks and keeps this rank's rows."""

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over ranks of a small tensor (on its own device): the global loss, counts, gradients."""

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (pickled in memory: small objects and decisions)."""

    def broadcast_tensor(self, t: torch.Tensor | None) -> torch.Tensor:
        """Rank 0's tensor on every rank (``t`` is ignored elsewhere)."""

    def barrier(self) -> None:
        """Wait until every rank is here."""

    def on_main(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` on rank 0 only, its result on every rank; its error raised on every rank as the
        same class with the same message (the other ranks wait: the barrier for files only rank 0 writes)."""

    def cached(self, cache: Any, key: dict, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``cache.get(key)``, else ``compute()`` stored with ``cache.put(key, ·)``: rank 0 alone reads and writes
        ``cache`` (a :class:`~vlprompt.features.cache.FeatureCache`); ``compute`` runs on every rank (it may be a
        collective, e.g. a sharded extraction). The tensor on every rank."""

    def batch_shard(self) -> BatchShard | None:
        """The splitter of each global training batch over ranks (``None`` in one process: nothing to split)."""

    def sync_train_state(self, learner: torch.nn.Module, optimizer: torch.optim.Optimizer,
                         generator: torch.Generator | None, scaler: torch.amp.GradScaler | None = None) -> None:
        """Give every rank rank 0's learner, optimizer, GradScaler and RNG states (after a resume)."""


class SingleProcess:
    """One process does all the work: every member is the plain computation (no communication at all)."""

    rank, world_size, is_main = 0, 1, True

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)

    def __repr__(self) -> str:
        return f"SingleProcess(device={self.device})"

    def shard_range(self, n: int) -> tuple[int, int]:
        return 0, n

    def gather_rows(self, local: torch.Tensor, n: int) -> torch.Tensor:
        return local

    all_gather_rows = gather_rows

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        return values

    def broadcast(self, obj: T) -> T:
        return obj

    def broadcast_tensor(self, t: torch.Tensor | None) -> torch.Tensor:
        assert t is not None, "one process broadcasts its own tensor"
        return t

    def barrier(self) -> None:
        return None

    def on_main(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return fn(*args, **kwargs)

    def cached(self, cache: Any, key: dict, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        return cache.get_or_compute(key, compute)

    def batch_shard(self) -> None:
        return None

    def sync_train_state(self, learner: torch.nn.Module, optimizer: torch.optim.Optimizer,
                         generator: torch.Generator | None, scaler: torch.amp.GradScaler | None = None) -> None:
        return None


class Torchrun:
    """This process is rank :attr:`rank` of :attr:`world_size` in an open process group (NCCL or gloo).

    Made by :func:`open_execution` inside its block; valid while the group is open.
    """

    def __init__(self, device: torch.device) -> None:
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            raise RuntimeError("Torchrun needs an open process group of more than one process (open_execution).")
        self.device = device
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.is_main = self.rank == 0

    def __repr__(self) -> str:
        return f"Torchrun(rank={self.rank}, world_size={self.world_size}, device={self.device})"

    def shard_range(self, n: int) -> tuple[int, int]:
        return _c.shard_range(n, self.rank, self.world_size)

    def gather_rows(self, local: torch.Tensor, n: int) -> torch.Tensor:
        return _c.gather_rows(local, n, self.rank, self.world_size)

    def all_gather_rows(self, local: torch.Tensor, n: int) -> torch.Tensor:
        return _c.all_gather_rows(local, n, self.rank, self.world_size)

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        return _c.all_reduce_sum(values)

    def broadcast(self, obj: T) -> T:
        return _c.broadcast_object(obj)

    def broadcast_tensor(self, t: torch.Tensor | None) -> torch.Tensor:
        return _c.broadcast_tensor(t)

    def barrier(self) -> None:
        dist.barrier()

    def on_main(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return _c.main_then_share(self.is_main, fn, *args, **kwargs)

    def cached(self, cache: Any, key: dict, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        return _c.cached_on_main(lambda: cache.get(key), compute, lambda t: cache.put(key, t), self.is_main)

    def batch_shard(self) -> BatchShard:
        return BatchShard(self)

    def sync_train_state(self, learner: torch.nn.Module, optimizer: torch.optim.Optimizer,
                         generator: torch.Generator | None, scaler: torch.amp.GradScaler | None = None) -> None:
        _sync_train_state(self, learner, optimizer, generator, scaler)


@contextlib.contextmanager
def open_execution(device: torch.device) -> Iterator[Execution]:
    """The execution of a run on ``device``, for the duration of the block (made once, at the top of a run).

    Launched by torchrun (``WORLD_SIZE`` > 1), joins the process group (:func:`vlprompt.engine.launch.process_group`:
    NCCL for CUDA, gloo for the CPU; a group the caller opened is used and left open) and yields a :class:`Torchrun`
    on this rank's device (``cuda:$LOCAL_RANK`` for a CUDA device); otherwise a :class:`SingleProcess` on ``device``.

    Raises:
        DistributedError: ``WORLD_SIZE`` > 1 but the rendezvous fails (names ``MASTER_ADDR``/``MASTER_PORT``).
    """
    with process_group(device):
        yield Torchrun(local_device(device)) if active() else SingleProcess(local_device(device))


def current_execution() -> Execution:
    """The execution for code called without one (callers written before :class:`Execution`): a :class:`Torchrun`
    inside an open :func:`vlprompt.engine.launch.process_group` block of more than one process, else a
    :class:`SingleProcess` (its :attr:`~Execution.device` is then only the CPU or this rank's current CUDA device:
    the collectives are what such callers use). The run functions never call this: they pass theirs."""
    if not active():
        return _SINGLE
    nccl = dist.get_backend() == "nccl"
    return Torchrun(torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu"))


_SINGLE = SingleProcess()


def resolve(execution: Execution | None) -> Execution:
    """``execution``, or :func:`current_execution` when ``None`` (the default of every library entry point)."""
    return current_execution() if execution is None else execution


class BatchShard:
    """This rank's rows of each global batch, and the scaling that makes the ranks' losses add up to one run.

    Per global batch: :meth:`split` it, multiply this rank's loss (a mean over its ``B_r`` rows, plus any
    regularizer computed from the gathered text features) by :attr:`share` ``= B_r / B`` (the shares sum to 1, so
    the ranks' losses sum to the global mean plus the regularizer once), get the global loss and accuracy with
    :meth:`stats`, and call :meth:`reduce_grads` between ``backward()`` and ``optimizer.step()``. ``execution``:
    the run's (``None``: :func:`current_execution`).
    """

    def __init__(self, execution: Execution | None = None) -> None:
        self.execution = resolve(execution)
        self.total = 0  # B: rows of the current global batch
        self.share = 1.0  # B_r / B

    def split(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [B, ...]``, ``y [B]`` → this rank's rows ``[B_r, ...]``, ``[B_r]``.

        Raises:
            ConfigError: the batch has fewer rows than there are processes (a rank would have no image).
        """
        self.total, w = y.shape[0], self.execution.world_size
        if self.total < w:
            raise ConfigError(f"a training batch holds {self.total} images but {w} processes share it; launch fewer "
                              "processes (torchrun --nproc_per_node) or use more training images.")
        lo, hi = self.execution.shard_range(self.total)
        self.share = (hi - lo) / self.total
        return x[lo:hi], y[lo:hi]

    def stats(self, loss: torch.Tensor, correct: torch.Tensor, rows: int) -> tuple[float, int, int]:
        """Global ``(loss, correct predictions, rows)`` from this rank's loss share, correct count and rows."""
        out = self.execution.all_reduce_sum(torch.stack([
            loss.detach().double().reshape(()), correct.double().reshape(()),
            torch.tensor(float(rows), dtype=torch.float64, device=correct.device)]))
        return float(out[0]), int(out[1]), int(out[2])

    def reduce_grads(self, optimizer: torch.optim.Optimizer) -> None:
        """Sum the gradients of the optimizer's parameters over ranks (one flat all-reduce).

        A parameter that has no gradient on any rank keeps ``grad = None`` (as SGD expects: no decay, no momentum).
        """
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if not params:
            return
        device = params[0].device
        grads = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(device) for p in params]
        has = torch.tensor([p.grad is not None for p in params], dtype=params[0].dtype, device=device)  # (P,)
        flat = self.execution.all_reduce_sum(torch.cat([*grads, has]))  # (Σ numel + P,)
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


def _sync_train_state(execution: Execution, learner: torch.nn.Module, optimizer: torch.optim.Optimizer,
                      generator: torch.Generator | None, scaler: torch.amp.GradScaler | None) -> None:
    """:meth:`Torchrun.sync_train_state`: rank 0's states, broadcast and loaded on the other ranks."""
    state = None
    if execution.is_main:
        state = {
            "learner": _to_cpu(learner.state_dict()),
            "optimizer": _to_cpu(optimizer.state_dict()),  # tensors are re-placed on each rank's parameters
            "scaler": scaler.state_dict() if scaler is not None else None,
            "generator": generator.get_state() if generator is not None else None,
            "torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
        }
    state = execution.broadcast(state)
    if execution.is_main:
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


__all__ = ["BatchShard", "Execution", "SingleProcess", "Torchrun", "current_execution", "open_execution", "resolve"]
