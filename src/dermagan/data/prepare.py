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
from dermagan.data.metadata import find_metadata, read_metadata
from dermagan.data.prepared import SPLIT_TABLE, arrays_for, write_split
from dermagan.data.splits import grouped_split
from dermagan.errors import DermaganError

TABLE_COLUMNS = ["image_id", "lesion_id", "dx", "split", "dx_type", "age", "sex", "localization"]


@dataclass(frozen=True)
class PrepareConfig:
    image_size: int
    val_fraction: float
    test_fraction: float
    seed: int
    min_image_side: int = 32  # refuse raw images whose shorter side is below this (px)


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


def split_summary(table: pd.DataFrame) -> dict:
    """Counts per split and class, for the log and a JSON file beside the arrays."""
    counts = table.groupby(["split", "dx"]).size()
    return {
        split: {"images": int((table["split"] == split).sum()),
                "lesions": int(table.loc[table["split"] == split, "lesion_id"].nunique()),
                "per_class": {dx: int(n) for dx, n in counts.get(split, pd.Series()).items()}}
        for split in SPLITS
    }


def prepare_dataset(raw_dir: Path, out_dir: Path, eda_dir: Path, config: PrepareConfig) -> dict:
    """Build the prepared dataset. Outputs appear only if every step succeeds."""
    metadata = read_metadata(find_metadata(Path(raw_dir)))
    metadata["split"] = grouped_split(metadata, config.val_fraction, config.test_fraction, config.seed)
    images = load_images(Path(raw_dir), metadata["image_id"].tolist(), config.image_size, config.min_image_side)
    table = metadata[TABLE_COLUMNS]
    summary = split_summary(table)
    with atomic_dir(Path(out_dir)) as tmp_out, atomic_dir(Path(eda_dir)) as tmp_eda:
        table.to_csv(tmp_out / SPLIT_TABLE, index=False)
        for split in SPLITS:
            write_split(tmp_out, split, arrays_for(table, images, split))
        (tmp_out / "summary.json").write_text(json.dumps(summary, indent=2))
        write_eda_figures(table, tmp_eda)
    return summary
