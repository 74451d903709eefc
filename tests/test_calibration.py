"""Calibration: reliability table and ECE by hand, bin edges, temperature fit, undoing a temperature, figure."""

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from dermagan.cli import _default_paths, build_parser
from dermagan.evaluate.calibration import (
    ece_from_table,
    expected_calibration_error,
    fit_temperature,
    reliability_figure,
    reliability_table,
    uncalibrated_proba,
)
from dermagan.evaluate.plots import save
from dermagan.evaluate.report import flat_metrics

# Eight samples, four classes, 5 bins: [0, .2], (.2, .4], (.4, .6], (.6, .8], (.8, 1].
HAND_PROBA = np.array([
    [0.30, 0.25, 0.25, 0.20],  # conf .30 -> bin 1, pred 0, label 0: correct
    [0.35, 0.30, 0.20, 0.15],  # conf .35 -> bin 1, pred 0, label 1: wrong
    [0.10, 0.50, 0.20, 0.20],  # conf .50 -> bin 2, pred 1, label 1: correct
    [0.10, 0.10, 0.60, 0.20],  # conf .60 -> bin 2 (upper edge is inclusive), pred 2, label 3: wrong
    [0.70, 0.10, 0.10, 0.10],  # conf .70 -> bin 3, pred 0, label 0: correct
    [0.90, 0.05, 0.03, 0.02],  # conf .90 -> bin 4, pred 0, label 0: correct
    [0.00, 1.00, 0.00, 0.00],  # conf 1.0 -> bin 4 (the last bin), pred 1, label 1: correct
    [0.05, 0.05, 0.05, 0.85],  # conf .85 -> bin 4, pred 3, label 2: wrong
])
HAND_LABELS = np.array([0, 1, 1, 3, 0, 0, 1, 2])


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_reliability_table_by_hand():
    table = reliability_table(HAND_LABELS, HAND_PROBA, n_bins=5)
    assert list(table.columns) == ["bin", "lower", "upper", "confidence", "accuracy", "count"]
    assert table["bin"].tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(table["lower"], [0, 0.2, 0.4, 0.6, 0.8])
    np.testing.assert_allclose(table["upper"], [0.2, 0.4, 0.6, 0.8, 1.0])
    assert table["count"].tolist() == [0, 2, 2, 1, 3]
    # Empty bin 0: NaN, row kept.
    assert np.isnan(table.loc[0, "confidence"]) and np.isnan(table.loc[0, "accuracy"])
    np.testing.assert_allclose(table["confidence"][1:], [(0.30 + 0.35) / 2, (0.50 + 0.60) / 2, 0.70,
                                                         (0.90 + 1.00 + 0.85) / 3])
    np.testing.assert_allclose(table["accuracy"][1:], [1 / 2, 1 / 2, 1.0, 2 / 3])


def test_ece_by_hand():
    # bin 1: 2/8 * |0.5 - 0.325|  = 0.25  * 0.175 = 0.04375
    # bin 2: 2/8 * |0.5 - 0.55|   = 0.25  * 0.05  = 0.0125
    # bin 3: 1/8 * |1.0 - 0.70|   = 0.125 * 0.30  = 0.0375
    # bin 4: 3/8 * |2/3 - 2.75/3| = 0.375 * 0.25  = 0.09375
    # ECE = 0.04375 + 0.0125 + 0.0375 + 0.09375 = 0.1875
    ece = expected_calibration_error(HAND_LABELS, HAND_PROBA, n_bins=5)
    assert isinstance(ece, float)
    assert ece == pytest.approx(0.1875, abs=1e-12)
    assert ece_from_table(reliability_table(HAND_LABELS, HAND_PROBA, 5)) == pytest.approx(0.1875, abs=1e-12)
    # One bin: |mean accuracy - mean confidence| = |5/8 - 5.2/8|.
    assert expected_calibration_error(HAND_LABELS, HAND_PROBA, n_bins=1) == pytest.approx(0.2 / 8, abs=1e-12)


def test_bin_edges_are_right_inclusive():
    # Two classes: confidence p for class 0 (p >= 0.5). Edges of 10 bins: 0.1, 0.2, ..., 1.0.
    conf = np.array([0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 0.55, 0.95])
    proba = np.stack([conf, 1 - conf], axis=1)
    table = reliability_table(np.zeros(len(conf), dtype=int), proba, n_bins=10)
    assert len(table) == 10
    # 0.5 -> bin 4 (.4, .5]; 0.6 -> bin 5; ...; 1.0 -> bin 9 (last); 0.55 -> bin 5; 0.95 -> bin 9.
    assert table["count"].tolist() == [0, 0, 0, 0, 1, 2, 1, 1, 1, 2]
    # Confidence 0 (all-zero row) goes to the first bin.
    zero = reliability_table(np.array([0]), np.zeros((1, 3)), n_bins=4)
    assert zero["count"].tolist() == [1, 0, 0, 0]
    # No samples: all bins empty, ECE NaN.
    empty = reliability_table(np.zeros(0, dtype=int), np.zeros((0, 3)), n_bins=3)
    assert empty["count"].tolist() == [0, 0, 0] and empty["accuracy"].isna().all()
    assert np.isnan(expected_calibration_error(np.zeros(0, dtype=int), np.zeros((0, 3))))


