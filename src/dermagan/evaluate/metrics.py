"""Classification metrics and bootstrap confidence intervals (numpy + scikit-learn).

Balanced accuracy (BMA) is the mean recall over the classes it covers: every class with at least
``min_count`` test images (:func:`bma_included`); a smaller class is still reported on its own but
left out of the mean, and the metrics files say which (:func:`bma_excluded`, :func:`bma_excluded_reason`).

Binary tasks (one positive class): :func:`roc_auc` (Mann-Whitney, ties count one half),
:func:`threshold_at_specificity` (chosen on validation), :func:`sensitivity_specificity` at a threshold,
and their bootstrap versions over one shared matrix of resampled indices (:func:`bootstrap_indices`).
A case is called positive when its score is **at least** the threshold.
"""

from __future__ import annotations

from statistics import NormalDist

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


# --- which classes balanced accuracy covers ----------------------------------------------------

def bma_included(support, min_count: int = 0) -> np.ndarray:
    """Boolean mask of the classes balanced accuracy averages: those with ``support >= min_count``.

    When no class reaches ``min_count`` (a tiny test split), every class is included instead, so
    the mean stays defined; :func:`bma_excluded_reason` says so. Classes absent from the split have
    a NaN recall and drop out of the mean anyway.
    """
    support = np.asarray(support)
    included = support >= min_count
    return included if included.any() else np.ones_like(included, dtype=bool)


def bma_excluded(support, classes: tuple[str, ...], min_count: int = 0) -> dict[str, int]:
    """``{class: test count}`` of the classes left out of balanced accuracy (see :func:`bma_included`)."""
    included = bma_included(support, min_count)
    return {name: int(n) for name, n, keep in zip(classes, np.asarray(support), included) if not keep}


def bma_excluded_reason(support, classes: tuple[str, ...], min_count: int = 0) -> str | None:
    """One line on what balanced accuracy leaves out and why; None when it covers every class."""
    excluded = bma_excluded(support, classes, min_count)
    if excluded:
        listed = ", ".join(f"{c} ({n})" for c, n in excluded.items())
        return (f"{listed}: fewer than evaluate.min_test_count = {min_count} test images, so left out of "
                "balanced accuracy (still reported per class)")
    if min_count > 0 and not (np.asarray(support) >= min_count).any():
        return (f"no class has evaluate.min_test_count = {min_count} test images; balanced accuracy covers "
                "every class present")
    return None


def mean_recall(recalls: np.ndarray, included: np.ndarray | None = None) -> np.ndarray:
    """Mean over the last axis of per-class recalls (..., C), over ``included`` classes, NaN recalls
    skipped; NaN where no included class has a recall. The one mean behind every balanced accuracy."""
    recalls = np.asarray(recalls, dtype=float)
    if included is not None:
        recalls = np.where(np.asarray(included, dtype=bool), recalls, np.nan)
    present = ~np.isnan(recalls)
    count = present.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, np.nansum(recalls, axis=-1) / np.maximum(count, 1), np.nan)


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int | None = None,
                      min_count: int = 0) -> float:
    """Macro recall over the classes present in ``y_true`` (as scikit-learn defines it, without its
    warning about predicted classes that ``y_true`` lacks), leaving out classes with fewer than
    ``min_count`` images (:func:`bma_included`). The project's one balanced accuracy."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if num_classes is None:
        num_classes = int(max(y_true.max(initial=-1), y_pred.max(initial=-1))) + 1
    included = bma_included(np.bincount(y_true, minlength=num_classes), min_count)
    return float(mean_recall(per_class_recall(y_true, y_pred, num_classes), included))


# --- multi-class report ------------------------------------------------------------------------

def one_vs_rest_auc(y_true: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """ROC AUC of each class against the rest; NaN where a class has no positives or no negatives."""
    aucs = np.full(proba.shape[1], np.nan)
    for c in range(proba.shape[1]):
        positives = y_true == c
        if 0 < positives.sum() < len(y_true):
            aucs[c] = roc_auc_score(positives, proba[:, c])
    return aucs


def classification_metrics(y_true: np.ndarray, proba: np.ndarray, classes: tuple[str, ...],
                           min_count: int = 0) -> dict:
    """Every headline metric of one model on one split, as plain floats. ``bal_acc`` leaves out classes
    with fewer than ``min_count`` images (listed in ``bma_excluded``, with ``bma_excluded_reason``)."""
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
        "bal_acc": balanced_accuracy(y_true, y_pred, proba.shape[1], min_count),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "macro_auc": _nan_to_none(np.nanmean(aucs) if np.isfinite(aucs).any() else np.nan),
        "per_class": per_class,
        "bma_excluded": bma_excluded(support, classes, min_count),
        "bma_excluded_reason": bma_excluded_reason(support, classes, min_count),
    }


# --- bootstrap -----------------------------------------------------------------------------------

def bootstrap_indices(n_items: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n_items) indices drawn with replacement; one matrix shared by every statistic (paired)."""
    return np.random.default_rng(seed).integers(0, n_items, size=(n_boot, n_items))


