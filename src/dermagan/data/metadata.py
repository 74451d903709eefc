"""Read and check the HAM10000 metadata table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from dermagan.constants import EDA_COLUMNS, REQUIRED_COLUMNS
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


def read_metadata(path: Path, classes: tuple[str, ...], label_map: dict[str, str | None] | None = None,
                  extra_columns: tuple[str, ...] = EDA_COLUMNS,
                  required: tuple[str, ...] = REQUIRED_COLUMNS) -> pd.DataFrame:
    """Read the metadata CSV and check columns, labels and ids; map raw ``dx`` onto the task's labels.

    ``label_map`` maps a raw ``dx`` to a task label, or to None to drop its rows; a raw value it does
    not cover must itself be one of ``classes``. The raw value stays in column ``dx_raw``. ``required``:
    the columns that must be present and never empty (an external test set needs only image_id, dx). Raises
    DermaganError naming the file and the offending column or rows.
    """
    try:
        frame = pd.read_csv(path, dtype={"lesion_id": str, "image_id": str, "dx": str})
    except pd.errors.EmptyDataError as exc:
        raise DermaganError(f"{path}: metadata file is empty (no header, no rows)") from exc
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DermaganError(f"{path}: cannot read metadata: {exc}") from exc
    if frame.empty:
        raise DermaganError(f"{path}: metadata has a header but no rows (no images listed)")
    missing = [c for c in (*required, *extra_columns) if c not in frame.columns]
    if missing:
        raise DermaganError(
            f"{path}: missing metadata column(s) {missing}; found {list(frame.columns)}"
        )
    for column in required:
        empty = frame[column].isna()
        if empty.any():
            rows = (frame.index[empty][:5] + 2).tolist()
            raise DermaganError(f"{path}: column '{column}' is empty on line(s) {rows}")
    frame = apply_label_map(path, frame, classes, label_map or {})
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
    if "age" in frame.columns:
        frame["age"] = _numeric_age(path, frame)
    return frame.reset_index(drop=True)


def apply_label_map(path: Path, frame: pd.DataFrame, classes: tuple[str, ...],
                    label_map: dict[str, str | None]) -> pd.DataFrame:
    """``dx`` -> task label (``dx_raw`` keeps the raw value); rows mapped to None are dropped."""
    raw = frame["dx"]
    known = raw.isin(list(label_map)) | raw.isin(list(classes))
    if not known.all():
        unknown = sorted(set(raw[~known]))
        lines = (frame.index[~known][:3] + 2).tolist()
        examples = "; ".join(f"line {line}: image_id {i!r} has dx {v!r}" for line, i, v
                             in zip(lines, frame.loc[~known, "image_id"], raw[~known]))
        mapped = f" or a key of data.label_map {sorted(label_map)}" if label_map else ""
        raise DermaganError(f"{path}: column 'dx' has unknown label(s) {unknown} ({examples}); expected one of "
                            f"data.classes {list(classes)}{mapped}")
    mapped_dx = raw.map(lambda v: label_map[v] if v in label_map else v)
    frame = frame.assign(dx_raw=raw, dx=mapped_dx)
    return frame[frame["dx"].notna()].copy()


def read_sources(path: Path, image_ids: pd.Series) -> pd.Series:
    """Each image's acquisition source from a CSV with columns ``image_id`` and ``dataset`` (aligned with
    ``image_ids``); every listed image needs one."""
    path = Path(path)
    if not path.is_file():
        raise DermaganError(f"{path}: sources file not found (params data.sources); it gives each image's "
                            "acquisition source, e.g. ham10000_sources.csv beside the HAM10000 folder")
    try:
        table = pd.read_csv(path, dtype=str)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DermaganError(f"{path}: cannot read the sources file: {exc}") from exc
    missing = [c for c in ("image_id", "dataset") if c not in table.columns]
    if missing:
        raise DermaganError(f"{path}: sources file lacks column(s) {missing}; found {list(table.columns)}")
    if table["image_id"].duplicated().any():
        raise DermaganError(f"{path}: image_id repeats {table.loc[table['image_id'].duplicated(), 'image_id'].head(3).tolist()}")
    source = image_ids.map(table.set_index("image_id")["dataset"])
    if source.isna().any():
        absent = image_ids[source.isna()]
        raise DermaganError(f"{path}: no source for {len(absent)} image(s) of the metadata, e.g. "
                            f"{absent.head(3).tolist()}")
    return source.rename("source")


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