def test_perfect_calibration_gives_zero_ece():
    # conf 0.8: 8 of 10 right; conf 0.5 (tie -> class 0): 2 of 4 right; conf 1.0: 2 of 2 right.
    proba = np.array([[0.8, 0.2]] * 10 + [[0.5, 0.5]] * 4 + [[1.0, 0.0]] * 2)
    labels = np.array([0] * 8 + [1] * 2 + [0, 0, 1, 1] + [0, 0])
    assert expected_calibration_error(labels, proba, n_bins=15) == pytest.approx(0.0, abs=1e-12)
    assert expected_calibration_error(labels, proba, n_bins=10) == pytest.approx(0.0, abs=1e-12)


def test_bad_input_is_refused():
    with pytest.raises(ValueError):
        reliability_table(np.zeros(3, dtype=int), np.full((2, 2), 0.5))
    with pytest.raises(ValueError):
        reliability_table(np.zeros(2, dtype=int), np.full((2, 2), 0.5), n_bins=0)
    with pytest.raises(ValueError):
        uncalibrated_proba(np.full((2, 2), 0.5), 0.0)
    with pytest.raises(ValueError):
        fit_temperature(np.zeros((2, 3)), np.array([0, 3]))


def _synthetic(n: int = 20000, k: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits z and labels drawn from softmax(z): temperature 1 is the truth."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=2.0, size=(n, k))
    cumulative = softmax(z).cumsum(axis=1)
    labels = np.minimum((rng.random((n, 1)) > cumulative).sum(axis=1), k - 1)
    return z, labels


def test_fit_temperature_recovers_known_temperature():
    z, labels = _synthetic()
    t = fit_temperature(z * 3.0, labels)
    assert isinstance(t, float)
    assert t == pytest.approx(3.0, rel=0.05)
    # Over-sharpened the other way, tensors in, deterministic.
    t_half = fit_temperature(torch.from_numpy(z * 0.5).float(), torch.from_numpy(labels))
    assert t_half == pytest.approx(0.5, rel=0.05)
    assert fit_temperature(z * 3.0, labels) == t
    # The fitted temperature brings the calibration back.
    before, after = (expected_calibration_error(labels, softmax(z * 3.0 / temp)) for temp in (1.0, t))
    assert after < before


def test_uncalibrated_proba_inverts_temperature():
    rng = np.random.default_rng(1)
    z = rng.normal(scale=3.0, size=(50, 7))
    for temperature in (0.4, 1.0, 2.5):
        served = softmax(z / temperature)
        np.testing.assert_allclose(uncalibrated_proba(served, temperature), softmax(z), rtol=1e-9, atol=1e-12)
        # As served by predict_proba: float32.
        np.testing.assert_allclose(uncalibrated_proba(served.astype(np.float32), temperature), softmax(z), atol=1e-5)
    # Underflowed zeros stay (near) zero and rows still sum to 1.
    back = uncalibrated_proba(np.array([[1.0, 0.0, 0.0]]), 2.0)
    np.testing.assert_allclose(back, [[1.0, 0.0, 0.0]], atol=1e-12)


def test_reliability_figure_renders(tmp_path: Path):
    table = reliability_table(HAND_LABELS, HAND_PROBA, n_bins=5)
    fig = reliability_figure(table, "arm (seed 0): test reliability", 0.1875)
    assert isinstance(fig, plt.Figure) and len(fig.axes) == 2
    assert "0.188" in fig.axes[0].get_title()
    save(fig, tmp_path / "reliability.png")
    assert (tmp_path / "reliability.png").stat().st_size > 0
    empty = reliability_table(np.zeros(0, dtype=int), np.zeros((0, 3)), n_bins=15)
    fig = reliability_figure(empty, "empty", None)
    assert "n/a" in fig.axes[0].get_title()
    plt.close(fig)


def test_calibration_reaches_mlflow_metric_names():
    report = {"bal_acc": 0.5, "per_class": {"df": {"recall": 0.2, "support": 3}},
              "calibration": {"ece": 0.1, "ece_uncalibrated": 0.2, "temperature": 1.7, "n_bins": 15}}
    flat = flat_metrics(report)
    assert flat["test/ece"] == 0.1 and flat["test/ece_uncalibrated"] == 0.2 and flat["test/temperature"] == 1.7
    assert "test/n_bins" not in flat and "test/calibration" not in flat
    report["calibration"]["ece_uncalibrated"] = None  # no temperature fitted
    assert "test/ece_uncalibrated" not in flat_metrics(report)


def test_cli_reliability_flag_and_default():
    args = build_parser().parse_args(["evaluate", "--arm", "effnet", "--seed", "1"])
    _default_paths(args)
    assert args.reliability == Path("reports/reliability/effnet-s1.csv")
    args = build_parser().parse_args(["evaluate", "--arm", "effnet", "--seed", "1", "--reliability", "x.csv"])
    _default_paths(args)
    assert args.reliability == Path("x.csv")
