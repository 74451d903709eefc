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

from pathlib import Path

import numpy as np

from dermagan.atomic import atomic_dir
from dermagan.config import Config
from dermagan.data.prepared import read_split
from dermagan.device import pick_device
from dermagan.gan.artifacts import write_class_generator
from dermagan.gan.cyclegan import CycleGanTrainer, translator_file
from dermagan.gan.datasets import domain_images
from dermagan.gan.runs import train_and_register
from dermagan.tracking.setup import configure

METHOD = "cyclegan"


def run_train_cyclegan(cfg: Config, dx: str, prepared: Path, out_dir: Path, checkpoint_dir: Path,
                       variant: str | None = None) -> dict:
    """Train the source-class <-> ``dx`` CycleGAN (with ``gan.cyclegan.variants.<variant>`` applied); write
    ``<dx>.pt`` and ``generators.json`` to ``out_dir``."""
    cycle = cfg.cyclegan_config(dx, variant)  # refuses a class outside gan.classes
    method = variant or METHOD
    device = pick_device(cfg.train.device)
    configure(cfg.gan.experiment)
    images_a, images_b = domain_images(read_split(prepared, "train"), cycle.source_class, dx, cfg.classes,
                                       str(Path(prepared) / "train.npz"))
    trainer = CycleGanTrainer(cycle, images_a, images_b, device)
    example = np.zeros((1, 3, cycle.image_size, cycle.image_size), dtype=np.float32)
    info = train_and_register(trainer, trainer.G_AB, method, dx, [dx], Path(checkpoint_dir) / method / f"{dx}.pt",
                              run_params={"n_train_images": len(images_b), "n_source_images": len(images_a)},
                              input_example=example, tags={"source_class": cycle.source_class,
                                                           "translation": f"{cycle.source_class}->{dx}"},
                              stage="train_cyclegan", registered_model=cfg.gan.registered_model)
    with atomic_dir(Path(out_dir)) as tmp:
        write_class_generator(tmp, dx, translator_file(trainer, dx), info)
    return info
