"""The STGAN stages: stage 1 on every real train image, stage 2 per augmented class from stage 1.

``train_stgan_base`` trains one FastGAN (conditional on the 7 classes, or not) against the chosen
discriminator on all real **train** images and registers its EMA generator. ``train_stgan@<class>``
starts from those weights and fine-tunes on the class's real train images with Freeze-D and a
Barlow Twins term; its registered version is tagged with the stage-1 version it starts from.
Val and test images are never read.
"""

from __future__ import annotations

from pathlib import Path

from dermagan.atomic import atomic_dir
from dermagan.config import Config
from dermagan.data.prepared import read_split
from dermagan.device import pick_device
from dermagan.gan.artifacts import (
    BASE_FILE,
    read_stgan_base,
    stgan_discriminator_file,
    stgan_generator_file,
    write_class_generator,
    write_stgan_base,
)
from dermagan.gan.datasets import class_train_images
from dermagan.gan.runs import train_and_register_gan
from dermagan.gan.stgan import StganTrainer, check_stage_one
from dermagan.tracking.setup import configure

METHOD = "stgan"


def run_stgan_base(cfg: Config, prepared: Path, out_dir: Path, checkpoint_dir: Path) -> dict:
    """Stage 1: all real train images; writes base.pt (G, EMA G, D) and base.json; registers the EMA G."""
    stgan = cfg.stgan_config("stage1")
    device = pick_device(cfg.train.device)
    configure(cfg.gan.experiment)
    images, labels = class_train_images(read_split(prepared, "train"), None, cfg.classes, str(prepared))
    trainer = StganTrainer(stgan, images, labels, device)
    classes = list(cfg.classes)
    info = train_and_register_gan(trainer, METHOD, "stage1", classes, Path(checkpoint_dir) / METHOD / "stage1.pt",
                                  tags={"stgan_stage": 1, "discriminator": stgan.discriminator},
                                  stage="train_stgan_base", registered_model=cfg.gan.registered_model)
    with atomic_dir(Path(out_dir)) as tmp:
        write_stgan_base(tmp, trainer, classes, info)
    return info


def run_stgan_class(cfg: Config, dx: str, prepared: Path, base_dir: Path, out_dir: Path,
                    checkpoint_dir: Path) -> dict:
    """Stage 2 for one class, initialised from stage 1; writes <dx>.pt and generators.json."""
    stgan = cfg.stgan_config("stage2", dx)  # refuses a class outside gan.classes
    init, base_info = read_stgan_base(base_dir)
    check_stage_one(init["config"], stgan, Path(base_dir) / BASE_FILE)
    device = pick_device(cfg.train.device)
    configure(cfg.gan.experiment)
    images, labels = class_train_images(read_split(prepared, "train"), dx, cfg.classes, str(prepared))
    trainer = StganTrainer(stgan, images, labels, device, init=init)
    # the checkpoint names the stage-1 run it started from: a re-trained stage 1 never resumes an old stage 2
    checkpoint = Path(checkpoint_dir) / METHOD / f"{dx}-from-{base_info['run_id']}.pt"
    info = train_and_register_gan(trainer, METHOD, dx, [dx], checkpoint,
                                  tags={"stgan_stage": 2, "stage1_version": base_info["version"],
                                        "stage1_run_id": base_info["run_id"], "discriminator": stgan.discriminator,
                                        "frozen_d_tensors": len(trainer.frozen)}, stage="train_stgan",
                                  registered_model=cfg.gan.registered_model)
    with atomic_dir(Path(out_dir)) as tmp:
        write_class_generator(tmp, dx, {**stgan_generator_file(trainer, [dx]), **stgan_discriminator_file(trainer)},
                              info)
    return info
