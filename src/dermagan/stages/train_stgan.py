"""The STGAN stages: stage 1 on every real train image, stage 2 per augmented class from stage 1.

``train_stgan_base`` trains one FastGAN (conditional on the 7 classes, or not) against the chosen
discriminator on all real **train** images and registers its EMA generator. ``train_stgan@<class>``
starts from those weights and fine-tunes on the class's real train images with Freeze-D and a
Barlow Twins term; its registered version is tagged with the stage-1 version it starts from.
Val and test images are never read.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from dermagan.atomic import atomic_dir
from dermagan.constants import CLASSES
from dermagan.data.prepared import read_split
from dermagan.device import pick_device
from dermagan.errors import DermaganError
from dermagan.gan.stgan import StganConfig, StganTrainer, stage_one_state
from dermagan.params import section
from dermagan.stages.train_gan import _train_one, augmented_classes
from dermagan.tracking.setup import configure

METHOD = "stgan"
BASE_FILE, BASE_INDEX = "base.pt", "base.json"
NET_KEYS = ("discriminator", "feature_size", "conditional", "latent_dim", "ngf", "ndf", "lr_g", "lr_d", "beta1",
            "beta2", "batch_size", "diffaugment", "aux_weight", "grid_size", "seed")
STAGE_KEYS = ("total_images", "ema_half_life_images", "freeze_d_blocks", "barlow_weight", "barlow_lambda",
              "snapshot_every_images", "checkpoint_every_images", "diffaugment_p")
# net keys a stage block may override: training settings, not the architecture stage 2 must share
OVERRIDABLE = ("lr_g", "lr_d", "diffaugment")
TUNED_BLOCK = "stgan_tuned"  # gan.stgan_tuned.<class>: stage-2 values from `dermagan tune gan --apply`


def stgan_config(params: dict, stage: str, dx: str | None = None) -> StganConfig:
    """StganConfig from ``gan.stgan.net`` + ``gan.stgan.<stage>`` (+ ``gan.stgan.per_class.<dx>`` in stage 2)."""
    block = section(params, "gan", "stgan")
    net, values = dict(block["net"]), dict(block[stage])
    if dx is not None:
        per_class = block.get("per_class") or {}
        if dx not in per_class:
            raise DermaganError(f"params: gan.stgan.per_class has no entry for class '{dx}' (every class in "
                                f"gan.classes needs one, e.g. {dx}: {{total_images: 8000}})")
        values.update(per_class[dx] or {})
        tuned = dict((section(params, "gan").get(TUNED_BLOCK) or {}).get(dx) or {})
        both = sorted(set(tuned) & set(per_class[dx] or {}))
        if both:
            raise DermaganError(f"params: gan.stgan.per_class.{dx}.{both[0]} is also tuned (gan.{TUNED_BLOCK}.{dx} in "
                                f"the tuned-params file); a tuned key lives only in the tuned file: delete it from "
                                f"params.yaml (all: {both})")
        values.update(tuned)
    if "total_images" not in values:
        where = f"gan.stgan.per_class.{dx}" if dx is not None else f"gan.stgan.{stage}"
        raise DermaganError(f"params: {where} needs total_images (the training length in real images shown to D)")
    unknown = sorted(set(net) - set(NET_KEYS)) + sorted(set(values) - set(STAGE_KEYS) - set(OVERRIDABLE))
    if unknown:
        raise DermaganError(f"params: unknown gan.stgan keys {unknown}; net keys: {list(NET_KEYS)}, "
                            f"stage keys: {list(STAGE_KEYS)} (a stage may also override {list(OVERRIDABLE)})")
    conditional = bool(net.pop("conditional"))
    fixed_label = CLASSES.index(dx) if (conditional and dx is not None) else None
    return StganConfig(**{**net, **values}, image_size=int(section(params, "prepare", "image_size")),
                       num_classes=len(CLASSES) if conditional else None, fixed_label=fixed_label)


def _train_images(prepared: Path, dx: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 NCHW real train images (all, or of one class) and their 7-class labels."""
    train = read_split(prepared, "train")
    images, labels = torch.from_numpy(train.images).permute(0, 3, 1, 2), torch.from_numpy(train.labels).long()
    if dx is None:
        return images, labels
    mask = labels == CLASSES.index(dx)
    if not bool(mask.any()):
        raise DermaganError(f"no real train images of class '{dx}' in {prepared}")
    return images[mask], labels[mask]


