"""The prepare stage glue: params -> PrepareConfig -> prepare_dataset."""

from __future__ import annotations

from pathlib import Path

from dermagan.data.prepare import PrepareConfig, prepare_dataset
from dermagan.params import section


def run_prepare(params: dict, raw_dir: Path, out_dir: Path, eda_dir: Path) -> dict:
    """Resize, split and write the prepared dataset and EDA figures."""
    cfg = section(params, "prepare")
    config = PrepareConfig(image_size=int(cfg["image_size"]), val_fraction=float(cfg["val_fraction"]),
                           test_fraction=float(cfg["test_fraction"]), seed=int(cfg["seed"]),
                           min_image_side=int(section(params, "prepare", "min_image_side")))
    return prepare_dataset(Path(raw_dir), Path(out_dir), Path(eda_dir), config)
