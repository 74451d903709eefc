"""A classifier arm's training set: the real train split plus its *extra* images.

An arm's ``extra`` setting names where extra images of the augmented classes come from:
``None`` (none), ``"oversample"`` (random copies of real train images) or
``"<method>/<set>"`` (GAN images of ``artifacts/synthetic/<method>/<set>``, e.g. ``dcgan/dedup``;
the method must be one of :data:`dermagan.gan.methods.METHODS`).
Extras are read in manifest order and the first ``count`` of each class are used, so an arm gets
exactly the configured amount whether or not dedup dropped some candidates.

The validate_augmented stage assembles and checks an arm's extras (:func:`gather_extras`) and writes
them; the train stage reads them back (:func:`training_set`); ``dermagan cv`` draws oversampled copies
per fold (:func:`oversample_extras`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from dermagan.data.prepared import SplitArrays, read_split
from dermagan.errors import DermaganError
from dermagan.data.extra import OVERSAMPLE, SYNTHETIC_SETS, ExtraSource, parse_extra  # noqa: F401 (re-exported)

MANIFEST = "manifest.csv"
FILES = {"images": "extra_images.npy", "labels": "extra_labels.npy", "table": "extra.csv", "spec": "spec.json"}


def extra_targets(gan: dict, train: SplitArrays, classes: tuple[str, ...], method: str | None = None) -> dict[str, int]:
    """Extra images per augmented class, from the ``gan`` params block's ``classes`` and ``amount`` (and the
    tuned ``amount_tuned.<method>`` for a GAN method's images); ``train`` gives the real class counts, its
    integer labels indexing the task labels ``classes`` (params ``data.classes``)."""
    from dermagan.gan.generate import method_counts

    real_counts = {c: int((train.labels == i).sum()) for i, c in enumerate(classes)}
    return method_counts(gan, real_counts, method)


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


def label_of(dx: str, classes: tuple[str, ...]) -> int:
    """The integer label of task label ``dx`` (its index in ``classes``); a clear error for another name."""
    if dx not in classes:
        raise DermaganError(f"class '{dx}' is not a task label (data.classes {list(classes)})")
    return list(classes).index(dx)


def oversample(train: SplitArrays, counts: dict[str, int], seed: int,
               classes: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Indices of ``counts[dx]`` random train images of each class, drawn with replacement (``classes``: the
    task labels ``train.labels`` index)."""
    rng = np.random.default_rng(seed)
    picked, labels = [], []
    for dx, n in counts.items():
        pool = np.flatnonzero(train.labels == label_of(dx, classes))
        if len(pool) == 0 and n:
            raise DermaganError(f"cannot oversample class '{dx}': it has no train images")
        picked.append(rng.choice(pool, size=n, replace=True) if n else np.zeros(0, np.int64))
        labels.append(np.full(n, label_of(dx, classes), np.int64))
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


def oversample_extras(train: SplitArrays, counts: dict[str, int], seed: int,
                      classes: tuple[str, ...]) -> ExtraImages:
    """:func:`oversample`'s copies as extras; each one's source is ``copy:<train image_id>``."""
    index, labels = oversample(train, counts, seed, classes)
    ids = np.asarray(train.image_ids).astype(str)[index]
    return ExtraImages(train.images[index], labels, np.array([f"copy:{i}" for i in ids]))


def write_extras(folder: Path, extras: ExtraImages, spec: dict, classes: tuple[str, ...]) -> None:
    """Write the extras of one arm (``np.save`` files are byte-deterministic, unlike npz); ``classes``: the task
    labels the extras' integer labels index (their names go into the table)."""
    folder = Path(folder)
    np.save(folder / FILES["images"], extras.images)
    np.save(folder / FILES["labels"], extras.labels)
    pd.DataFrame({"source": extras.sources, "class": [classes[i] for i in extras.labels]}).to_csv(
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


def gather_extras(source: ExtraSource, train: SplitArrays, targets: dict[str, int], synthetic_root: Path,
                  seed: int, classes: tuple[str, ...]) -> tuple[list[dict], ExtraImages | None]:
    """Rows for the validation frame (one per extra image), and the extras (None if some file could not be used).

    ``classes``: the task labels (params ``data.classes``) that integer labels index; a synthetic image of
    another class makes the extras unusable (validation reports its label)."""
    size = train.images.shape[1]
    if source.kind == "none":
        return [], empty_extras(size)
    if source.kind == OVERSAMPLE:
        extras = oversample_extras(train, targets, seed, classes)
        rows = [{"source": s, "source_id": s.removeprefix("copy:"), "dx": classes[y], "decodes": True, "mode": "RGB",
                 "width": size, "height": size, "image": image}
                for s, y, image in zip(extras.sources, extras.labels, extras.images)]
        return rows, extras
    checks = select_synthetic(synthetic_folder(synthetic_root, source), targets)
    rows = [{"source": c.file, "source_id": Path(c.file).stem, "dx": c.dx, "decodes": c.decodes, "mode": c.mode,
             "width": c.width, "height": c.height, "image": c.image} for c in checks]
    usable = all(c.image is not None and c.image.shape == (size, size, 3) and c.dx in classes for c in checks)
    if not usable:
        return rows, None
    images = np.stack([c.image for c in checks]) if checks else empty_extras(size).images
    labels = np.array([list(classes).index(c.dx) for c in checks], dtype=np.int64)
    return rows, ExtraImages(images, labels, np.array([c.file for c in checks], dtype=str))


def training_set(extra: str | None, prepared: Path, trainset_dir: Path | None) -> tuple[SplitArrays, int]:
    """Real train split plus the arm's validated extra images (written by the validate_augmented stage),
    and how many extras there are. ``extra`` is the arm's ``extra`` setting."""
    train, source = read_split(prepared, "train"), parse_extra(extra)
    if trainset_dir is None or not (Path(trainset_dir) / FILES["spec"]).exists():
        if source.kind != "none":
            raise DermaganError(f"arm needs extra images ({source.label}) but no training set was found at "
                                f"{trainset_dir}; run `dvc repro validate_augmented@<arm>` first")
        return train, 0
    extras, spec = read_extras(Path(trainset_dir))
    if spec["extra"] != source.label:
        raise DermaganError(f"{trainset_dir}: holds extras from '{spec['extra']}' but the arm asks for "
                            f"'{source.label}'; re-run validate_augmented")
    return with_extras(train, extras), len(extras)
