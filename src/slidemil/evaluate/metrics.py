"""Slide-level classification metrics (their bootstrap confidence intervals: slidemil.evaluate.stats).

Binary tasks take prob as [N] (probability of the positive class, label 1) or [N, 2];
multiclass tasks take prob as [N, C] (rows are class probabilities): then AUC is one-vs-rest
macro, F1 is macro, and balanced accuracy is computed on the argmax. A metric that is
undefined on the data (AUC with one class present) is nan, never an exception, so a bootstrap
resample or a tiny fold cannot crash a benchmark.
"""

from __future__ import annotations

import warnings

import numpy as np


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank (scipy's rankdata 'average', without importing
    scipy.stats: every MIL job computes a validation AUC per epoch, and that import costs seconds)."""
    order = np.argsort(x, kind="mergesort")
    _, first, counts = np.unique(x[order], return_index=True, return_counts=True)
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(first + (counts + 1) / 2, counts)
    return ranks


def auc_binary(y_true: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney U statistic (ties count 1/2; equals sklearn's roc_auc_score).

    A closed form on ranks: ~50x faster than sklearn, which matters inside a 1000-fold bootstrap.
    nan when only one class is present.
    """
    y = np.asarray(y_true).astype(bool).ravel()
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(np.asarray(score, dtype=np.float64).ravel())
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _as_prob(prob: np.ndarray) -> np.ndarray:
    """[N] or [N, 1] -> [N] positive-class probability; [N, 2] -> its column 1; [N, C>2] kept."""
    p = np.asarray(prob, dtype=np.float64)
    if p.ndim == 2 and p.shape[1] <= 2:
        p = p[:, -1]
    if p.ndim not in (1, 2):
        raise ValueError(f"prob must be [N] or [N, C], got shape {p.shape}")
    return p


def auc(y_true: np.ndarray, prob: np.ndarray) -> float:
    """Binary AUC, or one-vs-rest macro AUC over the classes that are computable for [N, C>2]."""
    y = np.asarray(y_true).astype(int).ravel()
    p = _as_prob(prob)
    if p.ndim == 1:
        return auc_binary(y == 1, p)
    per_class = [auc_binary(y == c, p[:, c]) for c in range(p.shape[1])]
    finite = [a for a in per_class if np.isfinite(a)]
    return float(np.mean(finite)) if finite else float("nan")


def label_metrics(y_true: np.ndarray, pred: np.ndarray, n_classes: int = 2) -> dict[str, float]:
    """Balanced accuracy, F1, sensitivity and specificity of hard predictions.

    y_true, pred: int [N] class indices. n_classes == 2: F1 of class 1, sensitivity = recall of
    class 1, specificity = recall of class 0 (nan when that class is absent). n_classes > 2:
    macro F1, balanced accuracy = mean recall, sensitivity/specificity nan (no single positive
    class).
    """
    from sklearn.metrics import balanced_accuracy_score, f1_score  # imports scipy: only where used

    y = np.asarray(y_true).astype(int).ravel()
    pred = np.asarray(pred).astype(int).ravel()
    nan = float("nan")
    if len(y) == 0:
        return {"balanced_accuracy": nan, "f1": nan, "sensitivity": nan, "specificity": nan}
    if n_classes == 2:
        f1_kw: dict = {"average": "binary", "pos_label": 1, "labels": [0, 1]}
    else:
        f1_kw = {"average": "macro", "labels": list(range(n_classes))}
    with warnings.catch_warnings():
        # One-class resamples warn about ill-defined scores; the values returned are what we want.
        warnings.simplefilter("ignore")
        bacc = float(balanced_accuracy_score(y, pred))
        f1 = float(f1_score(y, pred, zero_division=0, **f1_kw))
    sens = spec = nan
    if n_classes == 2:
        sens = float((pred[y == 1] == 1).mean()) if (y == 1).any() else nan
        spec = float((pred[y != 1] == 0).mean()) if (y != 1).any() else nan
    return {"balanced_accuracy": bacc, "f1": f1, "sensitivity": sens, "specificity": spec}


def predict(prob: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Hard predictions int [N]: prob >= threshold for [N] (or [N, 2]) scores, argmax for [N, C>2]."""
    p = _as_prob(prob)
    return (p >= threshold).astype(int) if p.ndim == 1 else p.argmax(axis=1)


def binary_metrics(y_true: np.ndarray, prob: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """AUC, balanced accuracy, F1, sensitivity and specificity for slide predictions.

    y_true: int [N] class indices. prob: [N] positive-class probability (prediction is
    prob >= threshold; F1 of class 1) or [N, C] class probabilities (C == 2 is treated as
    binary on column 1; C > 2: argmax prediction, macro F1, one-vs-rest macro AUC, and
    sensitivity/specificity nan: they need one positive class).
    """
    y = np.asarray(y_true).astype(int).ravel()
    p = _as_prob(prob)
    if len(y) != len(p):
        raise ValueError(f"y_true has {len(y)} rows, prob {len(p)}")
    n_classes = 2 if p.ndim == 1 else p.shape[1]
    return {"auc": auc(y, p) if len(y) else float("nan"),
            **label_metrics(y, predict(p, threshold), n_classes)}
