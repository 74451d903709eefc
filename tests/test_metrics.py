"""Our metrics agree with scikit-learn; bootstrap intervals behave."""

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, recall_score, roc_auc_score

from dermagan.evaluate.metrics import (
    balanced_accuracy,
    bma_excluded,
    bma_included,
    bootstrap_intervals,
    bootstrap_recalls,
    classification_metrics,
    mean_recall,
    per_class_recall,
)
from dermagan.evaluate.plots import roc_points, roc_table
from dermagan.evaluate.report import flat_metrics, evaluation_report

CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")  # the default task (params.yaml data.classes)


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


def test_min_test_count_leaves_a_small_class_out_of_bal_acc_only():
    # class 2 has 3 test images, all missed; classes 0 and 1 have 12 each, all right
    y = np.r_[np.zeros(12, int), np.ones(12, int), np.full(3, 2)]
    proba = np.eye(3)[np.where(y == 2, 0, y)]
    classes = ("a", "b", "c")
    default = evaluation_report(y, proba, classes, n_boot=100, level=0.95, seed=0)
    assert default["bal_acc"] == pytest.approx(2 / 3) and default["bma_excluded"] == {}
    assert default["bma_excluded_reason"] is None
    report = evaluation_report(y, proba, classes, n_boot=100, level=0.95, seed=0, min_test_count=10)
    assert report["bal_acc"] == 1.0 and report["bal_acc_ci_low"] == report["bal_acc_ci_high"] == 1.0
    assert report["bma_excluded"] == {"c": 3}
    assert report["bma_excluded_reason"].startswith("c (3): fewer than evaluate.min_test_count = 10 test images")
    assert report["per_class"]["c"]["recall"] == 0.0 and report["per_class"]["c"]["support"] == 3  # still reported
    assert report["accuracy"] == default["accuracy"] and report["macro_f1"] == default["macro_f1"]
    assert balanced_accuracy(y, proba.argmax(1), 3, min_count=10) == 1.0
    assert balanced_accuracy(y, proba.argmax(1), 3, min_count=3) == pytest.approx(2 / 3)  # 3 >= 3: kept


def test_bma_rule_by_hand():
    support = np.array([17, 9, 0, 40])
    assert list(bma_included(support, 10)) == [True, False, False, True]
    assert bma_excluded(support, ("a", "b", "c", "d"), 10) == {"b": 9, "c": 0}
    assert list(bma_included(support, 0)) == [True] * 4
    assert list(bma_included(support, 100)) == [True] * 4  # none reaches it: every class, not none
    recalls = np.array([[0.5, 1.0, np.nan, 0.3], [np.nan, np.nan, np.nan, np.nan]])
    np.testing.assert_allclose(mean_recall(recalls, bma_included(support, 10)), [0.4, np.nan])
    np.testing.assert_allclose(mean_recall(recalls), [0.6, np.nan])


def test_default_task_numbers_do_not_move_with_min_test_count(predictions):
    y, proba = predictions  # ~70 images per class: nothing is left out at the default of 10
    assert evaluation_report(y, proba, CLASSES, 200, 0.95, 0, min_test_count=10) == evaluation_report(
        y, proba, CLASSES, 200, 0.95, 0)


def test_roc_table_is_long_format(predictions):
    y, proba = predictions
    table = roc_table(roc_points(y, proba, CLASSES), grid_size=11)
    assert list(table.columns) == ["class", "fpr", "tpr"] and len(table) == 7 * 11
    assert list(table["class"].unique()) == list(CLASSES)
    mel = table[table["class"] == "mel"]
    np.testing.assert_allclose(mel["fpr"], np.linspace(0, 1, 11))
    assert mel["tpr"].is_monotonic_increasing and mel["tpr"].iloc[-1] == 1.0
