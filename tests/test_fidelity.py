"""Fidelity metrics behave as distances should, on features we control."""

import numpy as np
import pytest

from dermagan.evaluate.fidelity import (
    extract_features,
    feature_extractor,
    fidelity_metrics,
    frechet_distance,
    kernel_distance,
    knn_precision_recall,
)


def gaussian(n, shift=0.0, scale=1.0, seed=0, d=16):
    return np.random.default_rng(seed).normal(shift, scale, size=(n, d))


def test_frechet_distance_zero_for_same_and_grows_with_shift():
    a = gaussian(500)
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    near, far = frechet_distance(a, gaussian(500, 0.5, seed=1)), frechet_distance(a, gaussian(500, 2.0, seed=1))
    assert 0 < near < far
    assert far == pytest.approx(16 * 4, rel=0.15)  # ||mu||^2 = d * shift^2 dominates


def test_kernel_distance_near_zero_for_same_distribution():
    same, _ = kernel_distance(gaussian(400), gaussian(400, seed=2), subsets=10, subset_size=100)
    shifted, _ = kernel_distance(gaussian(400), gaussian(400, 1.0, seed=2), subsets=10, subset_size=100)
    assert abs(same) < 0.1 * shifted


def test_knn_precision_recall_detects_mode_collapse():
    real = gaussian(300)
    collapsed = gaussian(300, scale=0.05, seed=3)  # every fake near the real mean
    pr = knn_precision_recall(real, collapsed, k=3)
    assert pr["precision"] > 0.9 and pr["recall"] < 0.3
    good = knn_precision_recall(real, gaussian(300, seed=4), k=3)
    assert good["precision"] > 0.6 and good["recall"] > 0.6


def test_features_from_packaged_weights():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    feats = extract_features(feature_extractor(), images, size=64)
    assert feats.shape == (4, 1280) and np.isfinite(feats).all()
    metrics = fidelity_metrics(gaussian(50, d=8), gaussian(50, seed=1, d=8))
    assert set(metrics) >= {"fid_effnetlite0", "kid_effnetlite0", "knn_precision", "knn_recall"}
