"""What the GAN training stages write: generator and discriminator files, and generator indexes.

A method's folder holds ``<name>.pt`` files and a ``generators.json`` index (name -> run id,
registered version, classes, images seen, ...), either at its top (DCGAN) or in one sub-folder per
class (STGAN stage 2, CycleGAN), which :func:`dermagan.gan.generate.read_generator_index` merges.
STGAN stage 1 writes ``base.pt`` (G, EMA G and D, what stage 2 starts from) and ``base.json``.
The key order of every dict here is part of the file format (``torch.save`` keeps it).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from dermagan.gan.generate import INDEX
from dermagan.gan.stgan import StganTrainer, stage_one_state
from dermagan.gan.train import GanTrainer

BASE_FILE, BASE_INDEX = "base.pt", "base.json"  # STGAN stage 1's weights and its index entry


def dcgan_generator_file(trainer: GanTrainer, classes: list[str]) -> dict:
    """A DCGAN's EMA generator, its config and the classes it makes (``generator`` absent: dcgan)."""
    return {"state_dict": trainer.G_ema.state_dict(), "config": asdict(trainer.cfg), "classes": classes}


def stgan_generator_file(trainer: StganTrainer, classes: list[str]) -> dict:
    """An STGAN EMA generator (FastGAN), its config, classes and fixed label (stage 2 of a conditional stage 1)."""
    return {"state_dict": trainer.G_ema.state_dict(), "config": asdict(trainer.cfg), "classes": classes,
            "generator": "fastgan", "label": trainer.cfg.fixed_label}


def stgan_base_file(trainer: StganTrainer, classes: list[str]) -> dict:
    """Stage 1's ``base.pt``: the generator file plus G, EMA G and D for stage 2 to start from."""
    return {**stgan_generator_file(trainer, classes), "G": trainer.G.state_dict(),
            "G_ema": trainer.G_ema.state_dict(), "D": trainer.D.state_dict()}


def stgan_discriminator_file(trainer: StganTrainer) -> dict:
    """Stage 2's final D and what rebuilds it (``dermagan.experts`` uses it as a frozen class expert)."""
    cfg, d = trainer.cfg, trainer.D
    config = {"discriminator": cfg.discriminator, "image_size": cfg.image_size, "ndf": cfg.ndf,
              "num_classes": cfg.num_classes, "feature_size": cfg.feature_size, "seed": cfg.seed,
              "label": cfg.fixed_label}
    if cfg.discriminator == "projected":
        config.update(proj_channels=d.projection.widths[0], cmap_dim=d.discs[0].cmap_dim)
    return {"D": d.state_dict(), "D_config": config}


def write_generator_index(folder: Path, entries: dict[str, dict]) -> Path:
    """``folder/generators.json``: generator name -> its index entry."""
    path = Path(folder) / INDEX
    path.write_text(json.dumps(entries, indent=2))
    return path


def write_class_generator(folder: Path, dx: str, payload: dict, entry: dict) -> None:
    """One class's folder: ``<dx>.pt`` and a ``generators.json`` naming it (STGAN stage 2, CycleGAN)."""
    torch.save(payload, Path(folder) / f"{dx}.pt")
    write_generator_index(folder, {dx: {**entry, "file": f"{dx}.pt"}})


def write_stgan_base(folder: Path, trainer: StganTrainer, classes: list[str], entry: dict) -> None:
    torch.save(stgan_base_file(trainer, classes), Path(folder) / BASE_FILE)
    (Path(folder) / BASE_INDEX).write_text(json.dumps(entry, indent=2))


def read_stgan_base(base_dir: Path) -> tuple[dict, dict]:
    """Stage 1's weights and config (``base.pt``) and its index entry (``base.json``: run id, version)."""
    init = stage_one_state(Path(base_dir) / BASE_FILE)
    return init, json.loads((Path(base_dir) / BASE_INDEX).read_text())
