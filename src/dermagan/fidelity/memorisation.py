"""Memorisation in the domain feature space: do synthetic images sit closer to train images than new real ones?

Real validation images were never seen by the GAN, so their nearest-train distances are what
"a new image of the same distribution" looks like. Synthetic images much closer to the train
set than that are likely near-copies of train images (the GAN memorised them).
"""

from __future__ import annotations

import numpy as np

from dermagan.errors import DermaganError

CHUNK_ENTRIES = 1 << 23  # ~64 MB of float64 distances per chunk


def check_features(x: np.ndarray, name: str) -> np.ndarray:
    """``x`` as a finite float64 (N, D) array, or an error naming ``name``."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise DermaganError(f"{name}: expected a 2-D array (N, D), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise DermaganError(f"{name}: contains NaN or infinite values")
    return x


def nearest_train_distances(query_features: np.ndarray, train_features: np.ndarray) -> np.ndarray:
    """Euclidean distance from each query vector to its nearest train vector, (N_query,) float64.

    Computed in query chunks of at most ~8M distances, so 10k x 10k stays well under a GB.
    """
    query = check_features(query_features, "query_features")
    train = check_features(train_features, "train_features")
    if query.shape[1] != train.shape[1]:
        raise DermaganError(f"query_features: {query.shape[1]} dims, train_features has {train.shape[1]}")
    if not len(train):
        raise DermaganError("train_features: empty, no nearest neighbour to measure")
    train_sq = (train * train).sum(1)
    chunk = max(1, CHUNK_ENTRIES // len(train))
    out = np.empty(len(query))
    for start in range(0, len(query), chunk):
        q = query[start:start + chunk]
        sq = (q * q).sum(1)[:, None] + train_sq[None, :] - 2 * q @ train.T
        out[start:start + chunk] = np.sqrt(np.maximum(sq.min(1), 0.0))
    return out


def memorisation_report(synthetic_to_train: np.ndarray, val_to_train: np.ndarray) -> dict:
    """Nearest-train distances of synthetic images next to those of unseen real (val) images.

    ``ratio_median`` < 1: synthetic images sit closer to train images than unseen real ones do.
    ``share_closer_than_val_p5``: share of synthetic images closer to the train set than the 5th
    percentile of real val images (a memorisation flag rate; about 0.05 without memorisation).
    """
    syn = np.asarray(synthetic_to_train, dtype=np.float64).ravel()
    val = np.asarray(val_to_train, dtype=np.float64).ravel()
    for name, d in (("synthetic_to_train", syn), ("val_to_train", val)):
        if not len(d) or not np.isfinite(d).all():
            raise DermaganError(f"{name}: need a non-empty array of finite distances, got {len(d)} values")
    syn_median, val_median = float(np.median(syn)), float(np.median(val))
    val_p5 = float(np.percentile(val, 5))
    return {"synthetic_median": syn_median, "synthetic_p5": float(np.percentile(syn, 5)),
            "val_median": val_median, "val_p5": val_p5,
            "ratio_median": syn_median / val_median if val_median > 0 else float("nan"),
            "share_closer_than_val_p5": float((syn < val_p5).mean()),
            "n_synthetic": int(len(syn)), "n_val": int(len(val))}