def _generator_file(trainer: StganTrainer, classes: list[str]) -> dict:
    return {"state_dict": trainer.G_ema.state_dict(), "config": asdict(trainer.cfg), "classes": classes,
            "generator": "fastgan", "label": trainer.cfg.fixed_label}


def _discriminator_file(trainer: StganTrainer) -> dict:
    """Stage 2's final D and what rebuilds it (``dermagan.experts`` uses it as a frozen class expert)."""
    cfg, d = trainer.cfg, trainer.D
    config = {"discriminator": cfg.discriminator, "image_size": cfg.image_size, "ndf": cfg.ndf,
              "num_classes": cfg.num_classes, "feature_size": cfg.feature_size, "seed": cfg.seed,
              "label": cfg.fixed_label}
    if cfg.discriminator == "projected":
        config.update(proj_channels=d.projection.widths[0], cmap_dim=d.discs[0].cmap_dim)
    return {"D": d.state_dict(), "D_config": config}


def run_stgan_base(params: dict, prepared: Path, out_dir: Path, checkpoint_dir: Path) -> dict:
    """Stage 1: all real train images; writes base.pt (G, EMA G, D) and base.json; registers the EMA G."""
    cfg = stgan_config(params, "stage1")
    device = pick_device(section(params, "train", "device"))
    configure(section(params, "gan", "experiment"))
    images, labels = _train_images(Path(prepared), None)
    trainer = StganTrainer(cfg, images, labels, device)
    info = _train_one(trainer, METHOD, "stage1", list(CLASSES), Path(checkpoint_dir) / METHOD / "stage1.pt",
                      tags={"stgan_stage": 1, "discriminator": cfg.discriminator}, stage="train_stgan_base")
    with atomic_dir(Path(out_dir)) as tmp:
        torch.save({**_generator_file(trainer, list(CLASSES)), "G": trainer.G.state_dict(),
                    "G_ema": trainer.G_ema.state_dict(), "D": trainer.D.state_dict()}, tmp / BASE_FILE)
        (tmp / BASE_INDEX).write_text(json.dumps(info, indent=2))
    return info


def run_stgan_class(params: dict, dx: str, prepared: Path, base_dir: Path, out_dir: Path, checkpoint_dir: Path) -> dict:
    """Stage 2 for one class, initialised from stage 1; writes <dx>.pt and generators.json."""
    if dx not in augmented_classes(params):
        raise DermaganError(f"class '{dx}' is not in params gan.classes {augmented_classes(params)}")
    cfg = stgan_config(params, "stage2", dx)
    base_dir = Path(base_dir)
    init = stage_one_state(base_dir / BASE_FILE)
    base_info = json.loads((base_dir / BASE_INDEX).read_text())
    stage1_cfg = {k: v for k, v in init["config"].items()
                  if (k in NET_KEYS and k not in OVERRIDABLE) or k in ("image_size", "num_classes")}
    mine = {k: v for k, v in asdict(cfg).items() if k in stage1_cfg}
    if mine != stage1_cfg:
        changed = sorted(k for k in stage1_cfg if stage1_cfg[k] != mine.get(k))
        raise DermaganError(f"{base_dir / BASE_FILE} was trained with other gan.stgan.net settings ({changed}); "
                            "re-run the train_stgan_base stage (dvc repro does)")
    device = pick_device(section(params, "train", "device"))
    configure(section(params, "gan", "experiment"))
    images, labels = _train_images(Path(prepared), dx)
    trainer = StganTrainer(cfg, images, labels, device, init=init)
    # the checkpoint names the stage-1 run it started from: a re-trained stage 1 never resumes an old stage 2
    checkpoint = Path(checkpoint_dir) / METHOD / f"{dx}-from-{base_info['run_id']}.pt"
    info = _train_one(trainer, METHOD, dx, [dx], checkpoint,
                      tags={"stgan_stage": 2, "stage1_version": base_info["version"],
                            "stage1_run_id": base_info["run_id"], "discriminator": cfg.discriminator,
                            "frozen_d_tensors": len(trainer.frozen)}, stage="train_stgan")
    with atomic_dir(Path(out_dir)) as tmp:
        torch.save({**_generator_file(trainer, [dx]), **_discriminator_file(trainer)}, tmp / f"{dx}.pt")
        (tmp / "generators.json").write_text(json.dumps({dx: {**info, "file": f"{dx}.pt"}}, indent=2))
    return info
