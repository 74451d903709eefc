"""Plain pandas frames that the data-quality suites check (one row per image, lesion, ...)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from dermagan.constants import SPLITS
from dermagan.data.images import check_images_dir, find_image, open_rgb
from dermagan.data.prepared import SplitArrays
from dermagan.errors import DermaganError

UNREADABLE = "unreadable"
MISSING = "missing"
STD_CHUNK = 512


def raw_status(images_dir: Path, image_id: str) -> tuple[bool, str]:
    """Return (decodes fully, PIL mode) of one raw image; mode is 'missing'/'unreadable' on errors."""
    try:
        path = find_image(images_dir, image_id)
    except DermaganError:
        return False, MISSING
    try:
        with Image.open(path) as img:
            mode = img.mode
    except (OSError, SyntaxError, ValueError):
        return False, UNREADABLE
    try:
        open_rgb(path, strict=False)
    except DermaganError:
        return False, mode
    return True, mode


def raw_columns(image_ids: list[str], raw_dir: Path) -> pd.DataFrame:
    """Decode every raw image once: columns raw_decodes and raw_mode, aligned with ``image_ids``."""
    images_dir = check_images_dir(Path(raw_dir) / "images")
    status = [raw_status(images_dir, image_id)
              for image_id in tqdm(image_ids, desc="check raw images", unit="img", mininterval=2)]
    decodes = [ok for ok, _ in status]
    modes = [mode for _, mode in status]
    return pd.DataFrame({"raw_decodes": np.asarray(decodes, dtype=bool), "raw_mode": modes})


def pixel_stds(images: np.ndarray) -> np.ndarray:
    """Standard deviation of each image's uint8 pixels, computed in chunks to bound memory."""
    flat = images.reshape(len(images), -1)
    out = np.empty(len(images), dtype=np.float64)
    for start in range(0, len(images), STD_CHUNK):
        out[start:start + STD_CHUNK] = flat[start:start + STD_CHUNK].std(axis=1, dtype=np.float64)
    return out


def array_columns(arrays: SplitArrays) -> pd.DataFrame:
    """Shape, pixel spread and content hash of each prepared image of one split."""
    images = arrays.images
    if images.ndim != 4:
        raise DermaganError(f"prepared images have shape {images.shape}, expected (N, H, W, C)")
    n, height, width, channels = images.shape
    hashes = [hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest() for image in images]
    return pd.DataFrame({
        "image_id": np.asarray(arrays.image_ids).astype(str),
        "height": np.full(n, height, dtype=np.int64),
        "width": np.full(n, width, dtype=np.int64),
        "channels": np.full(n, channels, dtype=np.int64),
        "pixel_std": pixel_stds(images),
        "content_hash": hashes,
    })


def check_aligned(rows: pd.DataFrame, arrays: SplitArrays, split: str, classes: tuple[str, ...]) -> None:
    """Raise if a split's arrays do not hold the split table's images in the same order (or their labels,
    indices into the task labels ``classes``, disagree with the table's ``dx``)."""
    expected = rows["image_id"].astype(str).to_numpy()
    found = np.asarray(arrays.image_ids).astype(str)
    if len(expected) != len(found) or len(arrays.images) != len(found):
        raise DermaganError(f"split '{split}': table lists {len(expected)} images, "
                            f"arrays hold {len(arrays.images)} images and {len(found)} ids")
    wrong = np.flatnonzero(expected != found)
    if len(wrong):
        i = int(wrong[0])
        raise DermaganError(f"split '{split}': row {i} of the arrays is {found[i]}, "
                            f"the split table says {expected[i]} (arrays out of order)")
    codes = rows["dx"].map({c: i for i, c in enumerate(classes)}).to_numpy(dtype=float)
    bad = np.flatnonzero(~np.isnan(codes) & (codes != np.asarray(arrays.labels)))
    if len(bad):
        raise DermaganError(f"split '{split}': label of {expected[bad[0]]} in the arrays "
                            f"disagrees with its dx '{rows['dx'].iloc[bad[0]]}' in the split table")


