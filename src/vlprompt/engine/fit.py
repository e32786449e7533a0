"""The training loop: a plain SGD loop over the prompt learner's parameters only (reference §2.1)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator

import torch
from tqdm.auto import tqdm

from vlprompt.engine.config import TrainConfig
from vlprompt.engine.execution import Execution, resolve
from vlprompt.engine.model import PromptModel
from vlprompt.engine.schedule import coop_lr
from vlprompt.errors import (
    ConfigError,
    TrainingDivergedError,  # re-exported (defined with every vlprompt error)
)
from vlprompt.features.extract import autocast_context

_logger = logging.getLogger(__name__)


class FeatureBankBatches:
    """Batches from precomputed, L2-normalised image features ``[V, N, E]`` (V views per image).

    Each epoch shuffles the images with ``generator`` (like a RandomSampler) and, for ``V > 1``, draws one view per
    image. ``drop_last`` follows the official rule: only when there are at least ``batch_size`` images.
    """

    def __init__(self, bank: torch.Tensor, labels: torch.Tensor, batch_size: int, generator: torch.Generator):
        self.bank, self.labels, self.batch_size, self.generator = bank, labels, batch_size, generator

    def __len__(self) -> int:
        n = self.labels.numel()
        return n // self.batch_size if n >= self.batch_size else 1

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = self.labels.numel()
        perm = torch.randperm(n, generator=self.generator)
        views = torch.randint(self.bank.shape[0], (n,), generator=self.generator)
        for b in range(len(self)):
            idx = perm[b * self.batch_size : (b + 1) * self.batch_size]
            yield self.bank[views[idx], idx], self.labels[idx]  # (B, E), (B,)


def divergence_message(loss: float, epoch: int, step: int, cfg: TrainConfig) -> str:
    """What went wrong (epoch and step) and what to try, depending on the precision."""
    if cfg.precision == "fp16":
        hint = ("with --precision fp16 this is usually an overflow of the fp16 weights or context: rerun with "
                "--precision amp (on a GPU) or --precision fp32, or a lower --lr")
    elif cfg.precision == "amp":
        hint = "with --precision amp this can be an fp16 overflow: rerun with --precision fp32, or a lower --lr"
    else:
        hint = f"the optimisation diverged at --precision fp32: rerun with a lower --lr (now {cfg.base_lr:g})"
    return (f"the training loss became {loss} at epoch {epoch}, step {step}; training stopped instead of continuing on "
            f"garbage ({hint}; the run folder stays unfinished: rerun with --overwrite).")


def make_optimizer(learner: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The official optimizer: SGD over the learner's trainable parameters only."""
    params = [p for p in learner.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=cfg.base_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def make_scaler(cfg: TrainConfig, device: torch.device) -> torch.amp.GradScaler | None:
    """A GradScaler when ``--precision amp`` runs fp16 autocast (CUDA without bf16), else ``None``."""
    use = cfg.precision == "amp" and device.type == "cuda" and not torch.cuda.is_bf16_supported()
    return torch.amp.GradScaler("cuda") if use else None


class _TrainStep:
    """One optimiser step of :func:`fit` on one batch, the hot path: the image features (frozen tower, no grad),
    the training loss under autocast, the divergence check, backward (scaled under fp16 autocast), the gradient
    all-reduce over ranks, the (scaled) SGD step. Holds what every step shares, so the loop reads as a loop."""

    def __init__(self, model: PromptModel, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
                 cfg: TrainConfig, images_are_features: bool, execution: Execution):
        self.model, self.optimizer, self.scaler, self.cfg = model, optimizer, scaler, cfg
        self.device, self.images_are_features = model.backbone.device, images_are_features
        self.shard = execution.batch_shard()  # over several ranks: batch rows split over them; else None

    def set_lr(self, lr: float) -> float:
        """Set the learning rate of every parameter group (once per epoch); returns ``lr``."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def __call__(self, x: torch.Tensor, y: torch.Tensor, epoch: int, step: int) -> tuple[float, int, int]:
        """Train on ``x [B, ...]``, ``y [B]``; returns the (global) ``(mean loss, correct predictions, rows)``.

        Raises:
            TrainingDivergedError: the loss is not finite (before the step: the parameters stay as they were).
        """
        model, device, cfg, shard, scaler, optimizer = (self.model, self.device, self.cfg, self.shard, self.scaler,
                                                        self.optimizer)
        if shard is not None:
            x, y = shard.split(x, y)  # this rank's rows of the global batch: (B_r, ...), (B_r,)
        y = y.to(device)
        images = None if self.images_are_features else x.to(device)  # (B, 3, H, W)
        if self.images_are_features:
            img = x.to(device)
        elif model.learner.prompts_image:  # the prompted image tower runs inside the loss, with autograd
            img = None
        else:
            with torch.no_grad(), autocast_context(device, cfg.precision):
                img = model.image_features(images)
        with autocast_context(device, cfg.precision):
            # cross-entropy plus the learner's own terms, if it has any (KgCoOp, PromptSRC)
            loss, logits = model.training_loss(img, y, images)  # (), (B, C)
        if shard is None:
            step_loss, step_correct, rows = loss.item(), (logits.argmax(-1) == y).sum().item(), y.numel()
        else:  # this rank's share of the global loss; loss, correct count and rows summed over ranks
            loss = loss * shard.share
            step_loss, step_correct, rows = shard.stats(loss, (logits.argmax(-1) == y).sum(), y.numel())
        if not math.isfinite(step_loss):
            raise TrainingDivergedError(divergence_message(step_loss, epoch, step, cfg))
        optimizer.zero_grad(set_to_none=True)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if shard is not None:
            shard.reduce_grads(optimizer)  # Σ over ranks: every rank holds the global gradient
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        return step_loss, step_correct, rows


def _epoch_record(epoch: int, epochs: int, lr: float, total_loss: float, correct: int, seen: int, t0: float) -> dict:
    """An epoch's entry of :func:`fit`'s history (loss and accuracy over the rows seen), logged."""
    record = {
        "epoch": epoch,
        "lr": lr,
        "loss": total_loss / max(seen, 1) if seen else math.nan,
        "train_accuracy": 100.0 * correct / max(seen, 1),
        "seconds": time.perf_counter() - t0,
    }
    _logger.info("epoch %d/%d lr %.3e loss %.4f acc %.2f", epoch, epochs, lr, record["loss"],
                 record["train_accuracy"])
    return record


def fit(model: PromptModel, batches: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]] | FeatureBankBatches,
        cfg: TrainConfig, epochs: int, *, images_are_features: bool, progress: bool = False,
        on_epoch: Callable[[dict], None] | None = None, on_step: Callable[[dict], None] | None = None,
        start_epoch: int = 1, optimizer: torch.optim.Optimizer | None = None,
        scaler: torch.amp.GradScaler | None | str = "auto", execution: Execution | None = None) -> list[dict]:
    """Train ``model.learner`` with the official recipe and return one record per epoch.

    Args:
        model: prompt model (backbone frozen; only ``model.learner`` parameters are optimised).
        batches: an iterable of ``(images, labels)`` per epoch (a DataLoader) or, when ``images_are_features``,
            of ``(normalised image features, labels)``.
        cfg: optimisation settings.
        epochs: MAX_EPOCH.
        images_are_features: whether batches carry features instead of images.
        progress: show a progress bar over epochs.
        on_epoch: called with each epoch's record (used to append ``history.jsonl``).
        on_step: called after every optimiser step with ``{"epoch", "step" (1-based in the epoch), "global_step"
            (optimiser steps so far over all epochs, counting ``start_epoch - 1`` earlier epochs of ``len(batches)``
            steps, so it continues on resume), "loss", "accuracy" (percent), "lr", "rows"}`` (the global batch's
            values under torchrun). Used for TensorBoard (:mod:`vlprompt.engine.tracking`); ``None`` costs nothing.
        start_epoch: first epoch to run (for resuming).
        optimizer: an existing optimizer (for resuming); built with :func:`make_optimizer` when ``None``.
        scaler: the GradScaler for ``--precision amp`` with fp16 autocast (for resuming), ``None`` for none, or
            ``"auto"`` to build one with :func:`make_scaler`.
        execution: the run's execution strategy (over several ranks: each takes its rows of every global batch and
            the gradients are summed); ``None``: :func:`vlprompt.engine.execution.current_execution`.

    Returns:
        ``[{"epoch", "lr", "loss", "train_accuracy", "seconds"}, ...]``.
    """
    if images_are_features and model.learner.prompts_image:
        raise ConfigError(f"method '{model.learner.method}' prompts the image tower, so it trains on images, not "
                          "cached features: give fit() image batches (--augment online, or none for unaugmented "
                          "images; 'cached:K' views are features and cannot be used).")
    optimizer = make_optimizer(model.learner, cfg) if optimizer is None else optimizer
    scaler = make_scaler(cfg, model.backbone.device) if isinstance(scaler, str) else scaler
    train_step = _TrainStep(model, optimizer, scaler, cfg, images_are_features, resolve(execution))
    history = []
    # optimiser steps before start_epoch (every epoch has len(batches) steps); only needed for on_step
    global_step = (start_epoch - 1) * len(batches) if on_step is not None else 0
    model.learner.train()
    bar = tqdm(range(start_epoch, epochs + 1), desc="train", unit="epoch", disable=not progress, leave=False)
    try:
        for epoch in bar:
            t0 = time.perf_counter()
            lr = train_step.set_lr(coop_lr(epoch, epochs, cfg.base_lr, cfg.warmup_epochs, cfg.warmup_lr))
            total_loss, correct, seen = 0.0, 0, 0
            for step, (x, y) in enumerate(batches, start=1):
                step_loss, step_correct, rows = train_step(x, y, epoch, step)
                total_loss += step_loss * rows
                correct += step_correct
                seen += rows
                if on_step is not None:  # the values are host floats already (the divergence check needs them)
                    global_step += 1
                    on_step({"epoch": epoch, "step": step, "global_step": global_step, "loss": step_loss,
                             "accuracy": 100.0 * step_correct / max(rows, 1), "lr": lr, "rows": rows})
            model.learner.on_epoch_end(epoch, epochs)  # before on_epoch saves the resumable state
            record = _epoch_record(epoch, epochs, lr, total_loss, correct, seen, t0)
            history.append(record)
            bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['train_accuracy']:.1f}")
            if on_epoch is not None:
                on_epoch(record, optimizer)
    finally:
        bar.close()  # clears the bar, so that an error message starts on a clean line
    model.learner.finalize()
    model.learner.eval()
    return history
