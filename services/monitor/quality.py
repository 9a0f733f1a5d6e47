"""Quality of predictions against labels, and estimated without them: pure numpy.

Everything here takes arrays and returns plain dicts of floats, so tests call it on
known inputs and the monitor's core calls it on a window's predictions.

Realized metrics (labels known):

- binary: ``auc`` (Mann-Whitney, ties counted half), ``accuracy`` at the decision
  threshold, ``brier``, ``log_loss``, ``ece`` (expected calibration error over equal-width
  bins), ``mean_prediction`` and ``positive_rate`` (calibration at a glance);
- multiclass: ``accuracy``, ``log_loss``;
- regression: ``rmse``, ``mae``, ``mean_error`` (prediction minus label).

Estimated metrics (binary, no labels) follow confidence-based performance estimation
(CBPE, as NannyML describes it): if the probabilities are calibrated, example *i* is a
positive with probability p_i, so the expected confusion matrix at threshold t is
E[TP] = sum p_i [p_i >= t], E[FP] = sum (1 - p_i) [p_i >= t], and so on; the expected
ROC curve walks the examples by descending p, adding p_i to the expected true positives
and 1 - p_i to the expected false positives, and its area is the expected AUC.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

EPS = 1e-7
ECE_BINS = 10


def _auc(p: np.ndarray, y: np.ndarray) -> float | None:
    pos = int(y.sum())
    neg = len(y) - pos
    if pos == 0 or neg == 0:
        return None  # undefined with one class
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(len(p), dtype=np.float64)
    sorted_p = p[order]
    # Average ranks over ties (1-based).
    _, first, counts = np.unique(sorted_p, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def binary(p: np.ndarray, y: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Realized metrics of probabilities ``p`` of the positive class against 0/1 ``y``."""
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    y = (np.asarray(y).reshape(-1) > 0.5).astype(np.int64)
    if len(p) == 0:
        return {}
    pc = np.clip(p, EPS, 1 - EPS)
    out = {
        "accuracy": float(((p >= threshold).astype(np.int64) == y).mean()),
        "brier": float(((p - y) ** 2).mean()),
        "log_loss": float(-(y * np.log(pc) + (1 - y) * np.log(1 - pc)).mean()),
        "ece": _ece(p, y),
        "mean_prediction": float(p.mean()),
        "positive_rate": float(y.mean()),
    }
    auc = _auc(p, y)
    if auc is not None:
        out["auc"] = auc
    return out


def _ece(p: np.ndarray, y: np.ndarray) -> float:
    bins = np.minimum((p * ECE_BINS).astype(np.int64), ECE_BINS - 1)
    total = 0.0
    for b in range(ECE_BINS):
        m = bins == b
        if m.any():
            total += m.sum() * abs(p[m].mean() - y[m].mean())
    return float(total / len(p))


def multiclass(probs: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Realized metrics of class probabilities ``probs`` [n, k] against class ids ``y``."""
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y).reshape(-1).astype(np.int64)
    if len(y) == 0:
        return {}
    k = probs.shape[1]
    inside = (y >= 0) & (y < k)
    picked = np.where(inside, probs[np.arange(len(y)), np.clip(y, 0, k - 1)], 0.0)
    return {
        "accuracy": float((probs.argmax(axis=1) == y).mean()),
        "log_loss": float(-np.log(np.clip(picked, EPS, 1.0)).mean()),
    }


def regression(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    pred = np.asarray(pred, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if len(y) == 0:
        return {}
    err = pred - y
    return {
        "rmse": float(np.sqrt((err**2).mean())),
        "mae": float(np.abs(err).mean()),
        "mean_error": float(err.mean()),
    }


def estimate_binary(p: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """CBPE: expected accuracy, precision, recall and AUC from calibrated probabilities."""
    p = np.clip(np.asarray(p, dtype=np.float64).reshape(-1), 0.0, 1.0)
    n = len(p)
    if n == 0:
        return {}
    hit = p >= threshold
    tp = float(p[hit].sum())
    fp = float((1 - p[hit]).sum())
    fn = float(p[~hit].sum())
    tn = float((1 - p[~hit]).sum())
    out = {
        "accuracy": (tp + tn) / n,
        "positive_rate": float(p.mean()),
    }
    if tp + fp > 0:
        out["precision"] = tp / (tp + fp)
    if tp + fn > 0:
        out["recall"] = tp / (tp + fn)
    auc = _expected_auc(p)
    if auc is not None:
        out["auc"] = auc
    return out


def _expected_auc(p: np.ndarray) -> float | None:
    pos = p.sum()
    neg = len(p) - pos
    if pos <= 0 or neg <= 0:
        return None
    # Group equal scores: a tie moves TPR and FPR together (a diagonal step), as in a
    # realized ROC curve.
    order = np.argsort(-p, kind="mergesort")
    sp = p[order]
    _, first = np.unique(-sp, return_index=True)
    tp_steps = np.add.reduceat(sp, first)
    fp_steps = np.add.reduceat(1 - sp, first)
    tpr = np.concatenate([[0.0], np.cumsum(tp_steps) / pos])
    fpr = np.concatenate([[0.0], np.cumsum(fp_steps) / neg])
    return float(np.sum((fpr[1:] - fpr[:-1]) * (tpr[1:] + tpr[:-1]) / 2.0))


def realized(task: str, scores: np.ndarray, y: np.ndarray, threshold: float) -> dict[str, float]:
    """The task's realized metrics; ``scores`` as the serving signature returned them."""
    if task == "binary":
        return binary(positive_probability(scores), y, threshold)
    if task == "multiclass":
        return multiclass(scores, y)
    return regression(scores, y)


def estimated(task: str, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """Estimated metrics where the task allows (binary); otherwise none."""
    if task != "binary":
        return {}
    return estimate_binary(positive_probability(scores), threshold)


def positive_probability(scores: np.ndarray) -> np.ndarray:
    """A binary classifier's positive-class probability: one column, or the second of two."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim == 2 and s.shape[1] == 2:
        return s[:, 1]
    return s.reshape(-1)


def errors(estimate: Mapping[str, float], actual: Mapping[str, float]) -> dict[str, float]:
    """Estimate minus realized, for every metric both have."""
    return {k: estimate[k] - actual[k] for k in estimate if k in actual}
