"""The lesion-grouped split never lets a lesion cross splits, and is seeded."""

import numpy as np
import pandas as pd
import pytest

from dermagan.config.schema import HAM10000_CLASSES as CLASSES
from dermagan.data.splits import grouped_split
from dermagan.errors import DermaganError


def frame_with_repeated_lesions(n_lesions: int = 900, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    dx = rng.choice(CLASSES, size=n_lesions, p=[0.05, 0.07, 0.1, 0.03, 0.1, 0.62, 0.03])
    images = rng.integers(1, 5, size=n_lesions)  # 1-4 images per lesion
    rows = [{"lesion_id": f"L{i}", "image_id": f"I{i}_{k}", "dx": d}
            for i, (d, n) in enumerate(zip(dx, images)) for k in range(n)]
    return pd.DataFrame(rows)


def test_no_lesion_in_two_splits():
    frame = frame_with_repeated_lesions()
    frame["split"] = grouped_split(frame, 0.15, 0.15, seed=1)
    assert frame.groupby("lesion_id")["split"].nunique().max() == 1
    assert set(frame["split"]) == {"train", "val", "test"}


def test_split_shares_and_every_class_present():
    frame = frame_with_repeated_lesions()
    frame["split"] = grouped_split(frame, 0.15, 0.15, seed=1)
    shares = frame["split"].value_counts(normalize=True)
    assert 0.60 < shares["train"] < 0.80 and 0.08 < shares["val"] < 0.22 and 0.08 < shares["test"] < 0.22
    assert (frame.groupby("split")["dx"].nunique() == len(CLASSES)).all()


def test_seeded_and_seed_sensitive():
    frame = frame_with_repeated_lesions()
    a, b = grouped_split(frame, 0.15, 0.15, 3), grouped_split(frame, 0.15, 0.15, 3)
    c = grouped_split(frame, 0.15, 0.15, 4)
    assert a.equals(b) and not a.equals(c)


@pytest.mark.parametrize("val,test", [(0, 0.2), (0.5, 0.5), (0.2, 1.2)])
def test_bad_fractions(val, test):
    with pytest.raises(DermaganError, match="val_fraction"):
        grouped_split(frame_with_repeated_lesions(50), val, test, 0)


def test_lesion_subset_caps_each_class_keeps_whole_lesions_and_is_seeded():
    from dermagan.data.splits import subsample_lesions

    frame = frame_with_repeated_lesions()
    kept = subsample_lesions(frame, 20, seed=0)
    lesions = kept.drop_duplicates("lesion_id")["dx"].value_counts()
    full = frame.drop_duplicates("lesion_id")["dx"].value_counts()
    assert all(lesions[c] == min(20, full[c]) for c in full.index)  # at most 20 lesions per class, all when fewer
    for lesion, rows in kept.groupby("lesion_id"):  # every image of a kept lesion stays
        assert len(rows) == (frame["lesion_id"] == lesion).sum()
    assert kept.equals(subsample_lesions(frame, 20, seed=0))
    assert not kept.equals(subsample_lesions(frame, 20, seed=1))
