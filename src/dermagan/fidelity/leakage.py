"""Source leakage of translated images: is a CycleGAN image still recognisably its own nv source?

An image-to-image method (CycleGAN nv -> rare class) starts every synthetic image from one real
source image. If the translation only recolours its source, the "new" rare-class image is that
nv image in disguise. In a feature space (the domain encoder's), each translated image's distance
to its own source is set against its distance to the nearest *other* image of the source class:

- ``own_distance_median`` and ``nearest_other_distance_median``, and the median of their ratio
  (``ratio_median`` < 1: translations sit closer to their own source than to any other nv image);
- ``share_own_nearest``: share of translated images whose nearest source-class image is their own
  source (``chance_own_nearest`` = 1 / n_reference when the translation forgot its source);
- ``flagged``: images whose own-source distance is below the 5th percentile of the nearest-other
  distances (``flag_threshold``), i.e. closer to their source than almost any image is to a
  different nv image: near-copies of the source.

Plain functions on feature arrays: no encoder, params or MLflow here.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.distance import cdist

from dermagan.errors import DermaganError
from dermagan.fidelity.memorisation import CHUNK_ENTRIES, check_features  # the same checks and chunking


def source_distances(translated_features: np.ndarray, reference_features: np.ndarray,
                     source_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each translated image's Euclidean distance to its own source and to the nearest other reference image.

    ``reference_features`` (M, D): the source-class images (every candidate source);
    ``source_index`` (N,): the row of each translated image's own source in it.
    """
    query = check_features(translated_features, "translated_features")
    reference = check_features(reference_features, "reference_features")
    index = np.asarray(source_index)
    if query.shape[1] != reference.shape[1]:
        raise DermaganError(f"translated_features: {query.shape[1]} dims, reference_features has {reference.shape[1]}")
    if len(reference) < 2:
        raise DermaganError(f"reference_features: need at least 2 source-class images, got {len(reference)}")
    if index.shape != (len(query),) or not np.issubdtype(index.dtype, np.integer):
        raise DermaganError(f"source_index: expected {len(query)} integer row numbers, got {index.dtype} {index.shape}")
    if len(index) and (index.min() < 0 or index.max() >= len(reference)):
        raise DermaganError(f"source_index: rows must be in [0, {len(reference)}), got {index.min()}..{index.max()}")
    own, other = np.empty(len(query)), np.empty(len(query))
    chunk = max(1, CHUNK_ENTRIES // len(reference))
    for start in range(0, len(query), chunk):
        d = cdist(query[start:start + chunk], reference)
        rows = np.arange(len(d))
        mine = index[start:start + chunk]
        own[start:start + chunk] = d[rows, mine]
        d[rows, mine] = np.inf
        other[start:start + chunk] = d.min(1)
    return own, other


def source_leakage_report(own: np.ndarray, nearest_other: np.ndarray, n_reference: int) -> dict:
    """Summary of ``source_distances`` (see the module docstring for every key)."""
    own, other = np.asarray(own, dtype=np.float64), np.asarray(nearest_other, dtype=np.float64)
    if not len(own) or own.shape != other.shape or not (np.isfinite(own).all() and np.isfinite(other).all()):
        raise DermaganError(f"source leakage: need equal-length non-empty arrays of finite distances, got "
                            f"{own.shape} and {other.shape}")
    threshold = float(np.percentile(other, 5))
    flagged = own < threshold
    positive = other > 0
    ratio = own[positive] / other[positive]
    return {"own_distance_median": float(np.median(own)), "nearest_other_distance_median": float(np.median(other)),
            "ratio_median": float(np.median(ratio)) if len(ratio) else float("nan"),
            "share_own_nearest": float((own < other).mean()), "chance_own_nearest": 1.0 / int(n_reference),
            "flag_threshold": threshold, "flagged": int(flagged.sum()), "share_flagged": float(flagged.mean()),
            "n_translated": int(len(own)), "n_reference": int(n_reference)}


def source_leakage(translated_features: np.ndarray, reference_features: np.ndarray, source_index: np.ndarray) -> dict:
    """``source_leakage_report`` of the translated images against the source-class reference images."""
    own, other = source_distances(translated_features, reference_features, source_index)
    return source_leakage_report(own, other, len(reference_features))
