"""Collectives between the ranks of a process group: contiguous row shards and their gathering (with gradient
support), sums and broadcasts, and work done on rank 0 only (:func:`on_main`, whose errors reach every rank as the
same class). Used by :mod:`vlprompt.engine.execution` (the execution strategy, where the design is described);
:mod:`vlprompt.engine.distributed` re-exports every name for older callers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from vlprompt import errors
from vlprompt.engine.launch import active, is_main, rank, world_size
from vlprompt.errors import DistributedError

T = TypeVar("T")


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


def _gather(local: torch.Tensor, n: int, me: int, w: int) -> torch.Tensor:
    """Concatenate every rank's shard ``[n_r, *]`` (as :func:`shard_range`) into ``[n, *]`` on ``local``'s device
    (``me``: this rank, of ``w``)."""
    sizes = [shard_range(n, r, w) for r in range(w)]
    lo, hi = sizes[me]
    if local.shape[0] != hi - lo:
        raise DistributedError(f"rank {me} holds {local.shape[0]} rows but its shard of {n} is rows {lo}:{hi}.")
    width = max(hi - lo for lo, hi in sizes)  # all_gather needs equal shapes: pad every shard to the largest
    padded = local.new_zeros((width, *local.shape[1:]), device=_comm_device())
    padded[: local.shape[0]] = local.detach()
    parts = [torch.empty_like(padded) for _ in range(w)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[: hi - lo] for p, (lo, hi) in zip(parts, sizes, strict=True)]).to(local.device)


def gather_rows(local: torch.Tensor, n: int, r: int | None = None, w: int | None = None) -> torch.Tensor:
    """Every rank's shard ``[n_r, *]`` of ``n`` rows (:func:`shard_range`) → the full ``[n, *]`` on every rank.

    No gradient flows back (see :func:`all_gather_rows`). ``r``/``w``: this rank and the world size (``None``: of
    the open :func:`~vlprompt.engine.launch.process_group`).
    """
    return _gather(local, n, rank() if r is None else r, world_size() if w is None else w)


class _AllGatherRows(torch.autograd.Function):
    """Gather row shards; backward: this rank's rows of the gradient summed over ranks."""

    @staticmethod
    def forward(ctx: Any, local: torch.Tensor, n: int, r: int, w: int) -> torch.Tensor:
        ctx.n, ctx.r, ctx.w = n, r, w
        return _gather(local, n, r, w)  # (n, *)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        # grad (n, *) is dL_r/d(all rows) for this rank's loss L_r; Σ_r of it is dL/d(all rows) for L = Σ_r L_r.
        total = grad.to(_comm_device(), copy=True).contiguous()
        dist.all_reduce(total)
        lo, hi = shard_range(ctx.n, ctx.r, ctx.w)
        return total[lo:hi].to(grad.device), None, None, None  # (n_r, *)


def all_gather_rows(local: torch.Tensor, n: int, r: int | None = None, w: int | None = None) -> torch.Tensor:
    """:func:`gather_rows` with gradient support: ``[n_r, *]`` per rank → ``[n, *]`` on every rank.

    The backward pass sums the ``[n, *]`` gradient over ranks and hands each rank its own rows, so with per-rank
    losses ``L_r`` (summing to the global loss) each rank gets ``dL/d(its rows)``. Every rank must run the backward
    (it is a collective). ``r``/``w`` as in :func:`gather_rows`.
    """
    return _AllGatherRows.apply(local, n, rank() if r is None else r, world_size() if w is None else w)


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
    sending = dist.get_rank() == src
    meta = broadcast_object((tuple(t.shape), t.dtype) if sending else None, src)
    buf = t.to(_comm_device()).contiguous() if sending else torch.empty(meta[0], dtype=meta[1], device=_comm_device())
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
    return main_then_share(is_main(), fn, *args, **kwargs)


def main_then_share(main: bool, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """:func:`on_main` in an open group of several processes (``main``: whether this process is rank 0)."""
    outcome: tuple[str, Any] = ("ok", None)
    if main:
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
                   put: Callable[[torch.Tensor], None], main: bool | None = None) -> torch.Tensor:
    """A cached tensor under a process group: rank 0 looks it up (``get``) and shares it; on a miss every rank
    runs ``compute`` (a collective, e.g. sharded extraction) and rank 0 stores the result (``put``) while the others
    wait. Returns the tensor on every rank (on the CPU). ``main``: whether this process is rank 0 of an open group of
    several (``None``: :func:`on_main` decides from the open :func:`~vlprompt.engine.launch.process_group`)."""
    found: dict[str, torch.Tensor | None] = {}

    def run0(fn: Callable[..., T], *args: Any) -> T:
        return on_main(fn, *args) if main is None else main_then_share(main, fn, *args)

    def lookup() -> bool:
        found["t"] = get()
        return found["t"] is not None

    if run0(lookup):  # only the decision is pickled; the tensor goes by broadcast
        return broadcast_tensor(found.get("t"))
    t = compute()
    run0(put, t)
    return t


__all__ = ["all_gather_rows", "all_reduce_sum", "broadcast_object", "broadcast_tensor", "cached_on_main",
           "gather_rows", "main_then_share", "on_main", "shard_range"]