def bootstrap_recalls(
    y_true: np.ndarray, y_pred: np.ndarray, num_classes: int, n_boot: int, seed: int
) -> np.ndarray:
    """Per-class recall on ``n_boot`` bootstrap resamples: array (n_boot, num_classes).

    Vectorised: one index matrix, two ``bincount`` calls, no Python loop over resamples.
    """
    idx = bootstrap_indices(len(y_true), n_boot, seed)
    t, correct = y_true[idx], (y_true == y_pred)[idx]
    offset = np.arange(n_boot)[:, None] * num_classes
    support = np.bincount((offset + t).ravel(), minlength=n_boot * num_classes)
    hits = np.bincount((offset + t).ravel(), weights=correct.ravel(), minlength=n_boot * num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, hits / np.maximum(support, 1), np.nan)
    return recall.reshape(n_boot, num_classes)


def percentile_interval(values: np.ndarray, level: float) -> tuple[float | None, float | None]:
    """Percentile CI of bootstrap values, NaN resamples dropped; (None, None) when none is left."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if not values.size:
        return None, None
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_intervals(
    y_true: np.ndarray, y_pred: np.ndarray, num_classes: int, n_boot: int, level: float, seed: int,
    min_count: int = 0,
) -> dict:
    """Percentile CIs for balanced accuracy (over :func:`bma_included` classes) and each class's recall."""
    recalls = bootstrap_recalls(y_true, y_pred, num_classes, n_boot, seed)
    tail = (1 - level) / 2 * 100
    with np.errstate(invalid="ignore"):
        bal = mean_recall(recalls, bma_included(np.bincount(y_true, minlength=num_classes), min_count))
    low, high = np.nanpercentile(recalls, [tail, 100 - tail], axis=0)
    return {
        "bal_acc": [float(np.percentile(bal, tail)), float(np.percentile(bal, 100 - tail))],
        "recall": [[_nan_to_none(lo), _nan_to_none(hi)] for lo, hi in zip(low, high)],
    }


# --- binary tasks: AUC, threshold at a specificity, sensitivity and specificity ------------------

