"""Classification metrics and bootstrap confidence intervals (numpy + scikit-learn)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)


def per_class_recall(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Recall of each class; NaN for a class absent from ``y_true``."""
    support = np.bincount(y_true, minlength=num_classes)
    hits = np.bincount(y_true[y_true == y_pred], minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, hits / np.maximum(support, 1), np.nan)


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int | None = None) -> float:
    """Macro recall over the classes present in ``y_true`` (as scikit-learn defines it, without its
    warning about predicted classes that ``y_true`` lacks). The project's one balanced accuracy."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if num_classes is None:
        num_classes = int(max(y_true.max(initial=-1), y_pred.max(initial=-1))) + 1
    return float(np.nanmean(per_class_recall(y_true, y_pred, num_classes)))


def one_vs_rest_auc(y_true: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """ROC AUC of each class against the rest; NaN where a class has no positives or no negatives."""
    aucs = np.full(proba.shape[1], np.nan)
    for c in range(proba.shape[1]):
        positives = y_true == c
        if 0 < positives.sum() < len(y_true):
            aucs[c] = roc_auc_score(positives, proba[:, c])
    return aucs


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, classes: tuple[str, ...]) -> dict:
    """Every headline metric of one model on one split, as plain floats."""
    y_pred = proba.argmax(axis=1)
    labels = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    aucs = one_vs_rest_auc(y_true, proba)
    per_class = {
        name: {"recall": float(recall[i]), "precision": float(precision[i]), "f1": float(f1[i]),
               "auc": _nan_to_none(aucs[i]), "support": int(support[i])}
        for i, name in enumerate(classes)
    }
    return {
        "bal_acc": balanced_accuracy(y_true, y_pred, proba.shape[1]),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "macro_auc": _nan_to_none(np.nanmean(aucs) if np.isfinite(aucs).any() else np.nan),
        "per_class": per_class,
    }


def bootstrap_recalls(
    y_true: np.ndarray, y_pred: np.ndarray, num_classes: int, n_boot: int, seed: int
) -> np.ndarray:
    """Per-class recall on ``n_boot`` bootstrap resamples: array (n_boot, num_classes).

    Vectorised: one index matrix, two ``bincount`` calls, no Python loop over resamples.
    """
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y_true), size=(n_boot, len(y_true)))
    t, correct = y_true[idx], (y_true == y_pred)[idx]
    offset = np.arange(n_boot)[:, None] * num_classes
    support = np.bincount((offset + t).ravel(), minlength=n_boot * num_classes)
    hits = np.bincount((offset + t).ravel(), weights=correct.ravel(), minlength=n_boot * num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, hits / np.maximum(support, 1), np.nan)
    return recall.reshape(n_boot, num_classes)


def bootstrap_intervals(
    y_true: np.ndarray, y_pred: np.ndarray, num_classes: int, n_boot: int, level: float, seed: int
) -> dict:
    """Percentile CIs for balanced accuracy and each class's recall."""
    recalls = bootstrap_recalls(y_true, y_pred, num_classes, n_boot, seed)
    tail = (1 - level) / 2 * 100
    bal = np.nanmean(recalls, axis=1)
    low, high = np.nanpercentile(recalls, [tail, 100 - tail], axis=0)
    return {
        "bal_acc": [float(np.percentile(bal, tail)), float(np.percentile(bal, 100 - tail))],
        "recall": [[_nan_to_none(lo), _nan_to_none(hi)] for lo, hi in zip(low, high)],
    }


def _nan_to_none(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)
