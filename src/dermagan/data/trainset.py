"""A classifier arm's training set: the real train split plus its *extra* images.

An arm's ``extra`` setting names where extra images of the augmented classes come from:
``None`` (none), ``"oversample"`` (random copies of real train images) or
``"<method>/<set>"`` (GAN images of ``artifacts/synthetic/<method>/<set>``, e.g. ``dcgan/dedup``).
Extras are read in manifest order and the first ``count`` of each class are used, so an arm gets
exactly the configured amount whether or not dedup dropped some candidates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from dermagan.constants import CLASSES
from dermagan.data.prepared import SplitArrays
from dermagan.errors import DermaganError

OVERSAMPLE = "oversample"
SYNTHETIC_SETS = ("generated", "dedup")
MANIFEST = "manifest.csv"
FILES = {"images": "extra_images.npy", "labels": "extra_labels.npy", "table": "extra.csv", "spec": "spec.json"}


@dataclass(frozen=True)
class ExtraSource:
    """Parsed ``extra`` setting: kind is "none", "oversample" or "synthetic"."""

    kind: str
    method: str | None = None
    set_name: str | None = None

    @property
    def label(self) -> str:
        return {"none": "none", "oversample": OVERSAMPLE}.get(self.kind, f"{self.method}/{self.set_name}")


def parse_extra(value) -> ExtraSource:
    """``None`` | ``"oversample"`` | ``"<method>/<generated|dedup>"`` -> ExtraSource (clear error otherwise)."""
    if value is None or value in ("none", "null", ""):
        return ExtraSource("none")
    if value == OVERSAMPLE:
        return ExtraSource(OVERSAMPLE)
    method, _, set_name = str(value).partition("/")
    if not method or set_name not in SYNTHETIC_SETS:
        raise DermaganError(f"params: arm extra must be null, '{OVERSAMPLE}' or '<method>/<set>' with set in "
                            f"{SYNTHETIC_SETS}, got '{value}'")
    return ExtraSource("synthetic", method, set_name)


def synthetic_folder(root: Path, source: ExtraSource) -> Path:
    return Path(root) / str(source.method) / str(source.set_name)


@dataclass(frozen=True)
class FileCheck:
    """One extra image as read from disk, with what validation needs to know about it."""

    file: str
    dx: str
    decodes: bool
    mode: str
    width: int
    height: int
    image: np.ndarray | None


def read_png(folder: Path, file: str, dx: str) -> FileCheck:
    """Open one synthetic image; never raises for a bad file (validation reports it)."""
    path = Path(folder) / file
    try:
        with Image.open(path) as img:
            mode, (width, height) = img.mode, img.size
            array = np.asarray(img.convert("RGB")) if mode == "RGB" else None
        return FileCheck(file, dx, True, mode, width, height, array)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
        return FileCheck(file, dx, False, "unreadable" if path.exists() else "missing", 0, 0, None)


def select_synthetic(folder: Path, counts: dict[str, int]) -> list[FileCheck]:
    """The first ``counts[dx]`` manifest rows of each class, read from ``folder`` (manifest order)."""
    manifest_path = Path(folder) / MANIFEST
    if not manifest_path.is_file():
        raise DermaganError(f"{manifest_path}: synthetic manifest not found; run the generate/dedup stage first")
    manifest = pd.read_csv(manifest_path)
    missing = {"file", "class"} - set(manifest.columns)
    if missing:
        raise DermaganError(f"{manifest_path}: missing column(s) {sorted(missing)}")
    chosen = pd.concat([manifest[manifest["class"] == dx].head(n) for dx, n in counts.items()])
    return [read_png(folder, f, dx) for f, dx in zip(chosen["file"], chosen["class"])]


def oversample(train: SplitArrays, counts: dict[str, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of ``counts[dx]`` random train images of each class, drawn with replacement."""
    rng = np.random.default_rng(seed)
    picked, labels = [], []
    for dx, n in counts.items():
        pool = np.flatnonzero(train.labels == CLASSES.index(dx))
        if len(pool) == 0 and n:
            raise DermaganError(f"cannot oversample class '{dx}': it has no train images")
        picked.append(rng.choice(pool, size=n, replace=True) if n else np.zeros(0, np.int64))
        labels.append(np.full(n, CLASSES.index(dx), np.int64))
    return np.concatenate(picked).astype(np.int64), np.concatenate(labels)


@dataclass(frozen=True)
class ExtraImages:
    """Extra training images (N, H, W, 3) uint8 with labels and where each came from."""

    images: np.ndarray
    labels: np.ndarray
    sources: np.ndarray  # synthetic file path, or "copy:<train image_id>"

    def __len__(self) -> int:
        return len(self.labels)


def empty_extras(image_size: int) -> ExtraImages:
    return ExtraImages(np.zeros((0, image_size, image_size, 3), np.uint8), np.zeros(0, np.int64),
                       np.zeros(0, dtype=str))


def write_extras(folder: Path, extras: ExtraImages, spec: dict) -> None:
    """Write the extras of one arm (``np.save`` files are byte-deterministic, unlike npz)."""
    folder = Path(folder)
    np.save(folder / FILES["images"], extras.images)
    np.save(folder / FILES["labels"], extras.labels)
    pd.DataFrame({"source": extras.sources, "class": [CLASSES[i] for i in extras.labels]}).to_csv(
        folder / FILES["table"], index=False)
    (folder / FILES["spec"]).write_text(json.dumps(spec, indent=2, sort_keys=True))


def read_extras(folder: Path) -> tuple[ExtraImages, dict]:
    """Read what :func:`write_extras` wrote; clear error if the folder is not a training set."""
    folder = Path(folder)
    spec_path = folder / FILES["spec"]
    if not spec_path.is_file():
        raise DermaganError(f"{spec_path}: training set not found; run `dvc repro validate_augmented@<arm>` "
                            "(it checks and writes every arm's extra images)")
    table = pd.read_csv(folder / FILES["table"], dtype=str, keep_default_na=False)
    extras = ExtraImages(np.load(folder / FILES["images"]), np.load(folder / FILES["labels"]),
                         table["source"].to_numpy(str))
    return extras, json.loads(spec_path.read_text())


def with_extras(train: SplitArrays, extras: ExtraImages) -> SplitArrays:
    """Real train images followed by the extras, as one SplitArrays."""
    if len(extras) == 0:
        return train
    if extras.images.shape[1:] != train.images.shape[1:]:
        raise DermaganError(f"extra images have shape {extras.images.shape[1:]}, train images "
                            f"{train.images.shape[1:]}")
    return SplitArrays(np.concatenate([train.images, extras.images]),
                       np.concatenate([train.labels, extras.labels]),
                       np.concatenate([np.asarray(train.image_ids).astype(str), extras.sources]))
