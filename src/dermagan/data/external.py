"""External test sets: other HAM10000-layout folders scored beside (never instead of) the internal test split.

Each set named in params ``evaluate.external`` ({NAME: FOLDER}; FOLDER holds ``metadata.csv`` with at least
``image_id,dx`` plus ``images/``) is read with the task's label map, decoded and resized exactly as
``prepare`` does, and written as ``OUT/NAME.npz`` in the prepared-split format (images, labels, image_ids)
beside ``OUT/summary.json`` (per set: images, per-class counts, folder, warnings) and ``OUT/classes.json``.

An external set never chooses anything (no model, threshold or weight is fitted on it), so it must share
no image with the train or val split: every external file is hashed (sha256 of its bytes) against every raw
file of the prepared split table. A copy of a train or val image is an error; a copy of a test image, an
image_id shared with the internal data but with other bytes, a copy inside the set and a task class the set
lacks are warnings.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from dermagan.atomic import atomic_dir
from dermagan.data.images import check_images_dir, find_image
from dermagan.data.metadata import find_metadata, read_metadata
from dermagan.data.prepare import load_images
from dermagan.data.prepared import SplitArrays, check_classes, read_split_table, write_classes, write_split
from dermagan.errors import DermaganError
from dermagan.outputs import DIR, preflight

SUMMARY_FILE = "summary.json"
EXTERNAL_REQUIRED = ("image_id", "dx")  # lesion_id and the EDA columns are optional in an external set
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]+")
MAX_LISTED = 10  # ids named in one message


@dataclass(frozen=True)
class ExternalConfig:
    """What an external set is read with: the task's labels and prepare's image geometry."""

    image_size: int
    classes: tuple[str, ...]
    min_image_side: int = 32
    label_map: dict | None = None


@dataclass
class InternalIndex:
    """The prepared (internal) images by content: sha256 -> (split, image_id), and image_id -> (split, sha256)."""

    by_hash: dict[str, tuple[str, str]] = field(default_factory=dict)
    by_id: dict[str, tuple[str, str]] = field(default_factory=dict)


def _listed(items: list[str]) -> str:
    more = f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return ", ".join(items[:MAX_LISTED]) + more


def check_set_name(name: str) -> str:
    """A set's name becomes a file name (``NAME.npz``) and a metric key: letters, digits, ``_`` and ``-`` only."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise DermaganError(f"params evaluate.external: set name {name!r} must be a plain identifier "
                            "(letters, digits, '_' or '-'; it names OUT/NAME.npz and the metrics)")
    return name


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def internal_index(prepared: Path, raw_dir: Path) -> InternalIndex:
    """Hash the raw file of every row of the prepared split table (train, val and test)."""
    table = read_split_table(Path(prepared))
    images_dir = check_images_dir(Path(raw_dir) / "images")
    index = InternalIndex()
    for image_id, split in zip(table["image_id"], table["split"]):
        digest = file_sha256(find_image(images_dir, image_id))
        index.by_hash.setdefault(digest, (split, image_id))
        index.by_id[image_id] = (split, digest)
    return index


def read_external_metadata(name: str, folder: Path, config: ExternalConfig) -> pd.DataFrame:
    """The set's metadata with ``dx`` mapped onto the task's labels (unknown labels: error naming value and row)."""
    try:
        frame = read_metadata(find_metadata(folder), config.classes, config.label_map,
                              extra_columns=(), required=EXTERNAL_REQUIRED)
    except DermaganError as exc:
        raise DermaganError(f"external set {name!r}: {exc}") from exc
    if frame.empty:
        raise DermaganError(f"external set {name!r} ({folder}): no image left after data.label_map (every row "
                            "is mapped to null)")
    return frame


def external_files(name: str, folder: Path, image_ids: list[str]) -> list[Path]:
    """The file of every listed image; the missing ones are named (up to 10) in one error."""
    images_dir = check_images_dir(Path(folder) / "images")
    files, missing = [], []
    for image_id in image_ids:
        try:
            files.append(find_image(images_dir, image_id))
        except DermaganError:
            missing.append(image_id)
    if missing:
        raise DermaganError(f"external set {name!r}: {len(missing)} image(s) listed in its metadata are missing "
                            f"from {images_dir}: {_listed(missing)}")
    return files


