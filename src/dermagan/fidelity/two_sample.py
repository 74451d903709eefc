"""Classifier two-sample test: can a linear probe tell real features from synthetic ones?

Out-of-fold ROC AUC of a logistic regression separating real (0) from synthetic (1) feature
vectors: 0.5 means indistinguishable in that feature space, 1 means trivially separable. Unlike
the GAN's own discriminator, the probe is fitted after training, on held-out folds.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from dermagan.errors import DermaganError


def _check_features(real: np.ndarray, synthetic: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    real, synthetic = np.asarray(real, dtype=np.float64), np.asarray(synthetic, dtype=np.float64)
    for name, x in (("real_features", real), ("synthetic_features", synthetic)):
        if x.ndim != 2:
            raise DermaganError(f"{name}: expected a 2-D array (N, D), got shape {x.shape}")
        if not np.isfinite(x).all():
            raise DermaganError(f"{name}: contains NaN or infinite values")
    if real.shape[1] != synthetic.shape[1]:
        raise DermaganError(f"synthetic_features: {synthetic.shape[1]} dims, real_features has {real.shape[1]}")
    return real, synthetic


def auc_from_scores(negative: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC = P(positive score > negative score) + P(tie) / 2, in O(n log n) via sorting."""
    ordered = np.sort(negative)
    below = np.searchsorted(ordered, positive, side="left")
    at_or_below = np.searchsorted(ordered, positive, side="right")
    return float((below.sum() + 0.5 * (at_or_below - below).sum()) / (len(negative) * len(positive)))


def two_sample_auc(real_features: np.ndarray, synthetic_features: np.ndarray, *, folds: int = 5,
                   n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
    """Out-of-fold AUC of a real-vs-synthetic logistic regression, with a percentile bootstrap CI.

    Features are standardised inside each fold; ``class_weight='balanced'`` keeps unequal set sizes
    from biasing the probe. ``folds`` shrinks to the smaller set size (at least 2 per set needed).
    The CI resamples real and synthetic out-of-fold scores separately (stratified, sizes kept); it
    covers the evaluation noise, not refitting. Values under 0.5 are possible by chance.
    """
    real, synthetic = _check_features(real_features, synthetic_features)
    n_real, n_syn = len(real), len(synthetic)
    used_folds = min(int(folds), n_real, n_syn)
    if used_folds < 2:
        raise DermaganError(f"two-sample test: need at least 2 real and 2 synthetic samples and folds >= 2, "
                            f"got {n_real} real, {n_syn} synthetic, folds={folds}")
    if not 0 < level < 1:
        raise DermaganError(f"two-sample test: level must be in (0, 1), got {level}")
    if n_boot < 0:
        raise DermaganError(f"two-sample test: n_boot must be >= 0, got {n_boot}")
    x = np.concatenate([real, synthetic])
    y = np.concatenate([np.zeros(n_real, dtype=np.int64), np.ones(n_syn, dtype=np.int64)])
    probe = make_pipeline(StandardScaler(), LogisticRegression(class_weight="balanced", max_iter=2000))
    cv = StratifiedKFold(n_splits=used_folds, shuffle=True, random_state=seed)
    scores = cross_val_predict(probe, x, y, cv=cv, method="predict_proba")[:, 1]
    auc = float(roc_auc_score(y, scores))
    real_scores, syn_scores = scores[:n_real], scores[n_real:]
    rng = np.random.default_rng(seed)
    boots = np.array([auc_from_scores(real_scores[rng.integers(0, n_real, n_real)],
                                      syn_scores[rng.integers(0, n_syn, n_syn)]) for _ in range(n_boot)])
    tail = 100 * (1 - level) / 2
    low, high = (np.percentile(boots, [tail, 100 - tail]) if n_boot else (np.nan, np.nan))
    return {"auc": auc, "ci_low": float(low), "ci_high": float(high), "n_real": n_real, "n_synthetic": n_syn,
            "folds": used_folds}
