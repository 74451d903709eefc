"""Threshold calibration helpers on hashes we control."""

import numpy as np

from dermagan.dedup.calibrate import different_lesion_nearest, pair_distances, same_lesion_pairs, threshold_table
from dermagan.dedup.search import hamming_matrix


def test_same_lesion_pairs_and_distances():
    lesions = np.array(["a", "b", "a", "c", "a", "b"])
    pairs = same_lesion_pairs(lesions)
    assert sorted(map(tuple, pairs.tolist())) == [(0, 2), (0, 4), (1, 5), (2, 4)]
    hashes = np.random.default_rng(0).integers(0, 256, (6, 8), dtype=np.uint8)
    expected = [hamming_matrix(hashes[i:i + 1], hashes[j:j + 1])[0, 0] for i, j in pairs]
    assert pair_distances(hashes, pairs).tolist() == expected


def test_nearest_other_lesion_ignores_own_lesion_and_table_is_monotone():
    hashes = np.zeros((4, 8), dtype=np.uint8)
    hashes[1, 0] = 0b111  # lesion x's second image: 3 bits away
    hashes[2:] = 255      # lesion y: far away
    lesions = np.array(["x", "x", "y", "y"])
    nearest = different_lesion_nearest(hashes, lesions, sample=4, seed=0)
    assert sorted(nearest.tolist()) == [61, 61, 61, 64]
    table = threshold_table(np.array([1, 5, 9]), nearest, thresholds=[0, 5, 64])
    assert table["same_lesion_caught"].tolist() == [0, 2 / 3, 1] and table["different_lesion_flagged"].iloc[-1] == 1
