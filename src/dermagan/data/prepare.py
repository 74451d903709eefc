"""The prepare stage: raw HAM10000 folder -> resized split arrays, split table, EDA figures."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from dermagan.atomic import atomic_dir
from dermagan.constants import SPLITS
from dermagan.data.eda import write_eda_figures
from dermagan.data.images import check_images_dir, find_image, open_rgb, resize_center_crop
from dermagan.data.metadata import find_metadata, read_metadata, read_sources
from dermagan.data.prepared import SPLIT_TABLE, arrays_for, write_classes, write_split
from dermagan.data.splits import grouped_split, source_split, subsample_lesions
from dermagan.errors import DermaganError

TABLE_COLUMNS = ["image_id", "lesion_id", "dx", "split", "dx_type", "age", "sex", "localization", "dx_raw"]


@dataclass(frozen=True)
class PrepareConfig:
    image_size: int
    val_fraction: float
    test_fraction: float
    seed: int
    classes: tuple[str, ...]
    min_image_side: int = 32  # refuse raw images whose shorter side is below this (px)
    label_map: dict | None = None  # raw dx -> task label (None drops the rows)
    split_by: str = "lesion"        # lesion | source
    test_sources: tuple[str, ...] = ()
    sources: Path | None = None     # CSV image_id,dataset (split_by source needs it)
    max_lesions_per_class: int | None = None  # a seeded subset of lesions per class (None = all)


def load_images(raw_dir: Path, image_ids: list[str], size: int, min_side: int = 1) -> np.ndarray:
    """Decode and resize every listed image; the first bad file stops with its name.

    Images whose shorter side is below ``min_side`` are all listed (name and size) in one error.
    """
    images_dir = check_images_dir(Path(raw_dir) / "images")
    stack = np.empty((len(image_ids), size, size, 3), dtype=np.uint8)
    too_small = []
    for i, image_id in enumerate(tqdm(image_ids, desc="decode+resize", unit="img", mininterval=2)):
        path = find_image(images_dir, image_id)
        image = open_rgb(path)
        if min(image.size) < min_side:
            too_small.append(f"{path.name} ({image.size[0]}x{image.size[1]} px)")
            continue
        stack[i] = resize_center_crop(image, size)
    if too_small:
        more = f" and {len(too_small) - 10} more" if len(too_small) > 10 else ""
        raise DermaganError(
            f"{images_dir}: {len(too_small)} image(s) with a shorter side below prepare.min_image_side "
            f"= {min_side} px: {', '.join(too_small[:10])}{more}"
        )
    return stack


def split_summary(table: pd.DataFrame, classes: tuple[str, ...]) -> dict:
    """Counts per split and class (every task class, zeros included), for the log and a JSON file."""
    summary = {}
    for split in SPLITS:
        rows = table[table["split"] == split]
        counts = rows["dx"].value_counts()
        summary[split] = {"images": len(rows), "lesions": int(rows["lesion_id"].nunique()),
                          "per_class": {dx: int(counts.get(dx, 0)) for dx in classes}}
        if "source" in rows.columns:
            summary[split]["per_source"] = {str(k): int(v) for k, v in rows["source"].value_counts().sort_index().items()}
    return summary


def assign_splits(metadata: pd.DataFrame, config: PrepareConfig) -> pd.Series:
    if config.split_by == "source":
        if config.sources is None:
            raise DermaganError("params: prepare.split.by = source needs data.sources (the CSV of each image's "
                                "acquisition source)")
        return source_split(metadata, config.test_sources, config.val_fraction, config.seed)
    return grouped_split(metadata, config.val_fraction, config.test_fraction, config.seed)


def prepare_dataset(raw_dir: Path, out_dir: Path, eda_dir: Path, config: PrepareConfig) -> dict:
    """Build the prepared dataset. Outputs appear only if every step succeeds."""
    metadata = read_metadata(find_metadata(Path(raw_dir)), config.classes, config.label_map)
    columns = list(TABLE_COLUMNS)
    if config.sources is not None:
        metadata["source"] = read_sources(config.sources, metadata["image_id"]).to_numpy()
        columns.append("source")
    if config.max_lesions_per_class is not None:
        metadata = subsample_lesions(metadata, config.max_lesions_per_class, config.seed)
    metadata = metadata.reset_index(drop=True)
    metadata["split"] = assign_splits(metadata, config)
    images = load_images(Path(raw_dir), metadata["image_id"].tolist(), config.image_size, config.min_image_side)
    table = metadata[columns]
    summary = split_summary(table, config.classes)
    with atomic_dir(Path(out_dir)) as tmp_out, atomic_dir(Path(eda_dir)) as tmp_eda:
        table.to_csv(tmp_out / SPLIT_TABLE, index=False)
        write_classes(tmp_out, config.classes)
        for split in SPLITS:
            write_split(tmp_out, split, arrays_for(table, images, split, config.classes))
        (tmp_out / "summary.json").write_text(json.dumps(summary, indent=2))
        write_eda_figures(table, tmp_eda, config.classes)
    return summary
