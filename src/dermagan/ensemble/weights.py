"""Ensemble weights from validation probabilities: pure numpy.

Every function takes member probabilities as one array ``proba[m, i, k]`` (member m, image i,
class k) and integer labels ``y[i]``. Weights are fitted on the real **val** split only; the test
split is only ever combined with weights fitted elsewhere (``combine``).

- ``bma_weights``: Bayesian model averaging, w_m ∝ prior_m · exp(LL_m / temperature) with
  LL_m = Σ_i log p_m(y_i | x_i). temperature = 1 is the exact posterior over "which single model
  generated the labels", which puts (nearly) all weight on one member once the val split is large;
  temperature = n_val weighs members by their per-image (geometric-mean) likelihood.
- ``stacked_weights``: the mixture weights on the simplex that maximise the val log-likelihood of
  Σ_m w_m p_m(y | x) (EM; the objective is concave in w, so EM reaches its maximum).
- ``average_weights``: 1/M each.
"""

from __future__ import annotations

import numpy as np

from dermagan.errors import DermaganError

COLLAPSE_THRESHOLD = 0.99  # a weight vector whose largest weight exceeds this is one model in disguise
FLOOR = 1e-12  # probabilities are clipped to this before taking logs (a member that gave 0 to a true class)


def _check(proba: np.ndarray, y: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 3 or proba.shape[0] == 0:
        raise DermaganError(f"ensemble: member probabilities must have shape (members, images, classes), "
                            f"got {proba.shape}")
    if y is None:
        return proba, None
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != proba.shape[1]:
        raise DermaganError(f"ensemble: {proba.shape[1]} images of probabilities but labels of shape {y.shape}")
    if len(y) == 0:
        raise DermaganError("ensemble: no validation images to fit weights on")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= proba.shape[2]:
        raise DermaganError(f"ensemble: labels must be class indices in [0, {proba.shape[2]})")
    return proba, y.astype(np.int64)


def true_class_proba(proba: np.ndarray, y: np.ndarray) -> np.ndarray:
    """p_m(y_i | x_i): array (members, images), clipped below at ``FLOOR``."""
    proba, y = _check(proba, y)
    return np.clip(proba[:, np.arange(len(y)), y], FLOOR, None)


def log_likelihoods(proba: np.ndarray, y: np.ndarray) -> np.ndarray:
    """LL_m = Σ_i log p_m(y_i | x_i) of every member: array (members,)."""
    return np.log(true_class_proba(proba, y)).sum(axis=1)


def mixture_log_likelihood(proba: np.ndarray, y: np.ndarray, weights: np.ndarray) -> float:
    """Σ_i log Σ_m w_m p_m(y_i | x_i): the log-likelihood of the weighted ensemble."""
    p = true_class_proba(proba, y)
    return float(np.log(np.clip(_simplex(weights, p.shape[0]) @ p, FLOOR, None)).sum())


def logsumexp(values: np.ndarray) -> float:
    """log Σ exp(values), without overflow or underflow."""
    values = np.asarray(values, dtype=np.float64)
    top = values.max()
    return float(top + np.log(np.exp(values - top).sum()))


def bma_weights(val_proba: np.ndarray, y: np.ndarray, prior: np.ndarray | None = None,
                temperature: float = 1.0) -> np.ndarray:
    """Posterior model weights w_m ∝ prior_m · exp(LL_m / temperature), summing to 1.

    ``prior``: non-negative, any scale (normalised here); uniform when None. Computed in log space
    (log prior + LL / T − logsumexp), so log-likelihoods of −10^6 neither overflow nor give 0/0.
    """
    val_proba, y = _check(val_proba, y)
    n_members = val_proba.shape[0]
    if not temperature > 0 or not np.isfinite(temperature):
        raise DermaganError(f"ensemble: BMA temperature must be a positive number, got {temperature}")
    if prior is None:
        log_prior = np.zeros(n_members)
    else:
        prior = np.asarray(prior, dtype=np.float64)
        if prior.shape != (n_members,) or (prior < 0).any() or not prior.sum() > 0:
            raise DermaganError(f"ensemble: prior must be {n_members} non-negative numbers, not all 0; got {prior}")
        with np.errstate(divide="ignore"):
            log_prior = np.log(prior / prior.sum())
    log_weights = log_prior + log_likelihoods(val_proba, y) / float(temperature)
    weights = np.exp(log_weights - logsumexp(log_weights))
    return weights / weights.sum()


def stacked_weights(val_proba: np.ndarray, y: np.ndarray, iters: int = 1000, tol: float = 1e-10) -> np.ndarray:
    """Mixture weights on the simplex maximising Σ_i log Σ_m w_m p_m(y_i | x_i) on val (EM).

    Starts from uniform weights; each step sets w_m ← mean_i w_m p_m(y_i) / Σ_k w_k p_k(y_i), which
    never lowers the log-likelihood. Stops after ``iters`` steps or when the mean per-image
    log-likelihood gains less than ``tol``. Deterministic (no randomness anywhere).
    """
    val_proba, y = _check(val_proba, y)
    if int(iters) < 1 or not tol >= 0:
        raise DermaganError(f"ensemble: stacking needs iters >= 1 and tol >= 0, got iters={iters}, tol={tol}")
    p = true_class_proba(val_proba, y)  # (M, N)
    weights = np.full(p.shape[0], 1.0 / p.shape[0])
    previous = np.log(weights @ p).mean()
    for _ in range(int(iters)):
        mixture = weights @ p
        weights = weights * (p / mixture).mean(axis=1)
        weights /= weights.sum()
        current = np.log(weights @ p).mean()
        if current - previous < tol:
            break
        previous = current
    return weights


def average_weights(n_members: int) -> np.ndarray:
    """1/M for each of ``n_members`` members."""
    if int(n_members) < 1:
        raise DermaganError("ensemble: needs at least one member")
    return np.full(int(n_members), 1.0 / int(n_members))


def combine(proba: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Σ_m w_m proba[m]: the ensemble's probabilities, array (images, classes)."""
    proba, _ = _check(proba)
    return np.tensordot(_simplex(weights, proba.shape[0]), proba, axes=1)


def is_collapsed(weights: np.ndarray, threshold: float = COLLAPSE_THRESHOLD) -> bool:
    """True when one member holds more than ``threshold`` of the weight (the ensemble is one model)."""
    return bool(np.max(weights) > threshold)


def effective_members(weights: np.ndarray) -> float:
    """1 / Σ w_m²: 1 for a collapsed ensemble, M for uniform weights."""
    weights = np.asarray(weights, dtype=np.float64)
    return float(1.0 / np.square(weights).sum())


def _simplex(weights: np.ndarray, n_members: int) -> np.ndarray:
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (n_members,) or (weights < 0).any() or not np.isclose(weights.sum(), 1.0, atol=1e-6):
        raise DermaganError(f"ensemble: weights must be {n_members} non-negative numbers summing to 1, got {weights}")
    return weights
