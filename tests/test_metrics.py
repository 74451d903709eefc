"""Our metrics agree with scikit-learn; bootstrap intervals behave."""

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, recall_score, roc_auc_score

from dermagan.constants import CLASSES
from dermagan.evaluate.metrics import (
    balanced_accuracy,
    bootstrap_intervals,
    bootstrap_recalls,
    classification_metrics,
    per_class_recall,
)
from dermagan.evaluate.report import flat_metrics, evaluation_report


@pytest.fixture
def predictions():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 7, 500)
    logits = rng.normal(size=(500, 7)) + 2.0 * np.eye(7)[y] * rng.random((500, 1))
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, proba


def test_agrees_with_sklearn(predictions):
    y, proba = predictions
    pred = proba.argmax(1)
    m = classification_metrics(y, proba, CLASSES)
    assert m["bal_acc"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert balanced_accuracy(y, pred, 7) == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    np.testing.assert_allclose(per_class_recall(y, pred, 7), recall_score(y, pred, average=None))
    for c, name in enumerate(CLASSES):
        assert m["per_class"][name]["auc"] == pytest.approx(roc_auc_score(y == c, proba[:, c]))
    assert m["macro_auc"] == pytest.approx(roc_auc_score(y, proba, multi_class="ovr", average="macro"))


def test_bootstrap_matches_a_loop(predictions):
    y, proba = predictions
    pred = proba.argmax(1)
    fast = bootstrap_recalls(y, pred, 7, n_boot=20, seed=5)
    idx = np.random.default_rng(5).integers(0, len(y), size=(20, len(y)))
    slow = np.stack([recall_score(y[i], pred[i], labels=range(7), average=None, zero_division=0) for i in idx])
    np.testing.assert_allclose(fast, slow)


def test_intervals_bracket_the_estimate(predictions):
    y, proba = predictions
    report = evaluation_report(y, proba, CLASSES, n_boot=500, level=0.95, seed=0)
    assert report["bal_acc_ci_low"] <= report["bal_acc"] <= report["bal_acc_ci_high"]
    for values in report["per_class"].values():
        assert values["recall_ci_low"] <= values["recall"] <= values["recall_ci_high"]
    assert "test/bal_acc" in flat_metrics(report) and "test/recall_df" in flat_metrics(report)


def test_absent_class_gives_nan_not_crash():
    y = np.array([0, 0, 1, 1])
    ci = bootstrap_intervals(y, y, 7, n_boot=50, level=0.9, seed=0)
    assert ci["bal_acc"] == [1.0, 1.0]
    assert ci["recall"][5] == [None, None]
