"""Assemble the test-split metrics document of one model (the DVC metrics file)."""

from __future__ import annotations

import numpy as np

from dermagan.evaluate.metrics import bootstrap_intervals, classification_metrics


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
