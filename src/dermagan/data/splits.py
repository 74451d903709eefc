"""Train/val/test split grouped by lesion, stratified by diagnosis."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from dermagan.errors import DermaganError


def _holdout(frame: pd.DataFrame, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of one StratifiedGroupKFold fold of about ``fraction`` of the rows."""
    n_splits = max(2, round(1 / fraction))
    lesions = frame["lesion_id"].nunique()
    if lesions < n_splits:
        raise DermaganError(f"only {lesions} lesions to split, but a held-out share of {fraction} needs at least "
                            f"{n_splits} (one fold of {n_splits}); add images or raise prepare.val_fraction / "
                            "prepare.test_fraction")
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    _, held = next(folds.split(frame, frame["dx"], groups=frame["lesion_id"]))
    mask = np.zeros(len(frame), dtype=bool)
    mask[held] = True
    return mask


def subsample_lesions(frame: pd.DataFrame, max_per_class: int, seed: int) -> pd.DataFrame:
    """The rows of at most ``max_per_class`` lesions of each class (a lesion counts for the class of its first
    image), drawn with ``seed``; every image of a kept lesion stays, so the split stays lesion-grouped."""
    first = frame.drop_duplicates("lesion_id")[["lesion_id", "dx"]]
    rng = np.random.default_rng(seed)
    kept = []
    for _, lesions in first.groupby("dx", sort=True):
        ids = lesions["lesion_id"].to_numpy()
        kept.extend(ids if len(ids) <= max_per_class else rng.choice(ids, size=max_per_class, replace=False))
    return frame[frame["lesion_id"].isin(set(kept))]


def grouped_split(
    frame: pd.DataFrame, val_fraction: float, test_fraction: float, seed: int
) -> pd.Series:
    """Assign each row to train/val/test so that no lesion spans two splits.

    Returns a Series of split names aligned with ``frame``'s index.
    """
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DermaganError(
            f"params: prepare.val_fraction ({val_fraction}) and prepare.test_fraction "
            f"({test_fraction}) must be in (0, 1) and sum to less than 1"
        )
    frame = frame.reset_index(drop=True)
    split = np.full(len(frame), "train", dtype=object)
    test_mask = _holdout(frame, test_fraction, seed)
    split[test_mask] = "test"
    rest = np.flatnonzero(~test_mask)
    val_mask = _holdout(frame.iloc[rest], val_fraction / (1 - test_fraction), seed + 1)
    split[rest[val_mask]] = "val"
    return pd.Series(split, index=frame.index, name="split")


def grouped_kfold(labels: np.ndarray, groups: np.ndarray, n_splits: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, held-out) index pairs of a StratifiedGroupKFold: no group (lesion) in two folds."""
    if n_splits < 2:
        raise DermaganError(f"params: K-fold needs at least 2 splits, got {n_splits}")
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return list(folds.split(np.zeros(len(labels)), labels, groups=groups))


def source_split(frame: pd.DataFrame, test_sources: tuple[str, ...], val_fraction: float, seed: int) -> pd.Series:
    """A domain-shift split: test = every image of ``test_sources`` (column ``source``), and every other image
    of a lesion that has one there, so no lesion spans two splits; train/val come from the other sources,
    lesion-grouped and stratified as in :func:`grouped_split`."""
    if not 0 < val_fraction < 1:
        raise DermaganError(f"params: prepare.val_fraction ({val_fraction}) must be in (0, 1)")
    frame = frame.reset_index(drop=True)
    known = sorted(frame["source"].unique())
    unknown = [s for s in test_sources if s not in known]
    if unknown:
        raise DermaganError(f"params: prepare.split.test_sources {unknown} are not sources of this data; "
                            f"sources are {known}")
    in_test = frame["source"].isin(list(test_sources))
    test_lesions = set(frame.loc[in_test, "lesion_id"])
    test_mask = frame["lesion_id"].isin(test_lesions).to_numpy()
    if test_mask.all():
        raise DermaganError(f"params: prepare.split.test_sources {list(test_sources)} hold every image; train "
                            "needs another source")
    split = np.full(len(frame), "train", dtype=object)
    split[test_mask] = "test"
    rest = np.flatnonzero(~test_mask)
    val_mask = _holdout(frame.iloc[rest], val_fraction, seed + 1)
    split[rest[val_mask]] = "val"
    return pd.Series(split, index=frame.index, name="split")


def split_description(by: str, test_sources, val_fraction: float, test_fraction: float, seed: int,
                      max_lesions_per_class: int | None = None) -> str:
    """One sentence on how test was held out, for model cards (``prepare.split``'s settings)."""
    if max_lesions_per_class is not None:
        return (f"a subset of at most {max_lesions_per_class} lesions per class (seed {seed}), then "
                  + split_description(by, test_sources, val_fraction, test_fraction, seed))
    if by == "source":
        return (f"domain shift: test holds every image of the source(s) {', '.join(test_sources)} and of any lesion "
                f"seen there; train and validation ({val_fraction:.0%} of the remaining lesions) come from the "
                f"other sources, grouped by lesion_id (seed {seed})")
    return (f"lesion-disjoint: {test_fraction:.0%} of lesions for test and {val_fraction:.0%} for validation, "
            f"stratified and grouped by lesion_id so no lesion is in two splits (seed {seed})")