def resampled_auc(y: np.ndarray, score: np.ndarray, idx: np.ndarray, chunk: int = 256) -> np.ndarray:
    """ROC AUC of ``score`` for the positives ``y`` (bool) on every resample ``idx`` (B, N): array (B,).

    AUC = P(score of a positive > score of a negative) + P(tie) / 2, counted with each image's
    multiplicity in the resample; NaN where a resample lacks positives or negatives. Vectorised in
    chunks of resamples: one sort of the scores, then per resample weighted sums over tied groups.
    """
    y, score, idx = np.asarray(y, dtype=bool), np.asarray(score, dtype=float), np.atleast_2d(idx)
    n = len(y)
    if not n:
        return np.full(idx.shape[0], np.nan)
    order = np.argsort(score, kind="stable")
    _, group = np.unique(score[order], return_inverse=True)  # tied scores share a group, in rising order
    n_groups = int(group.max()) + 1
    positive = y[order]
    out = np.empty(idx.shape[0])
    for start in range(0, idx.shape[0], chunk):
        block = idx[start:start + chunk]
        b = block.shape[0]
        counts = np.bincount((np.arange(b)[:, None] * n + block).ravel(), minlength=b * n).reshape(b, n)[:, order]
        cells = (np.arange(b)[:, None] * n_groups + group[None, :]).ravel()
        pos = np.bincount(cells, weights=(counts * positive).ravel(), minlength=b * n_groups).reshape(b, n_groups)
        neg = np.bincount(cells, weights=(counts * ~positive).ravel(), minlength=b * n_groups).reshape(b, n_groups)
        below = np.cumsum(neg, axis=1) - neg  # negatives with a strictly lower score
        pairs = pos.sum(1) * neg.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start:start + b] = np.where(pairs > 0, (pos * (below + 0.5 * neg)).sum(1) / np.maximum(pairs, 1),
                                            np.nan)
    return out


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC of ``score`` for the positives ``y`` (bool or 0/1): the share of (positive, negative)
    pairs the score ranks right, ties counting one half; NaN without positives or negatives."""
    return float(resampled_auc(y, score, np.arange(len(y))[None, :])[0])


def sensitivity_specificity(y: np.ndarray, score: np.ndarray, threshold: float) -> tuple[float, float]:
    """(sensitivity, specificity) when ``score >= threshold`` is called positive; NaN without
    positives (sensitivity) or negatives (specificity)."""
    y, called = np.asarray(y, dtype=bool), np.asarray(score, dtype=float) >= threshold
    sensitivity = float(called[y].mean()) if y.any() else float("nan")
    specificity = float((~called[~y]).mean()) if (~y).any() else float("nan")
    return sensitivity, specificity


def threshold_at_specificity(y_val: np.ndarray, score_val: np.ndarray, specificity: float) -> float:
    """The lowest threshold whose specificity on ``(y_val, score_val)`` is at least ``specificity``.

    Candidates are the distinct validation scores and one value just above the highest (calls
    nothing positive, specificity 1); the first candidate, in rising order, that reaches the target
    wins, so sensitivity on validation is as high as the target allows. Needs a negative in ``y_val``.
    """
    y_val, score_val = np.asarray(y_val, dtype=bool), np.asarray(score_val, dtype=float)
    negatives = np.sort(score_val[~y_val])
    if not negatives.size:
        raise ValueError("threshold_at_specificity: the validation labels hold no negative case")
    candidates = np.append(np.unique(score_val), np.nextafter(score_val.max(), np.inf))
    spec = np.searchsorted(negatives, candidates, side="left") / negatives.size  # share of negatives below
    return float(candidates[np.argmax(spec >= specificity - 1e-12)])


def score_column(positive: str) -> str:
    """The predictions CSV column holding a binary task's score P(positive): ``p_<positive>``."""
    return f"p_{positive}"


def thresholded(y: np.ndarray, score: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(truth, call) as 0/1 class indices (1 = positive), for recall-based bootstraps: the recall of
    class 1 is the sensitivity at ``threshold``, that of class 0 the specificity."""
    return np.asarray(y, dtype=bool).astype(np.int64), (np.asarray(score, dtype=float) >= threshold).astype(np.int64)


# --- power -----------------------------------------------------------------------------------------

def minimum_detectable_difference(sd: float, level: float, power: float) -> float:
    """The smallest true difference a paired test at two-sided alpha = 1 - ``level`` detects with
    probability ``power``, from the bootstrap SD of the difference: (z_{1-alpha/2} + z_power) * sd."""
    if sd is None or not np.isfinite(sd):
        return float("nan")
    z = NormalDist().inv_cdf
    return float((z(1 - (1 - level) / 2) + z(power)) * sd)


def _nan_to_none(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)
