"""The prepare stage glue: params ``prepare`` -> PrepareConfig -> prepare_dataset."""

from __future__ import annotations

from pathlib import Path

from dermagan.config import Config
from dermagan.data.prepare import PrepareConfig, prepare_dataset


def run_prepare(cfg: Config, raw_dir: Path, out_dir: Path, eda_dir: Path) -> dict:
    """Resize, split and write the prepared dataset and EDA figures."""
    p = cfg.prepare
    config = PrepareConfig(image_size=p.image_size, val_fraction=p.val_fraction, test_fraction=p.test_fraction,
                           seed=p.seed, min_image_side=p.min_image_side)
    return prepare_dataset(Path(raw_dir), Path(out_dir), Path(eda_dir), config)
