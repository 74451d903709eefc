"""Read and check the HAM10000 metadata table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from dermagan.constants import CLASSES, EDA_COLUMNS, REQUIRED_COLUMNS
from dermagan.data.images import is_plain_name
from dermagan.errors import DermaganError

METADATA_NAMES = ("metadata.csv", "HAM10000_metadata.csv", "HAM10000_metadata")


def find_metadata(raw_dir: Path) -> Path:
    """Return the metadata file inside a HAM10000-layout folder."""
    for name in METADATA_NAMES:
        if (Path(raw_dir) / name).is_file():
            return Path(raw_dir) / name
    raise DermaganError(
        f"{raw_dir}: no metadata file found (looked for {', '.join(METADATA_NAMES)})"
    )


def read_metadata(path: Path, classes: tuple[str, ...] = CLASSES) -> pd.DataFrame:
    """Read the metadata CSV and check columns, labels and ids.

    Raises DermaganError naming the file and the offending column or rows.
    """
    try:
        frame = pd.read_csv(path, dtype={"lesion_id": str, "image_id": str, "dx": str})
    except pd.errors.EmptyDataError as exc:
        raise DermaganError(f"{path}: metadata file is empty (no header, no rows)") from exc
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DermaganError(f"{path}: cannot read metadata: {exc}") from exc
    if frame.empty:
        raise DermaganError(f"{path}: metadata has a header but no rows (no images listed)")
    missing = [c for c in (*REQUIRED_COLUMNS, *EDA_COLUMNS) if c not in frame.columns]
    if missing:
        raise DermaganError(
            f"{path}: missing metadata column(s) {missing}; found {list(frame.columns)}"
        )
    for column in REQUIRED_COLUMNS:
        empty = frame[column].isna()
        if empty.any():
            rows = (frame.index[empty][:5] + 2).tolist()
            raise DermaganError(f"{path}: column '{column}' is empty on line(s) {rows}")
    unknown = sorted(set(frame["dx"]) - set(classes))
    if unknown:
        example = frame.loc[frame["dx"].isin(unknown), "image_id"].head(3).tolist()
        raise DermaganError(
            f"{path}: column 'dx' has unknown label(s) {unknown} (e.g. images {example}); "
            f"expected one of {list(classes)}"
        )
    bad_ids = ~frame["image_id"].map(is_plain_name)
    if bad_ids.any():
        lines = (frame.index[bad_ids][:5] + 2).tolist()
        examples = "; ".join(f"line {line}: {value!r}" for line, value in zip(lines, frame.loc[bad_ids, "image_id"]))
        raise DermaganError(
            f"{path}: column 'image_id' must be a plain file name (no '/' or '\\', not '.' or '..', no NUL) "
            f"on {int(bad_ids.sum())} row(s) ({examples}); images are read from the images/ folder only"
        )
    duplicated = frame["image_id"].duplicated()
    if duplicated.any():
        raise DermaganError(
            f"{path}: column 'image_id' repeats {frame.loc[duplicated, 'image_id'].head(3).tolist()}"
        )
    frame["age"] = _numeric_age(path, frame)
    return frame.reset_index(drop=True)


def _numeric_age(path: Path, frame: pd.DataFrame) -> pd.Series:
    """The 'age' column as float; empty cells (missing ages) become NaN, text is an error."""
    age = pd.to_numeric(frame["age"], errors="coerce")
    text = frame["age"].astype("string").str.strip()
    bad = age.isna() & frame["age"].notna() & (text != "")
    if bad.any():
        lines = (frame.index[bad][:5] + 2).tolist()
        examples = [f"line {line}: image_id {image_id!r} has age {value!r}" for line, image_id, value
                    in zip(lines, frame.loc[bad, "image_id"].head(5), frame.loc[bad, "age"].head(5))]
        raise DermaganError(f"{path}: column 'age' is not a number on {int(bad.sum())} row(s) "
                            f"({'; '.join(examples)}); leave it empty when unknown")
    return age.astype(float)
