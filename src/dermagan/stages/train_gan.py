"""The train_gan stage: DCGANs on the real **train** split only, logged and registered in MLflow.

``method: dcgan`` trains one unconditional GAN per augmented class; ``method: cdcgan`` trains one
class-conditional GAN on all augmented classes. Val and test images are never read here.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dermagan.atomic import atomic_dir
from dermagan.config import Config
from dermagan.data.prepared import read_split
from dermagan.device import pick_device
from dermagan.errors import DermaganError
from dermagan.gan.artifacts import dcgan_generator_file, write_generator_index
from dermagan.gan.datasets import dcgan_training_sets
from dermagan.gan.methods import get_method, methods_with
from dermagan.gan.runs import train_and_register_gan
from dermagan.gan.train import GanTrainer
from dermagan.tracking.setup import configure

STAGE = "train_gan"


def run_train_gan(cfg: Config, method: str, prepared: Path, out_dir: Path, checkpoint_dir: Path) -> dict:
    """Train every GAN of ``method``; write generator weights and an index JSON to ``out_dir``."""
    if get_method(method).train_stage != STAGE:
        raise DermaganError(f"unknown GAN method '{method}'; choose one of {methods_with(train_stage=STAGE)}")
    conditional = get_method(method).conditional
    sets = dcgan_training_sets(read_split(prepared, "train"), list(cfg.gan.classes), cfg.classes, conditional)
    device = pick_device(cfg.train.device)
    configure(cfg.gan.experiment)
    results = {}
    with atomic_dir(Path(out_dir)) as tmp:
        for name, (images, labels, classes) in sets.items():
            gan_cfg = cfg.dcgan_config(len(classes) if conditional else None)
            trainer = GanTrainer(gan_cfg, images, labels, device)
            checkpoint = Path(checkpoint_dir) / method / f"{name}.pt"
            results[name] = train_and_register_gan(trainer, method, name, classes, checkpoint, stage=STAGE,
                                                   registered_model=cfg.gan.registered_model)
            torch.save(dcgan_generator_file(trainer, classes), tmp / f"{name}.pt")
        write_generator_index(tmp, results)
    return results
