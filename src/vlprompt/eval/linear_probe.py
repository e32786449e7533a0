"""Linear-probe baseline: L2-regularised logistic regression on frozen image features (CoOp ``lpclip`` protocol).

The official protocol (``KaiyangZhou/CoOp: lpclip/linear_probe.py``, following CLIP's Appendix A.3) fits
``sklearn.linear_model.LogisticRegression(solver="lbfgs", penalty="l2", max_iter=1000, C=C)`` on *unnormalised*
image features (the projected CLIP embedding, extracted with the test transform) and picks the inverse
regularisation strength ``C`` on the few-shot validation set. :func:`fit_linear_probe` reproduces that search
exactly; see its docstring for the precise semantics. scikit-learn is imported lazily.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from vlprompt.errors import ConfigError, DataError
from vlprompt.eval.metrics import classification_metrics

logger = logging.getLogger(__name__)

#: The official coarse grid over ``C``, in the official order (the order decides ties).
COARSE_GRID: tuple[float, ...] = (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)


@dataclass
class LinearProbeResult:
    """A fitted linear probe and how its ``C`` was chosen.

    Attributes:
        C: the inverse L2 regularisation strength of the returned classifier.
        val_accuracy: accuracy (percent) of the returned classifier on the selection set (val, or train when
            val was empty; see ``selection``).
        coef: ``float64[K, D]`` weights (``K = 1`` for a two-class problem, as scikit-learn stores it).
        intercept: ``float64[K]`` biases.
        classes: ``int64[n_classes]`` the labels seen in training, in the column order of :func:`predict`'s probs.
        selection: ``"val"`` (official protocol) or ``"train-grid"`` (fallback when val is empty).
        trace: every fit of the search, in order: grid entries ``{"stage": "grid", "C", "accuracy", "converged"}``
            and search rounds ``{"stage": "search", "round", "c_left", "c_right", "acc_left", "acc_right",
            "chosen", "C"}`` (accuracies in percent on the selection set).
    """

    C: float
    val_accuracy: float
    coef: torch.Tensor
    intercept: torch.Tensor
    classes: torch.Tensor
    selection: str = "val"
    trace: list[dict[str, Any]] = field(default_factory=list)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The classifier as tensors, ready for ``atomic_save_safetensors``."""
        return {"coef": self.coef, "intercept": self.intercept, "classes": self.classes}

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description of the search (everything except the tensors)."""
        return {"C": self.C, "val_accuracy": self.val_accuracy, "selection": self.selection, "trace": self.trace}

    @classmethod
    def from_saved(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> LinearProbeResult:
        """Rebuild a result from :meth:`tensors` and :meth:`to_dict` output."""
        return cls(
            C=float(meta["C"]),
            val_accuracy=float(meta["val_accuracy"]),
            coef=tensors["coef"].double(),
            intercept=tensors["intercept"].double(),
            classes=tensors["classes"].long(),
            selection=str(meta.get("selection", "val")),
            trace=list(meta.get("trace", [])),
        )


def _as_numpy(x: Any, dtype: type) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _make_classifier(C: float, max_iter: int) -> Any:
    """``LogisticRegression(solver="lbfgs", penalty="l2", max_iter, C)`` without scikit-learn ≥ 1.8's FutureWarning.

    scikit-learn 1.8 deprecated ``penalty``; its default (``l1_ratio=0``) is the same L2 penalty.
    """
    from sklearn.linear_model import LogisticRegression

    kwargs: dict[str, Any] = {"solver": "lbfgs", "max_iter": max_iter, "C": C}
    if inspect.signature(LogisticRegression).parameters["penalty"].default != "deprecated":
        kwargs["penalty"] = "l2"
    return LogisticRegression(**kwargs)


class _Fitter:
    """Fits and scores classifiers, memoised on the exact float ``C`` (lbfgs is deterministic, so a refit at the
    same ``C`` — which the official code does for the kept end of every search round — gives the same model)."""

    def __init__(self, train_x: np.ndarray, train_y: np.ndarray, sel_x: np.ndarray, sel_y: np.ndarray, max_iter: int):
        self.train_x, self.train_y, self.sel_x, self.sel_y, self.max_iter = train_x, train_y, sel_x, sel_y, max_iter
        self._cache: dict[float, tuple[Any, int, bool]] = {}

    def __call__(self, C: float) -> tuple[Any, int, bool]:
        """Return ``(classifier, number correct on the selection set, converged)``."""
        if C not in self._cache:
            from sklearn.exceptions import ConvergenceWarning

            clf = _make_classifier(C, self.max_iter)
            with warnings.catch_warnings():
                # Weakly regularised fits (C = 1e6) routinely hit max_iter; the official code ignores it too.
                warnings.simplefilter("ignore", ConvergenceWarning)
                clf.fit(self.train_x, self.train_y)
            converged = bool(np.max(clf.n_iter_) < self.max_iter)
            correct = int((clf.predict(self.sel_x) == self.sel_y).sum())
            self._cache[C] = (clf, correct, converged)
        return self._cache[C]

    def pct(self, correct: int) -> float:
        return 100.0 * correct / len(self.sel_y)


def fit_linear_probe(train_x: Any, train_y: Any, val_x: Any, val_y: Any, *, num_steps: int = 8,
                     max_iter: int = 1000) -> LinearProbeResult:
    """Fit the linear probe, choosing ``C`` on val exactly as the official ``lpclip/linear_probe.py`` does.

    Semantics (``acc`` = number of correct val predictions; every fit is
    ``LogisticRegression(solver="lbfgs", penalty="l2", max_iter=max_iter, C=C)`` on the train features):

    1. Coarse grid: fit each ``C`` in ``[1e6, 1e4, 1e2, 1, 1e-2, 1e-4, 1e-6]`` (in that order) and take
       ``C* = grid[argmax acc]``; ties go to the first, i.e. the *largest* ``C``.
    2. Set ``c_left, c_right = 1e-1 * C*, 1e1 * C*``. For each of ``num_steps`` rounds, fit both ends. If
       ``acc_left < acc_right`` the round keeps the right end, and the next interval is
       ``[10**mid, 10**log10(c_right)]`` with ``mid = (log10(c_left) + log10(c_right)) / 2``; otherwise (ties
       included) it keeps the left end and the next interval is ``[10**log10(c_left), 10**mid]``. So the interval
       halves in log10 space toward the better end, whose ``C`` is re-evaluated (as ``10**log10(C)``, bit for bit
       as the official code computes it) in the next round.
    3. The result is the classifier kept in the **last** round — not the best one seen during the search. With
       ``num_steps=0`` it is the coarse-grid winner.

    Fallback: when the val set is empty (e.g. a dataset without val images), ``C`` is chosen by the coarse grid on
    *train* accuracy (no refinement: train accuracy only rewards weaker regularisation) and a warning is logged;
    ``selection`` is then ``"train-grid"``. This is not the official protocol.

    Args:
        train_x: ``float[N, D]`` unnormalised image features (numpy or torch; used as float64).
        train_y: ``int[N]`` labels; at least two distinct classes.
        val_x: ``float[M, D]`` validation features (``M = 0`` or ``None`` triggers the fallback below).
        val_y: ``int[M]`` validation labels.
        num_steps: rounds of the log-space search (official: 8).
        max_iter: lbfgs iteration cap (official: 1000).

    Returns:
        The fitted :class:`LinearProbeResult`.

    Raises:
        DataError: if shapes disagree, train is empty or has a single class.
        ConfigError: if ``num_steps`` is negative.
    """
    tx, ty = _as_numpy(train_x, np.float64), _as_numpy(train_y, np.int64)
    vx = _as_numpy(val_x if val_x is not None else [], np.float64)
    vy = _as_numpy(val_y if val_y is not None else [], np.int64)
    empty_val = _check_inputs(tx, ty, vx, vy, num_steps)
    if empty_val:
        logger.warning(
            "linear probe: the val set is empty, so C is chosen by the coarse grid on TRAIN accuracy (not the "
            "official protocol, which selects C on the few-shot val set)"
        )
    fit = _Fitter(tx, ty, *((tx, ty) if empty_val else (vx, vy)), max_iter)  # scored on val (train if it is empty)

    trace: list[dict[str, Any]] = []
    c_final = _coarse_grid(fit, trace)
    clf_final, correct_final, _ = fit(c_final)
    if empty_val:
        return _result(c_final, clf_final, fit.pct(correct_final), "train-grid", trace)
    c_final, clf_final, correct_final = _search(fit, c_final, clf_final, correct_final, num_steps, trace)
    logger.info("linear probe: C = %.4g (val accuracy %.2f%%)", c_final, fit.pct(correct_final))
    return _result(float(c_final), clf_final, fit.pct(correct_final), "val", trace)


def _check_inputs(tx: np.ndarray, ty: np.ndarray, vx: np.ndarray, vy: np.ndarray, num_steps: int) -> bool:
    """Validate the probe's inputs (see :func:`fit_linear_probe`'s Raises); returns whether the val set is empty."""
    if tx.ndim != 2 or ty.ndim != 1 or len(tx) != len(ty) or len(tx) == 0:
        raise DataError(
            f"linear probe: train features must be [N, D] with N = len(train labels) > 0, got features "
            f"{tuple(tx.shape)} and labels {tuple(ty.shape)}; pass the few-shot train features and their labels."
        )
    if len(np.unique(ty)) < 2:
        raise DataError(
            f"linear probe: the train labels hold a single class ({np.unique(ty).tolist()}); logistic regression "
            "needs at least two classes."
        )
    if num_steps < 0:
        raise ConfigError(f"linear probe: num_steps must be >= 0, got {num_steps}.")
    empty_val = vx.size == 0 and vy.size == 0
    if not empty_val and (vx.ndim != 2 or vx.shape[1] != tx.shape[1] or len(vx) != len(vy)):
        raise DataError(
            f"linear probe: val features {tuple(vx.shape)} / labels {tuple(vy.shape)} do not match train features "
            f"{tuple(tx.shape)}; val must be [M, D] with the same D and M labels."
        )
    return empty_val


def _coarse_grid(fit: _Fitter, trace: list[dict[str, Any]]) -> float:
    """Step 1 of :func:`fit_linear_probe`: every ``C`` of :data:`COARSE_GRID`; returns the first best one."""
    grid_correct = []
    for c in COARSE_GRID:
        _, correct, converged = fit(c)
        grid_correct.append(correct)
        trace.append({"stage": "grid", "C": c, "accuracy": fit.pct(correct), "converged": converged})
    peak = int(np.argmax(grid_correct))  # first maximum, as np.argmax in the official code
    return COARSE_GRID[peak]


def _search(fit: _Fitter, c_final: float, clf_final: Any, correct_final: int, num_steps: int,
            trace: list[dict[str, Any]]) -> tuple[float, Any, int]:
    """Step 2 of :func:`fit_linear_probe`: ``num_steps`` rounds of the log-space search around the grid's
    ``c_final``; returns the ``(C, classifier, correct)`` kept in the last round (the grid's with no round)."""
    c_left, c_right = 1e-1 * c_final, 1e1 * c_final
    for step in range(num_steps):
        clf_l, acc_l, _ = fit(c_left)
        clf_r, acc_r, _ = fit(c_right)
        log_l, log_r = np.log10(c_left), np.log10(c_right)
        mid = 0.5 * (log_r + log_l)
        if acc_l < acc_r:
            chosen, c_final, clf_final, correct_final = "right", c_right, clf_r, acc_r
            new_l, new_r = mid, log_r
        else:
            chosen, c_final, clf_final, correct_final = "left", c_left, clf_l, acc_l
            new_l, new_r = log_l, mid
        trace.append(
            {
                "stage": "search",
                "round": step,
                "c_left": float(c_left),
                "c_right": float(c_right),
                "acc_left": fit.pct(acc_l),
                "acc_right": fit.pct(acc_r),
                "chosen": chosen,
                "C": float(c_final),
            }
        )
        # np.power on numpy float64 scalars, as the official code, so the next C values are bit-identical.
        c_left, c_right = float(np.power(10, new_l)), float(np.power(10, new_r))
    return c_final, clf_final, correct_final


def _result(C: float, clf: Any, acc: float, selection: str, trace: list[dict[str, Any]]) -> LinearProbeResult:
    return LinearProbeResult(
        C=C,
        val_accuracy=acc,
        coef=torch.from_numpy(np.array(clf.coef_, dtype=np.float64)),
        intercept=torch.from_numpy(np.array(clf.intercept_, dtype=np.float64)),
        classes=torch.from_numpy(np.array(clf.classes_, dtype=np.int64)),
        selection=selection,
        trace=trace,
    )


def predict(result: LinearProbeResult, x: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Predict labels and class probabilities with a fitted probe (same numbers as scikit-learn's).

    Args:
        result: a fitted probe.
        x: ``float[N, D]`` unnormalised image features.

    Returns:
        ``(preds, probs)``: ``int64[N]`` labels (values from ``result.classes``) and ``float64[N, n_classes]``
        probabilities whose columns follow ``result.classes`` (softmax over classes; sigmoid for two classes).
    """
    feats = torch.as_tensor(_as_numpy(x, np.float64))
    if feats.ndim != 2 or feats.shape[1] != result.coef.shape[1]:
        raise DataError(
            f"linear probe: features have shape {tuple(feats.shape)}, expected [N, {result.coef.shape[1]}] "
            "(the feature dimension the probe was trained on)."
        )
    scores = feats @ result.coef.T + result.intercept  # (N, K)
    if result.coef.shape[0] == 1:  # binary: scikit-learn keeps one weight vector for the positive class
        p1 = torch.sigmoid(scores[:, 0])
        probs = torch.stack([1 - p1, p1], dim=1)
    else:
        probs = torch.softmax(scores, dim=1)
    preds = result.classes[probs.argmax(dim=1)]
    return preds, probs


def linear_probe_metrics(result: LinearProbeResult, test_x: Any, test_y: Any, num_classes: int) -> dict:
    """Test metrics of a fitted probe, as :func:`vlprompt.eval.metrics.classification_metrics` returns them."""
    preds, _ = predict(result, test_x)
    labels = torch.as_tensor(_as_numpy(test_y, np.int64))
    top = max(int(labels.max()) if labels.numel() else -1, int(preds.max()) if preds.numel() else -1)
    if top >= num_classes:
        raise DataError(f"linear probe: num_classes={num_classes}, but labels/predictions go up to {top}.")
    return classification_metrics(preds, labels, num_classes)


__all__ = ["COARSE_GRID", "LinearProbeResult", "fit_linear_probe", "linear_probe_metrics", "predict"]
