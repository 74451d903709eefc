"""The train_cyclegan stage: one CycleGAN per augmented class, nv train images <-> the class's train images.

``train_cyclegan@<class>`` trains G_AB (nv -> class) and G_BA with two PatchGAN discriminators on
the real **train** split only (val and test are never read), logs the run to MLflow (config,
losses, images seen, source | translated sample grids) and registers G_AB as a
``dermagan-generator`` version. It writes ``<class>.pt`` (G_AB's weights, config,
``"generator": "cyclegan"``) and a ``generators.json`` index entry, one folder per class, so
``artifacts/gan/cyclegan/<class>/`` folders merge the way STGAN stage 2's do.

Params: ``gan.cyclegan.net`` (shared by every class) updated with ``gan.cyclegan.per_class.<class>``
(any key, at least ``total_images``), so editing one class's entry re-runs only that class.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from dermagan.atomic import atomic_dir
from dermagan.constants import CLASSES
from dermagan.data.prepared import read_split
from dermagan.device import pick_device
from dermagan.errors import DermaganError
from dermagan.gan.cyclegan import CycleGanConfig, CycleGanTrainer, translator_file
from dermagan.params import section
from dermagan.stages.train_gan import augmented_classes, train_and_register
from dermagan.tracking.setup import configure

METHOD = "cyclegan"
KEYS = tuple(f.name for f in fields(CycleGanConfig) if f.name != "image_size")  # image_size: prepare.image_size


def cyclegan_config(params: dict, dx: str) -> CycleGanConfig:
    """CycleGanConfig from ``gan.cyclegan.net`` + ``gan.cyclegan.per_class.<dx>`` (image size: the prepared one)."""
    block = section(params, "gan", "cyclegan")
    values = dict(block.get("net") or {})
    per_class = block.get("per_class") or {}
    if dx not in per_class:
        raise DermaganError(f"params: gan.cyclegan.per_class has no entry for class '{dx}' (every class in "
                            f"gan.classes needs one, e.g. {dx}: {{total_images: 2000}})")
    values.update(per_class[dx] or {})
    if "total_images" not in values:
        raise DermaganError(f"params: gan.cyclegan.per_class.{dx} (or gan.cyclegan.net) needs total_images "
                            "(the training length in target-class images shown to D_B)")
    unknown = sorted(set(values) - set(KEYS))
    if unknown:
        raise DermaganError(f"params: unknown gan.cyclegan keys {unknown} (net or per_class.{dx}); known: {list(KEYS)}")
    cfg = CycleGanConfig(**values, image_size=int(section(params, "prepare", "image_size")))
    if cfg.source_class not in CLASSES or cfg.source_class == dx:
        raise DermaganError(f"params: gan.cyclegan source_class must be one of {list(CLASSES)} other than the "
                            f"target class '{dx}', got '{cfg.source_class}'")
    return cfg


def domain_images(prepared: Path, source_class: str, dx: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 NCHW real **train** images of the source class (domain A) and of ``dx`` (domain B)."""
    train = read_split(prepared, "train")
    images = torch.from_numpy(train.images).permute(0, 3, 1, 2)
    out = []
    for name in (source_class, dx):
        mask = torch.from_numpy(train.labels == CLASSES.index(name))
        if not bool(mask.any()):
            raise DermaganError(f"no real train images of class '{name}' in {Path(prepared) / 'train.npz'}")
        out.append(images[mask])
    return out[0], out[1]


def run_train_cyclegan(params: dict, dx: str, prepared: Path, out_dir: Path, checkpoint_dir: Path) -> dict:
    """Train the source-class <-> ``dx`` CycleGAN; write ``<dx>.pt`` and ``generators.json`` to ``out_dir``."""
    if dx not in augmented_classes(params):
        raise DermaganError(f"class '{dx}' is not in params gan.classes {augmented_classes(params)}")
    cfg = cyclegan_config(params, dx)
    device = pick_device(section(params, "train", "device"))
    configure(section(params, "gan", "experiment"))
    images_a, images_b = domain_images(Path(prepared), cfg.source_class, dx)
    trainer = CycleGanTrainer(cfg, images_a, images_b, device)
    example = np.zeros((1, 3, cfg.image_size, cfg.image_size), dtype=np.float32)
    info = train_and_register(trainer, trainer.G_AB, METHOD, dx, [dx], Path(checkpoint_dir) / METHOD / f"{dx}.pt",
                              run_params={"n_train_images": len(images_b), "n_source_images": len(images_a)},
                              input_example=example, tags={"source_class": cfg.source_class,
                                                           "translation": f"{cfg.source_class}->{dx}"},
                              stage="train_cyclegan")
    with atomic_dir(Path(out_dir)) as tmp:
        torch.save(translator_file(trainer, dx), tmp / f"{dx}.pt")
        (tmp / "generators.json").write_text(json.dumps({dx: {**info, "file": f"{dx}.pt"}}, indent=2))
    return info
