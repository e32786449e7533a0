"""Dassl's learning-rate schedule, written once for every trainer (prompt learners and feature-space adapters).

``OPTIM.LR_SCHEDULER "cosine"`` with ``WARMUP_TYPE "constant"`` and ``WARMUP_RECOUNT`` (``Dassl.pytorch:
dassl/optim/lr_scheduler.py``: ``ConstantWarmupScheduler`` around ``CosineAnnealingLR(T_max=MAX_EPOCH)``, stepped
once per epoch): the first ``W`` epochs run at the constant warm-up lr; from epoch ``W + 1`` a cosine over
``T = max_epoch`` restarts from the base lr, so it never reaches 0:
``lr(e) = base · ½(1 + cos(π (e − 1 − W) / T))`` for ``e > W``. A foundation module: the adapters layer may import
only the foundation, and the engine's CoOp schedule is the same formula.
"""

from __future__ import annotations

import math


def dassl_cosine_lr(epoch: int, max_epoch: int, base_lr: float, warmup_epochs: int, warmup_lr: float) -> float:
    """Learning rate of 1-indexed ``epoch`` of ``max_epoch`` (see the module docstring).

    Raises:
        ValueError: ``epoch`` outside ``1..max_epoch``.
    """
    if not 1 <= epoch <= max_epoch:
        raise ValueError(f"epoch {epoch} outside 1..{max_epoch}")
    if epoch <= warmup_epochs:
        return warmup_lr
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - 1 - warmup_epochs) / max_epoch))


__all__ = ["dassl_cosine_lr"]
