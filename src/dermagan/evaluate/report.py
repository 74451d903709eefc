"""Assemble the test-split metrics document of one model (the DVC metrics file)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from dermagan.evaluate.metrics import (
    bootstrap_indices,
    bootstrap_intervals,
    bootstrap_recalls,
    classification_metrics,
    percentile_interval,
    resampled_auc,
    roc_auc,
    score_column,
    sensitivity_specificity,
    threshold_at_specificity,
    thresholded,
)

RELIABILITY_COLUMNS = ("bin", "confidence", "accuracy", "count")  # the reliability CSV (a DVC plot)


def evaluation_report(y_true: np.ndarray, proba: np.ndarray, classes: tuple[str, ...],
                      n_boot: int, level: float, seed: int, min_test_count: int = 0) -> dict:
    """Headline metrics plus bootstrap CIs for balanced accuracy and each class's recall.

    ``bal_acc`` (and its CI) leaves out classes with fewer than ``min_test_count`` images; they are
    still reported per class (``per_class[c]["support"]`` is every class's count) and listed in
    ``bma_excluded`` ({class: count}) with ``bma_excluded_reason`` (None when nothing is left out).
    """
    metrics = classification_metrics(y_true, proba, classes, min_test_count)
    ci = bootstrap_intervals(y_true, proba.argmax(1), len(classes), n_boot, level, seed, min_test_count)
    metrics["bal_acc_ci_low"], metrics["bal_acc_ci_high"] = ci["bal_acc"]
    for name, (low, high) in zip(classes, ci["recall"]):
        metrics["per_class"][name]["recall_ci_low"] = low
        metrics["per_class"][name]["recall_ci_high"] = high
    metrics["n_images"] = int(len(y_true))
    metrics["ci_level"] = level
    metrics["bootstrap_samples"] = n_boot
    return metrics


def binary_report(y_test: np.ndarray, proba_test: np.ndarray, y_val: np.ndarray, proba_val: np.ndarray,
                  classes: tuple[str, ...], positive: str, specificity: float, n_boot: int, level: float,
                  seed: int) -> dict:
    """The metrics document's ``binary`` block of a two-class task with positive class ``positive``.

    ``auc``: test ROC AUC of P(positive). ``threshold``: the lowest threshold whose specificity on
    **val** is at least ``specificity`` (the target); applied to test it gives ``sensitivity`` and
    ``specificity`` (``val_sensitivity``/``val_specificity``: on val). CIs are percentile intervals on
    the same bootstrap resamples of test images as the other metrics (``n_boot``, ``level``, ``seed``).
    """
    k = classes.index(positive)
    y_pos, score = y_test == k, proba_test[:, k]
    threshold = threshold_at_specificity(y_val == k, proba_val[:, k], specificity)
    idx = bootstrap_indices(len(y_test), n_boot, seed)
    truth, called = thresholded(y_pos, score, threshold)
    recalls = bootstrap_recalls(truth, called, 2, n_boot, seed)  # columns: specificity, sensitivity
    sensitivity, spec = sensitivity_specificity(y_pos, score, threshold)
    val_sensitivity, val_specificity = sensitivity_specificity(y_val == k, proba_val[:, k], threshold)
    auc_low, auc_high = percentile_interval(resampled_auc(y_pos, score, idx), level)
    sens_low, sens_high = percentile_interval(recalls[:, 1], level)
    spec_low, spec_high = percentile_interval(recalls[:, 0], level)
    return {"positive": positive, "n_positive": int(y_pos.sum()), "n_negative": int((~y_pos).sum()),
            "auc": finite_or_none(roc_auc(y_pos, score)), "auc_ci_low": auc_low, "auc_ci_high": auc_high,
            "target_specificity": float(specificity), "threshold": float(threshold), "threshold_from": "val",
            "n_val": int(len(y_val)), "val_sensitivity": finite_or_none(val_sensitivity),
            "val_specificity": finite_or_none(val_specificity),
            "sensitivity": finite_or_none(sensitivity), "sensitivity_ci_low": sens_low,
            "sensitivity_ci_high": sens_high, "specificity": finite_or_none(spec),
            "specificity_ci_low": spec_low, "specificity_ci_high": spec_high}


def flat_metrics(metrics: dict, prefix: str = "test/") -> dict[str, float]:
    """``test/bal_acc``, ``test/recall_df``... for MLflow (None values dropped)."""
    flat = {f"{prefix}{k}": v for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None}
    for name, values in metrics["per_class"].items():
        for key, value in values.items():
            if value is not None and key != "support":
                flat[f"{prefix}{key}_{name}"] = value
    # The stage's calibration block: test/ece, test/ece_uncalibrated, test/temperature (n_bins is a setting).
    for key, value in (metrics.get("calibration") or {}).items():
        if isinstance(value, (int, float)) and key != "n_bins":
            flat[f"{prefix}{key}"] = value
    # A binary task's block: test/auc, test/auc_ci_low, test/threshold, test/sensitivity, test/specificity...
    for key, value in (metrics.get("binary") or {}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = value
    return flat


def calibration_report(y_true: np.ndarray, proba: np.ndarray, temperature: float,
                       n_bins: int) -> tuple[dict, pd.DataFrame]:
    """The metrics document's ``calibration`` block and the reliability table it comes from.

    ``ece``: top-label ECE of the probabilities as served (after the model's temperature); when a
    temperature T != 1 was fitted, ``ece_uncalibrated`` is the ECE before it (else None).
    """
    from dermagan.evaluate.calibration import (ece_from_table, expected_calibration_error, reliability_table,
                                               uncalibrated_proba)

    reliability = reliability_table(y_true, proba, n_bins)
    block = {
        "ece": finite_or_none(ece_from_table(reliability)),
        "ece_uncalibrated": (finite_or_none(expected_calibration_error(
            y_true, uncalibrated_proba(proba, temperature), n_bins)) if temperature != 1.0 else None),
        "temperature": temperature, "n_bins": n_bins}
    return block, reliability


def reliability_rows(reliability: pd.DataFrame) -> pd.DataFrame:
    """The non-empty bins of a reliability table, as the reliability CSV holds them."""
    return reliability.loc[reliability["count"] > 0, list(RELIABILITY_COLUMNS)]


def predictions_frame(image_ids, y_true: np.ndarray, proba: np.ndarray, classes: tuple[str, ...],
                      positive: str | None = None) -> pd.DataFrame:
    """One row per test image: ``image_id``, ``actual`` and ``predicted`` class names; with a
    ``positive`` class (binary task) also :func:`score_column` = P(positive), which compare reads."""
    frame = pd.DataFrame({"image_id": image_ids, "actual": [classes[i] for i in y_true],
                          "predicted": [classes[i] for i in proba.argmax(1)]})
    if positive is not None:
        frame[score_column(positive)] = proba[:, classes.index(positive)]
    return frame


def finite_or_none(value: float) -> float | None:
    """JSON-safe: NaN or infinity -> None."""
    return float(value) if math.isfinite(value) else None
