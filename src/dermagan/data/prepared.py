"""The prepared dataset on disk: a split table plus one compact array file per split."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dermagan.errors import DermaganError

SPLIT_TABLE = "splits.csv"
CLASSES_FILE = "classes.json"  # the task's ordered label names: integer labels index this list


@dataclass(frozen=True)
class SplitArrays:
    """Images (N, H, W, 3) uint8, integer labels and image ids of one split."""

    images: np.ndarray
    labels: np.ndarray
    image_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def write_split(directory: Path, name: str, arrays: SplitArrays) -> Path:
    """Write one split as ``<name>.npz`` (uncompressed: loading speed beats size here)."""
    path = Path(directory) / f"{name}.npz"
    np.savez(path, images=arrays.images, labels=arrays.labels, image_ids=arrays.image_ids)
    return path


def read_split(directory: Path, name: str) -> SplitArrays:
    """Load ``<name>.npz`` from a prepared folder."""
    path = Path(directory) / f"{name}.npz"
    if not path.is_file():
        raise DermaganError(f"{path}: prepared split not found; run `dermagan prepare` first")
    with np.load(path, allow_pickle=False) as data:
        return SplitArrays(data["images"], data["labels"].astype(np.int64), data["image_ids"])


def read_split_table(directory: Path) -> pd.DataFrame:
    """Load the split table (image_id, lesion_id, dx, split, ...)."""
    path = Path(directory) / SPLIT_TABLE
    if not path.is_file():
        raise DermaganError(f"{path}: split table not found; run `dermagan prepare` first")
    return pd.read_csv(path, dtype={"image_id": str, "lesion_id": str, "dx": str, "split": str})


def write_classes(directory: Path, classes: tuple[str, ...]) -> Path:
    path = Path(directory) / CLASSES_FILE
    path.write_text(json.dumps({"classes": list(classes)}, indent=2) + "\n")
    return path


def read_classes(directory: Path) -> tuple[str, ...]:
    """The ordered class names a prepared folder was built with."""
    path = Path(directory) / CLASSES_FILE
    if not path.is_file():
        raise DermaganError(f"{path}: class list not found; re-run `dermagan prepare` (the prepared folder "
                            "predates stored class names)")
    try:
        classes = json.loads(path.read_text())["classes"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DermaganError(f"{path}: not a class list ({exc})") from exc
    return tuple(str(c) for c in classes)


def check_classes(directory: Path, expected: tuple[str, ...]) -> tuple[str, ...]:
    """Refuse a prepared folder built for another label set than params ``data.classes``."""
    stored = read_classes(directory)
    if tuple(expected) != stored:
        raise DermaganError(f"{Path(directory)}: prepared for classes {list(stored)}, but params data.classes is "
                            f"{list(expected)}; re-run `dermagan prepare` (or `dvc repro`)")
    return stored


def arrays_for(table: pd.DataFrame, images: np.ndarray, split: str, classes: tuple[str, ...]) -> SplitArrays:
    """Cut the rows of one split out of the full image stack (rows aligned with ``table``)."""
    mask = (table["split"] == split).to_numpy()
    labels = table.loc[mask, "dx"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    return SplitArrays(images[mask], labels.astype(np.int64), table.loc[mask, "image_id"].to_numpy(str))

