"""Tip-Adapter-F: Tip-Adapter whose cache keys are fine-tuned, on cached features.

Official code: ``gaopengcuhk/Tip-Adapter`` (commit ``d0e2d6f8``) ``main.py`` ``run_tip_adapter_F``; settings from
``configs/<dataset>.yaml`` (:data:`vlprompt.adapters.tip_adapter.OFFICIAL_CONFIGS`). The keys become
``nn.Linear(E, N, bias=False)`` initialised with the cache keys (the values stay one-hot), trained with
``AdamW(lr, eps=1e-4)`` (torch's defaults otherwise: weight decay 0.01, betas 0.9/0.999) under
``CosineAnnealingLR(train_epoch × steps per epoch)`` stepped every batch, batch 256 without dropping the last
partial batch, on the cross-entropy of the Tip-Adapter logits at the *initial* α and β. After every epoch the
accuracy at the initial α, β picks the best epoch (the first with the highest), whose keys are kept; then α and β
are searched as for Tip-Adapter, through the fine-tuned keys.

Deviations, both deliberate:

- The official code re-encodes freshly augmented images every epoch; here epoch ``e`` reads the cached
  augmented view ``e mod V`` of each training image (``AdapterData.views``; the rule CLIP-Adapter and TaskRes share,
  :func:`vlprompt.adapters.training.epoch_features`): no image encoder call during training.
  The batch order of epoch ``e`` is ``torch.randperm(N)`` drawn from one ``torch.Generator`` seeded with
  ``AdapterData.seed``.
- The official code picks the best epoch on the **test** set (and searches α, β on val): here the epoch is picked
  on the few-shot validation split; without one, the last epoch is kept and α, β stay at their initial values.
  Where no epoch classifies any validation image right, epoch 0 is kept (the official code would try to load a
  checkpoint it never wrote).

fp32 throughout (the official trains fp16 keys, as OpenAI's CLIP runs in fp16 on the GPU; see
:mod:`vlprompt.adapters.tip_adapter`).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from vlprompt.adapters.base import AdapterData, register_adapter
from vlprompt.adapters.tip_adapter import TipAdapter, normalise
from vlprompt.adapters.training import epoch_features
from vlprompt.errors import TrainingDivergedError

_logger = logging.getLogger(__name__)


@register_adapter
class TipAdapterF(TipAdapter):
    """Tip-Adapter-F (module docstring). State: ``adapter.weight [N, E]`` (the fine-tuned keys),
    ``cache_values [N, C]``, ``alpha``, ``beta``."""

    method = "tip-adapter-f"
    display_name = "Tip-Adapter-F"
    #: ``configs/*.yaml``: ``augment_epoch: 10``, ``lr: 0.001``, ``train_epoch: 20`` (EuroSAT 100); ``main.py``:
    #: ``batch_size=256`` for ``train_loader_F``.
    recipe = {**TipAdapter.recipe, "epochs": 20, "batch_size": 256, "lr": 0.001}

    def _set_keys(self, keys: torch.Tensor) -> None:
        # main.py: adapter = nn.Linear(E, N, bias=False); adapter.weight = nn.Parameter(cache_keys.t()): [N, E]
        self.adapter = nn.Linear(keys.shape[1], keys.shape[0], bias=False)
        self.adapter.weight = nn.Parameter(keys.clone())

    def _keys_name(self) -> str:
        return "adapter.weight"

    def _affinity(self, features: torch.Tensor) -> torch.Tensor:
        # the official adapter(features) = features @ weight.T, [B, N], transposed (see TipAdapter._affinity)
        return self.adapter.weight @ features.t()

    def _train(self, data: AdapterData, views: torch.Tensor, settings: dict[str, Any]) -> dict[str, Any]:
        """Fine-tune the keys (module docstring); returns the per-epoch record and the chosen epoch."""
        n, bs, epochs = int(data.train_labels.shape[0]), settings["batch_size"], settings["train_epoch"]
        steps = -(-n // bs)  # drop_last=False
        # fused: the same AdamW update in one pass over the [N, E] keys (not ~10); measured ≤ 1.5e-8 from the
        # per-tensor loop after 100 steps on unit-scale keys
        optimizer = torch.optim.AdamW(self.adapter.parameters(), lr=settings["lr"], eps=1e-4, fused=True)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps)
        generator = torch.Generator().manual_seed(int(data.seed))
        alpha, beta = settings["init_alpha"], settings["init_beta"]
        has_val = data.val is not None and data.val_labels is not None and data.val.shape[0] > 0
        history, best_acc, best_epoch, best_keys = [], -1.0, epochs - 1, None
        for epoch in range(epochs):
            perm = torch.randperm(n, generator=generator)
            # view epoch mod V (epoch_features counts from 1), or the test-transform features without views
            row = self._train_epoch(epoch_features(data, epoch + 1), data.train_labels, perm, bs, optimizer, alpha,
                                    beta, scheduler)
            row["epoch"] = epoch
            if has_val:
                row["val_accuracy"] = self.accuracy(data.val, data.val_labels, alpha, beta)
                if row["val_accuracy"] > best_acc:
                    best_acc, best_epoch = row["val_accuracy"], epoch
                    best_keys = self.adapter.weight.detach().clone()
            history.append(row)
            _logger.info("%s epoch %d/%d: %s", self.method, epoch + 1, epochs,
                         ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch"))
        if best_keys is not None:
            self.adapter.weight.data.copy_(best_keys)
        self.adapter.weight.requires_grad_(False)  # fitted: forward builds no graph
        return {"epochs": history, "chosen_epoch": best_epoch,
                "epoch_selected_on": "val" if has_val else "last epoch (no validation split)"}

    def _train_epoch(self, view: torch.Tensor, labels: torch.Tensor, perm: torch.Tensor, batch_size: int,
                     optimizer: torch.optim.Optimizer, alpha: float, beta: float,
                     scheduler: torch.optim.lr_scheduler.LRScheduler) -> dict[str, float]:
        """One epoch over ``view [N, E]`` in the order ``perm``: the official step (logits at the initial α, β,
        cross-entropy, AdamW step, scheduler step per batch)."""
        self.adapter.train()
        losses, correct = [], 0
        for start in range(0, perm.shape[0], batch_size):
            idx = perm[start:start + batch_size]
            target = labels[idx]
            logits = self.logits(normalise(view[idx]), alpha, beta)  # [b, C]
            loss = nn.functional.cross_entropy(logits, target)
            if not torch.isfinite(loss):
                raise TrainingDivergedError(f"{self.method}: the training loss became {float(loss.detach())}; rerun "
                                            f"with a lower lr (now {optimizer.param_groups[0]['lr']:g}).")
            correct += int((logits.argmax(dim=1) == target).sum())
            losses.append(loss.item())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        self.adapter.eval()
        return {"loss": sum(losses) / len(losses), "train_accuracy": 100.0 * correct / perm.shape[0],
                "lr": scheduler.get_last_lr()[0]}


__all__ = ["TipAdapterF"]
