"""Linear probe: the C search equals a literal re-statement of the official lpclip code; predictions; fallback."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from vlprompt.errors import ConfigError, DataError
from vlprompt.eval.linear_probe import COARSE_GRID, fit_linear_probe, linear_probe_metrics, predict


def _gaussian_problem(seed: int, n_cls: int = 4, shots: int = 8, n_val: int = 30, dim: int = 16, noise: float = 1.5):
    """Overlapping Gaussian classes with an offset (unnormalised features), so val accuracy depends on C."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(n_cls, dim))

    def draw(k: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.repeat(np.arange(n_cls), k)
        return (means[y] + noise * rng.normal(size=(len(y), dim)) + 3.0).astype(np.float32), y

    return (*draw(shots), *draw(n_val))


def _official_search(tx, ty, vx, vy, num_step: int = 8):
    """The official ``lpclip/linear_probe.py`` search, restated line by line (returns C, clf of the last round)."""

    def fit(c):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return LogisticRegression(solver="lbfgs", max_iter=1000, C=c).fit(tx, ty)

    search_list = [1e6, 1e4, 1e2, 1, 1e-2, 1e-4, 1e-6]
    acc_list = []
    for c_weight in search_list:
        pred = fit(c_weight).predict(vx)
        acc_list.append(sum(pred == vy) / len(vy))
    c_peak = search_list[np.argmax(acc_list)]
    c_left, c_right = 1e-1 * c_peak, 1e1 * c_peak
    c_final = clf_final = None
    for _ in range(num_step):
        clf_left, clf_right = fit(c_left), fit(c_right)
        acc_left = sum(clf_left.predict(vx) == vy) / len(vy)
        acc_right = sum(clf_right.predict(vx) == vy) / len(vy)
        if acc_left < acc_right:
            c_final, clf_final = c_right, clf_right
            c_left = 0.5 * (np.log10(c_right) + np.log10(c_left))
            c_right = np.log10(c_right)
        else:
            c_final, clf_final = c_left, clf_left
            c_right = 0.5 * (np.log10(c_right) + np.log10(c_left))
            c_left = np.log10(c_left)
        c_left, c_right = np.power(10, c_left), np.power(10, c_right)
    return c_final, clf_final


@pytest.mark.parametrize("seed", [0, 4])  # both seeds' searches move left and right (see the trace assertion)
def test_search_matches_official_restatement(seed):
    tx, ty, vx, vy = _gaussian_problem(seed)
    result = fit_linear_probe(torch.from_numpy(tx), torch.from_numpy(ty), vx, vy)
    c_ref, clf_ref = _official_search(tx.astype(np.float64), ty, vx.astype(np.float64), vy)

    assert result.C == c_ref  # bit-identical C, not just close
    torch.testing.assert_close(result.coef, torch.from_numpy(clf_ref.coef_), rtol=0, atol=0)
    torch.testing.assert_close(result.intercept, torch.from_numpy(clf_ref.intercept_), rtol=0, atol=0)
    assert result.selection == "val"
    grid = [e for e in result.trace if e["stage"] == "grid"]
    rounds = [e for e in result.trace if e["stage"] == "search"]
    assert [e["C"] for e in grid] == list(COARSE_GRID)
    assert len(rounds) == 8 and {e["chosen"] for e in rounds} == {"left", "right"}
    assert rounds[-1]["C"] == result.C
    assert result.val_accuracy == pytest.approx(100.0 * (clf_ref.predict(vx) == vy).mean())


def test_predict_matches_sklearn_and_metrics():
    tx, ty, vx, vy = _gaussian_problem(3)
    result = fit_linear_probe(tx, ty, vx, vy, num_steps=2)
    clf = LogisticRegression(solver="lbfgs", max_iter=1000, C=result.C).fit(tx.astype(np.float64), ty)
    preds, probs = predict(result, vx)
    assert torch.equal(preds, torch.from_numpy(clf.predict(vx.astype(np.float64))))
    torch.testing.assert_close(probs, torch.from_numpy(clf.predict_proba(vx.astype(np.float64))))
    m = linear_probe_metrics(result, vx, vy, num_classes=4)
    assert m["accuracy"] == pytest.approx(result.val_accuracy)
    assert m["num_test"] == len(vy)


def test_separable_data_reaches_high_accuracy():
    rng = np.random.default_rng(0)
    means = 8.0 * np.eye(5, 12)  # well separated class centres, unnormalised
    y_tr, y_te = np.repeat(np.arange(5), 4), np.repeat(np.arange(5), 40)
    tx = means[y_tr] + rng.normal(size=(20, 12))
    vx = means[np.repeat(np.arange(5), 2)] + rng.normal(size=(10, 12))
    te = means[y_te] + rng.normal(size=(200, 12))
    result = fit_linear_probe(tx, y_tr, vx, np.repeat(np.arange(5), 2))
    assert result.val_accuracy == 100.0
    assert 1e-7 < result.C < 1e7
    assert linear_probe_metrics(result, te, y_te, 5)["accuracy"] >= 97.0


def test_binary_problem_probs_are_sigmoid():
    tx, ty, vx, vy = _gaussian_problem(1, n_cls=2)
    result = fit_linear_probe(tx, ty, vx, vy, num_steps=1)
    assert result.coef.shape == (1, 16)
    preds, probs = predict(result, vx)
    clf = LogisticRegression(solver="lbfgs", max_iter=1000, C=result.C).fit(tx.astype(np.float64), ty)
    torch.testing.assert_close(probs, torch.from_numpy(clf.predict_proba(vx.astype(np.float64))))
    assert torch.equal(preds, torch.from_numpy(clf.predict(vx.astype(np.float64))))


def test_empty_val_falls_back_to_train_grid(caplog):
    tx, ty, _, _ = _gaussian_problem(2)
    with caplog.at_level(logging.WARNING, logger="vlprompt.eval.linear_probe"):
        result = fit_linear_probe(tx, ty, np.zeros((0, 16)), np.zeros((0,), dtype=np.int64))
    assert "val set is empty" in caplog.text
    assert result.selection == "train-grid"
    assert all(e["stage"] == "grid" for e in result.trace) and len(result.trace) == len(COARSE_GRID)
    # The chosen C is the first coarse-grid value with the best *train* accuracy.
    accs = [e["accuracy"] for e in result.trace]
    assert result.C == COARSE_GRID[int(np.argmax(accs))]
    assert result.val_accuracy == max(accs)
    assert fit_linear_probe(tx, ty, None, None).C == result.C


def test_saved_round_trip_and_errors():
    tx, ty, vx, vy = _gaussian_problem(5)
    result = fit_linear_probe(tx, ty, vx, vy, num_steps=0)
    assert result.C in COARSE_GRID  # num_steps=0: the coarse-grid winner
    again = type(result).from_saved(result.tensors(), result.to_dict())
    assert torch.equal(predict(again, vx)[0], predict(result, vx)[0])
    with pytest.raises(DataError, match="single class"):
        fit_linear_probe(tx, np.zeros(len(ty), dtype=np.int64), vx, vy)
    with pytest.raises(DataError, match="do not match"):
        fit_linear_probe(tx, ty, vx[:, :3], vy)
    with pytest.raises(ConfigError, match="num_steps"):
        fit_linear_probe(tx, ty, vx, vy, num_steps=-1)
    with pytest.raises(DataError, match=r"expected \[N, 16\]"):
        predict(result, vx[:, :3])
