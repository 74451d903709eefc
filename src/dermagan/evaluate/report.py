"""Assemble the test-split metrics document of one model (the DVC metrics file)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from dermagan.evaluate.metrics import bootstrap_intervals, classification_metrics

RELIABILITY_COLUMNS = ("bin", "confidence", "accuracy", "count")  # the reliability CSV (a DVC plot)


def evaluation_report(y_true: np.ndarray, proba: np.ndarray, classes: tuple[str, ...],
                n_boot: int, level: float, seed: int) -> dict:
    """Headline metrics plus bootstrap CIs for balanced accuracy and each class's recall."""
    metrics = classification_metrics(y_true, proba, classes)
    ci = bootstrap_intervals(y_true, proba.argmax(1), len(classes), n_boot, level, seed)
    metrics["bal_acc_ci_low"], metrics["bal_acc_ci_high"] = ci["bal_acc"]
    for name, (low, high) in zip(classes, ci["recall"]):
        metrics["per_class"][name]["recall_ci_low"] = low
        metrics["per_class"][name]["recall_ci_high"] = high
    metrics["n_images"] = int(len(y_true))
    metrics["ci_level"] = level
    metrics["bootstrap_samples"] = n_boot
    return metrics


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


def predictions_frame(image_ids, y_true: np.ndarray, proba: np.ndarray, classes: tuple[str, ...]) -> pd.DataFrame:
    """One row per test image: ``image_id``, ``actual`` and ``predicted`` class names."""
    return pd.DataFrame({"image_id": image_ids, "actual": [classes[i] for i in y_true],
                         "predicted": [classes[i] for i in proba.argmax(1)]})


def finite_or_none(value: float) -> float | None:
    """JSON-safe: NaN or infinity -> None."""
    return float(value) if math.isfinite(value) else None
