"""Calibrate the near-duplicate threshold on HAM10000's own same-lesion image pairs.

Two photographs of one lesion are the closest thing to a "memorised copy" that real data offers;
pairs of different lesions are what must stay apart. The distance distributions of both tell
which Hamming threshold separates them.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from dermagan.dedup.search import hamming_matrix


def same_lesion_pairs(lesion_ids: np.ndarray) -> np.ndarray:
    """Index pairs (i, j), i < j, of images that share a lesion id."""
    groups = pd.Series(np.arange(len(lesion_ids))).groupby(np.asarray(lesion_ids)).agg(list)
    pairs = [p for members in groups if len(members) > 1 for p in itertools.combinations(members, 2)]
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def pair_distances(hashes: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Hamming distance of each pair of packed hashes."""
    return np.unpackbits(hashes[pairs[:, 0]] ^ hashes[pairs[:, 1]], axis=1).sum(axis=1).astype(np.int64)


def different_lesion_nearest(hashes: np.ndarray, lesion_ids: np.ndarray, sample: int, seed: int) -> np.ndarray:
    """For ``sample`` random images, the distance to the nearest image of ANOTHER lesion."""
    rng = np.random.default_rng(seed)
    lesion_ids = np.asarray(lesion_ids)
    chosen = rng.choice(len(hashes), size=min(sample, len(hashes)), replace=False)
    d = hamming_matrix(hashes[chosen], hashes)
    d[lesion_ids[chosen][:, None] == lesion_ids[None, :]] = 1 << 16
    return d.min(axis=1)


def threshold_table(same: np.ndarray, other_nearest: np.ndarray, thresholds=range(0, 33, 2)) -> pd.DataFrame:
    """Per threshold: share of same-lesion pairs caught and share of images whose nearest
    different-lesion image would (wrongly) count as a near-duplicate."""
    return pd.DataFrame([{"threshold": t, "same_lesion_caught": float((same <= t).mean()),
                          "different_lesion_flagged": float((other_nearest <= t).mean())} for t in thresholds])


def calibrate(hashes: dict[str, np.ndarray], lesion_ids: np.ndarray, thresholds: dict[str, int], sample: int,
              seed: int) -> tuple[dict, pd.DataFrame, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Per hash kind: same-lesion pair distances against each sampled image's nearest other lesion.

    ``hashes``: kind -> packed hashes of every image (``lesion_ids`` in the same order);
    ``thresholds``: params ``dedup.thresholds``. Returns the summary (calibration.json), the
    threshold table of every kind and the two distance arrays per kind (for the figure).
    """
    pairs = same_lesion_pairs(lesion_ids)
    summary, tables, distances = {"same_lesion_pairs": int(len(pairs)), "images": int(len(lesion_ids))}, [], {}
    for kind, packed in hashes.items():
        same, other = pair_distances(packed, pairs), different_lesion_nearest(packed, lesion_ids, sample, seed)
        distances[kind] = (same, other)
        threshold = int(thresholds[kind])
        summary[kind] = {"same_lesion_median": float(np.median(same)) if len(same) else None,
                         "nearest_other_lesion_median": float(np.median(other)),
                         "threshold": threshold,
                         "same_lesion_caught_at_threshold": float((same <= threshold).mean()) if len(same) else None,
                         "other_lesion_flagged_at_threshold": float((other <= threshold).mean())}
        tables.append(threshold_table(same, other).assign(kind=kind))
    return summary, pd.concat(tables), distances
