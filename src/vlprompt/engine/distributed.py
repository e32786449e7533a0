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
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from vlprompt import errors
from vlprompt.errors import ConfigError, DistributedError  # DistributedError: re-exported

_logger = logging.getLogger(__name__)
T = TypeVar("T")

#: How long a collective waits for the other ranks before failing (PyTorch's own default for gloo).
TIMEOUT = timedelta(minutes=30)
#: Environment variables ``torchrun`` sets for every worker.
LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def launched() -> bool:
    """Whether this process was started by ``torchrun`` with more than one process (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


_inside = 0  # how many process_group() blocks are open: vlprompt shares work only inside one


def active() -> bool:
    """Whether work is shared over ranks: inside :func:`process_group` with more than one process (every hook
    checks this first). A process group the caller opened elsewhere (say, a DDP script calling the library on rank 0
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
    already initialised is used as it is and left open (inside the block only: see :func:`active`). While the group is open, ranks other than 0 log errors
    only (the root and ``vlprompt`` loggers), so each message appears once.

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


def shard_range(n: int, r: int | None = None, w: int | None = None) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of rank ``r`` when ``n`` rows are split over ``w`` ranks in contiguous shards.

    The first ``n % w`` ranks get one row more (as ``torch.tensor_split``); concatenating the shards in rank order
    gives the rows back in order.
    """
    r = rank() if r is None else r
    w = world_size() if w is None else w
    base, extra = divmod(n, w)
    lo = r * base + min(r, extra)
    return lo, lo + base + (r < extra)


def _comm_device() -> torch.device:
    """Where tensors must be for a collective: the current CUDA device under NCCL, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def _gather(local: torch.Tensor, n: int) -> torch.Tensor:
    """Concatenate every rank's shard ``[n_r, *]`` (as :func:`shard_range`) into ``[n, *]`` on ``local``'s device."""
    w = world_size()
    sizes = [shard_range(n, r, w) for r in range(w)]
    lo, hi = sizes[rank()]
    if local.shape[0] != hi - lo:
        raise DistributedError(f"rank {rank()} holds {local.shape[0]} rows but its shard of {n} is rows {lo}:{hi}.")
    width = max(hi - lo for lo, hi in sizes)  # all_gather needs equal shapes: pad every shard to the largest
    padded = local.new_zeros((width, *local.shape[1:]), device=_comm_device())
    padded[: local.shape[0]] = local.detach()
    parts = [torch.empty_like(padded) for _ in range(w)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[: hi - lo] for p, (lo, hi) in zip(parts, sizes, strict=True)]).to(local.device)


def gather_rows(local: torch.Tensor, n: int) -> torch.Tensor:
    """Every rank's shard ``[n_r, *]`` of ``n`` rows (:func:`shard_range`) → the full ``[n, *]`` on every rank.

    No gradient flows back (see :func:`all_gather_rows`).
    """
    return _gather(local, n)


class _AllGatherRows(torch.autograd.Function):
    """Gather row shards; backward: this rank's rows of the gradient summed over ranks."""

    @staticmethod
    def forward(ctx: Any, local: torch.Tensor, n: int) -> torch.Tensor:
        ctx.n = n
        return _gather(local, n)  # (n, *)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        # grad (n, *) is dL_r/d(all rows) for this rank's loss L_r; Σ_r of it is dL/d(all rows) for L = Σ_r L_r.
        total = grad.to(_comm_device(), copy=True).contiguous()
        dist.all_reduce(total)
        lo, hi = shard_range(ctx.n)
        return total[lo:hi].to(grad.device), None  # (n_r, *)


def all_gather_rows(local: torch.Tensor, n: int) -> torch.Tensor:
    """:func:`gather_rows` with gradient support: ``[n_r, *]`` per rank → ``[n, *]`` on every rank.

    The backward pass sums the ``[n, *]`` gradient over ranks and hands each rank its own rows, so with per-rank
    losses ``L_r`` (summing to the global loss) each rank gets ``dL/d(its rows)``. Every rank must run the backward
    (it is a collective).
    """
    return _AllGatherRows.apply(local, n)


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over ranks of a small tensor (returned on its original device)."""
    total = values.to(_comm_device(), copy=True)
    dist.all_reduce(total)
    return total.to(values.device)


def broadcast_object(obj: T, src: int = 0) -> T:
    """``obj`` of rank ``src`` on every rank (pickled in memory; for small objects and control decisions)."""
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=_comm_device() if dist.get_backend() == "nccl" else None)
    return box[0]


def broadcast_tensor(t: torch.Tensor | None, src: int = 0) -> torch.Tensor:
    """Rank ``src``'s tensor on every rank (on the CPU; ``t`` is ignored on the other ranks)."""
    meta = broadcast_object((tuple(t.shape), t.dtype) if rank() == src else None, src)
    buf = t.to(_comm_device()).contiguous() if rank() == src else torch.empty(meta[0], dtype=meta[1],
                                                                               device=_comm_device())
    dist.broadcast(buf, src=src)
    return buf.cpu()


def on_main(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``fn(*args, **kwargs)`` on rank 0 only and return its result on every rank.

    The other ranks wait for rank 0 (this is the barrier for files only rank 0 writes). If ``fn`` raises on rank 0,
    every rank raises (the other ranks a copy of the error, :func:`vlprompt.errors.rebuild_error`: the same
    vlprompt or built-in class with the same message, an ``OSError`` with its ``errno`` and file names; anything
    else as a :class:`DistributedError` naming it), so no rank is left waiting in a later collective. Outside a
    process group, simply ``fn(*args, **kwargs)``.
    """
    if not active():
        return fn(*args, **kwargs)
    outcome: tuple[str, Any] = ("ok", None)
    if is_main():
        try:
            outcome = ("ok", fn(*args, **kwargs))
        except BaseException as e:
            broadcast_object(("error", errors.describe_error(e)))
            raise
    status, value = broadcast_object(outcome)
    if status == "error":
        raise errors.rebuild_error(value)
    return value


def cached_on_main(get: Callable[[], torch.Tensor | None], compute: Callable[[], torch.Tensor],
                   put: Callable[[torch.Tensor], None]) -> torch.Tensor:
    """A cached tensor under a process group: rank 0 looks it up (``get``) and shares it; on a miss every rank
    runs ``compute`` (a collective, e.g. sharded extraction) and rank 0 stores the result (``put``) while the others
    wait. Returns the tensor on every rank (on the CPU)."""
    found: dict[str, torch.Tensor | None] = {}

    def lookup() -> bool:
        found["t"] = get()
        return found["t"] is not None

    if on_main(lookup):  # only the decision is pickled; the tensor goes by broadcast
        return broadcast_tensor(found.get("t"))
    t = compute()
    on_main(put, t)
    return t


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
    "BatchShard", "DistributedError", "active", "all_gather_rows", "all_reduce_sum", "broadcast_object",
    "broadcast_tensor", "cached_on_main", "gather_rows", "is_main", "launched", "local_device", "on_main",
    "process_group", "rank", "shard_range", "sync_train_state", "world_size",
]
