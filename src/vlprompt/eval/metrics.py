"""Classification metrics, computed from predicted and true labels (no sklearn needed)."""

from __future__ import annotations

import torch


def classification_metrics(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict:
    """Top-1 accuracy (micro, percent), macro-F1 (percent) and per-class accuracy (percent).

    Args:
        preds: ``LongTensor[N]`` predicted labels.
        labels: ``LongTensor[N]`` true labels.
        num_classes: number of classes ``C``.

    Returns:
        ``{"accuracy", "macro_f1", "per_class_accuracy" (list of C, None for classes absent from labels),
        "num_test"}``. Macro-F1 averages the per-class F1 over the classes present in ``labels`` only, as Dassl
        does (``Dassl:dassl/evaluation/evaluator.py`` l.71–76: ``f1_score(y_true, y_pred, average="macro",
        labels=np.unique(y_true))``): a class that is predicted but absent from the test labels lowers the precision
        of no present class and is not averaged in (sklearn's default, without ``labels``, would average it in as
        F1 0).
    """
    preds, labels = preds.long().cpu(), labels.long().cpu()
    n = labels.numel()
    correct = (preds == labels).sum().item()
    # Confusion counts: (C, C) with rows = true label, cols = prediction.
    conf = torch.zeros(num_classes, num_classes, dtype=torch.long)
    conf.index_put_((labels, preds), torch.ones_like(labels), accumulate=True)
    tp = conf.diag().double()
    support = conf.sum(1).double()
    predicted = conf.sum(0).double()
    per_class = [(100.0 * tp[c].item() / support[c].item()) if support[c] > 0 else None for c in range(num_classes)]
    present = support > 0  # Dassl: labels=np.unique(y_true)
    # F1_c = 2·TP / (support + predicted) = harmonic mean of precision and recall (0 when TP = 0, as sklearn)
    f1 = 2 * tp / (support + predicted).clamp(min=1)
    macro_f1 = 100.0 * f1[present].mean().item() if present.any() else 0.0
    return {
        "accuracy": 100.0 * correct / max(n, 1),
        "macro_f1": macro_f1,
        "per_class_accuracy": per_class,
        "num_test": n,
    }


def harmonic_mean(base: float, new: float) -> float:
    """Harmonic mean ``H = 2bn / (b + n)`` of base and new accuracy (CoCoOp's base-to-new metric)."""
    return 0.0 if base + new == 0 else 2 * base * new / (base + new)