def image_frame(table: pd.DataFrame, arrays_by_split: dict[str, SplitArrays],
                raw_dir: Path, classes: tuple[str, ...]) -> pd.DataFrame:
    """One row per image: ids, split, age, raw-file status and prepared-array statistics.

    ``classes``: the task labels the arrays' integer labels index (params ``data.classes``).

    A table without an 'age' column gets no age column here; the suite then reports it missing.
    """
    columns = ["image_id", "lesion_id", "dx", "split"]
    if "age" in table.columns:
        table = table.assign(age=numeric_age(table))
        columns.append("age")
    parts = []
    for split in SPLITS:
        rows = table.loc[table["split"] == split, columns]
        if split not in arrays_by_split:
            if len(rows):
                raise DermaganError(f"split '{split}': {len(rows)} images listed but no arrays given")
            continue
        check_aligned(rows, arrays_by_split[split], split, classes)
        stats = array_columns(arrays_by_split[split]).drop(columns="image_id")
        parts.append(pd.concat([rows.reset_index(drop=True), stats], axis=1))
    other = table.loc[~table["split"].isin(SPLITS), ["image_id", "lesion_id", "dx", "split"]]
    if len(other):
        raise DermaganError(f"split table has unknown split(s) {sorted(other['split'].astype(str).unique())}"
                            f" (e.g. image {other['image_id'].iloc[0]}); expected {list(SPLITS)}")
    if not parts:
        raise DermaganError("split table lists no images")
    frame = pd.concat(parts, ignore_index=True)
    raw = raw_columns(frame["image_id"].astype(str).tolist(), raw_dir)
    frame.insert(4, "raw_decodes", raw["raw_decodes"].to_numpy())
    frame.insert(5, "raw_mode", raw["raw_mode"].to_numpy())
    return frame


def numeric_age(table: pd.DataFrame) -> pd.Series:
    """The split table's ages as floats (empty = NaN: HAM10000 leaves some unknown); text is an error."""
    age = pd.to_numeric(table["age"], errors="coerce")
    text = table["age"].astype("string").str.strip()
    bad = age.isna() & table["age"].notna() & (text != "")
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise DermaganError(f"split table: column 'age' is not a number on {int(bad.sum())} row(s), e.g. image "
                            f"{table['image_id'].iloc[i]} has age {table['age'].iloc[i]!r}")
    return age.astype(float)


def lesion_frame(images_frame: pd.DataFrame) -> pd.DataFrame:
    """One row per lesion_id with the number of images and of distinct splits it appears in."""
    grouped = images_frame.groupby("lesion_id", sort=True)
    return pd.DataFrame({"n_images": grouped.size(), "n_splits": grouped["split"].nunique(),
                         "splits": grouped["split"].agg(lambda s: ",".join(sorted(set(s))))}
                        ).reset_index()


def duplicate_frame(images_frame: pd.DataFrame) -> pd.DataFrame:
    """One row per prepared-pixel content hash with the number of distinct splits it appears in."""
    grouped = images_frame.groupby("content_hash", sort=True)
    return pd.DataFrame({"n_images": grouped.size(), "n_splits": grouped["split"].nunique(),
                         "image_ids": grouped["image_id"].agg(lambda s: ",".join(s.astype(str)[:5]))}
                        ).reset_index()


def class_frame(images_frame: pd.DataFrame, classes: tuple[str, ...]) -> pd.DataFrame:
    """One row per (split, dx) for every task label of ``classes`` and split (zero-filled): count and share
    of split."""
    counts = images_frame.groupby(["split", "dx"]).size()
    index = pd.MultiIndex.from_product([SPLITS, list(classes)], names=["split", "dx"])
    frame = counts.reindex(index, fill_value=0).rename("count").astype(np.int64).reset_index()
    totals = frame.groupby("split")["count"].transform("sum")
    frame["share"] = (frame["count"] / totals.where(totals > 0)).fillna(0.0).astype(np.float64)
    return frame
