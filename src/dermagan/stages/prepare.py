"""The prepare stage glue: params ``prepare`` -> PrepareConfig -> prepare_dataset."""

from __future__ import annotations

from pathlib import Path

from dermagan.config import Config
from dermagan.data.prepare import PrepareConfig, prepare_dataset


def run_prepare(cfg: Config, raw_dir: Path, out_dir: Path, eda_dir: Path) -> dict:
    """Resize, split and write the prepared dataset and EDA figures."""
    p, data = cfg.prepare, cfg.data
    config = PrepareConfig(image_size=p.image_size, val_fraction=p.val_fraction, test_fraction=p.test_fraction,
                           seed=p.seed, classes=cfg.classes, min_image_side=p.min_image_side,
                           label_map=dict(data.label_map), split_by=p.split.by, test_sources=p.split.test_sources,
                           sources=Path(data.sources) if data.sources else None,
                           max_lesions_per_class=p.max_lesions_per_class)
    return prepare_dataset(Path(raw_dir), Path(out_dir), Path(eda_dir), config)
