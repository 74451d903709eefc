"""The prepare_external stage glue: params ``evaluate.external`` + ``data`` + ``prepare`` -> prepare_external."""

from __future__ import annotations

from pathlib import Path

from dermagan.config import Config
from dermagan.data.external import ExternalConfig, prepare_external


def external_config(cfg: Config) -> ExternalConfig:
    """The task's labels and prepare's image geometry, exactly as the prepare stage reads them."""
    return ExternalConfig(image_size=cfg.prepare.image_size, classes=cfg.classes,
                          min_image_side=cfg.prepare.min_image_side, label_map=dict(cfg.data.label_map))


def run_prepare_external(cfg: Config, prepared: Path, raw_dir: Path, out_dir: Path) -> dict:
    """Check and write every external test set of params ``evaluate.external`` into ``out_dir``."""
    sets = {name: Path(folder) for name, folder in cfg.evaluate.external.items()}
    return prepare_external(sets, Path(prepared), Path(raw_dir), Path(out_dir), external_config(cfg))
