"""The official CoOp learning-rate schedule and epoch counts (reference §2.1–2.2).

Epoch 1 runs at a constant warm-up lr (1e-5); from epoch 2 a cosine over ``T = max_epoch`` starting at the base lr,
stepped once per epoch and shifted by the warm-up (Dassl's ``ConstantWarmupScheduler`` with ``WARMUP_RECOUNT``), so
it never reaches 0: ``lr(e) = base · ½(1 + cos(π (e − 1 − W) / T))`` for ``e > W``.
"""

from __future__ import annotations

from vlprompt.schedule import dassl_cosine_lr


def coop_lr(epoch: int, max_epoch: int, base_lr: float = 0.002, warmup_epochs: int = 1, warmup_lr: float = 1e-5) -> float:
    """Learning rate of 1-indexed ``epoch`` under the official schedule (:func:`vlprompt.schedule.dassl_cosine_lr`
    with CoOp's defaults)."""
    return dassl_cosine_lr(epoch, max_epoch, base_lr, warmup_epochs, warmup_lr)


def default_epochs(shots: int | None, dataset: str | None = None) -> int:
    """Official CoOp MAX_EPOCH: 50 for 1 shot, 100 for 2–4, 200 for 8–16 (and all data); a benchmark with its own
    count (ImageNet: 50 always) takes that. Kept for existing callers: the recipe resolver's
    :func:`vlprompt.engine.recipe.coop_epochs`, which owns the rule."""
    from vlprompt.engine.recipe import coop_epochs

    return coop_epochs(shots, dataset)