def overlap_warnings(name: str, image_ids: list[str], digests: list[str], index: InternalIndex) -> list[str]:
    """Refuse copies of train/val images; return the warnings (test copies, shared ids, copies within the set)."""
    refused, test_copies, same_id = [], [], []
    for image_id, digest in zip(image_ids, digests):
        hit = index.by_hash.get(digest)
        if hit is not None:
            split, internal_id = hit
            pair = f"{image_id} = {split} image {internal_id}"
            (test_copies if split == "test" else refused).append(pair)
        known = index.by_id.get(image_id)
        if known is not None and known[1] != digest:
            same_id.append(f"{image_id} ({known[0]})")
    if refused:
        raise DermaganError(
            f"external set {name!r}: {len(refused)} image(s) are byte-identical copies of training data "
            f"(train images fit the models, val images choose them): {_listed(refused)}; an external test set "
            "must be unseen: remove them from its metadata.csv")
    warnings = []
    if test_copies:
        warnings.append(f"{len(test_copies)} image(s) are byte-identical copies of internal test images, so this "
                        f"set overlaps the internal test split: {_listed(test_copies)}")
    if same_id:
        warnings.append(f"{len(same_id)} image_id(s) also name an internal image, with different file bytes "
                        f"(a re-encoded copy or a reused id?): {_listed(same_id)}")
    seen: dict[str, str] = {}
    repeats = []
    for image_id, digest in zip(image_ids, digests):
        if digest in seen:
            repeats.append(f"{image_id} = {seen[digest]}")
        else:
            seen[digest] = image_id
    if repeats:
        warnings.append(f"{len(repeats)} image(s) are byte-identical copies of another image of this set: "
                        f"{_listed(repeats)}")
    return warnings


def class_warnings(per_class: dict[str, int]) -> list[str]:
    absent = [dx for dx, count in per_class.items() if count == 0]
    if not absent:
        return []
    return [f"class(es) {absent} have no image in this set: their recall is undefined here"]


def build_external_set(name: str, folder: Path, config: ExternalConfig,
                       index: InternalIndex) -> tuple[SplitArrays, dict]:
    """Read, check, decode and resize one set: its arrays and its summary entry."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DermaganError(f"params evaluate.external.{name} = {str(folder)!r}: folder not found (import it "
                            f"with `dvc import-url SOURCE {folder}`; it holds metadata.csv and images/)")
    frame = read_external_metadata(name, folder, config)
    image_ids = frame["image_id"].tolist()
    digests = [file_sha256(path) for path in external_files(name, folder, image_ids)]
    warnings = overlap_warnings(name, image_ids, digests, index)
    try:
        images = load_images(folder, image_ids, config.image_size, config.min_image_side)
    except DermaganError as exc:
        raise DermaganError(f"external set {name!r}: {exc}") from exc
    codes = {dx: i for i, dx in enumerate(config.classes)}
    labels = frame["dx"].map(codes).to_numpy().astype(np.int64)
    counts = frame["dx"].value_counts()
    per_class = {dx: int(counts.get(dx, 0)) for dx in config.classes}
    warnings += class_warnings(per_class)
    info = {"folder": str(folder), "images": len(frame), "per_class": per_class, "warnings": warnings}
    return SplitArrays(images, labels, np.asarray(image_ids, dtype=str)), info


def prepare_external(sets: dict[str, str | Path], prepared: Path, raw_dir: Path, out_dir: Path,
                     config: ExternalConfig) -> dict:
    """Write ``OUT/NAME.npz`` for every set plus ``OUT/summary.json`` ({NAME: info}; ``{}`` without sets) and
    ``OUT/classes.json``. Nothing is written unless every set passes."""
    out_dir = Path(out_dir)
    for name in sets:
        check_set_name(name)
    preflight([(f"evaluate.external.{name}", Path(folder)) for name, folder in sets.items()],
              [("--out", out_dir, DIR)], "prepare-external")
    built = {}
    if sets:
        check_classes(Path(prepared), config.classes)  # the labels must index the same class list
        index = internal_index(Path(prepared), Path(raw_dir))
        for name, folder in sets.items():
            built[name] = build_external_set(name, Path(folder), config, index)
    summary = {name: info for name, (_, info) in built.items()}
    with atomic_dir(out_dir, "--out") as tmp:
        write_classes(tmp, config.classes)
        for name, (arrays, _) in built.items():
            write_split(tmp, name, arrays)
        (tmp / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# --- readers for evaluate and compare ------------------------------------------------------------------------------

def external_names(out_dir: Path) -> list[str]:
    """The sets written by ``prepare-external`` (sorted); ``[]`` when there are none."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise DermaganError(f"{out_dir}: external test sets folder not found; run `dermagan prepare-external` "
                            "(or `dvc repro prepare_external`)")
    return sorted(path.stem for path in out_dir.glob("*.npz") if NAME_PATTERN.fullmatch(path.stem))


def load_external(out_dir: Path, name: str) -> SplitArrays:
    """One external set's arrays (labels index the task's classes, as in a prepared split)."""
    path = Path(out_dir) / f"{check_set_name(name)}.npz"
    if not path.is_file():
        raise DermaganError(f"{path}: external test set {name!r} not found; is it in params evaluate.external? "
                            "then run `dermagan prepare-external`")
    with np.load(path, allow_pickle=False) as data:
        return SplitArrays(data["images"], data["labels"].astype(np.int64), data["image_ids"])
