"""The train_gan stage: DCGANs on the real **train** split only, logged and registered in MLflow.

``method: dcgan`` trains one unconditional GAN per augmented class; ``method: cdcgan`` trains one
class-conditional GAN on all augmented classes. Val and test images are never read here.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import mlflow
import numpy as np
import torch
from tqdm.auto import tqdm

from dermagan.atomic import atomic_dir
from dermagan.constants import CLASSES
from dermagan.data.prepared import read_split
from dermagan.device import pick_device
from dermagan.errors import DermaganError
from dermagan.gan.train import GanConfig, GanTrainer, _crossed, resume_gan, train_gan
from dermagan.params import section
from dermagan.tracking.setup import configure, flatten, standard_tags

METHODS = ("dcgan", "cdcgan")
GENERATOR_MODEL = "dermagan-generator"


def gan_config(params: dict, num_classes: int | None) -> GanConfig:
    """GanConfig from the ``gan`` block; the image size is the prepared one."""
    cfg = section(params, "gan")
    fields = {k: cfg[k] for k in GanConfig.__dataclass_fields__ if k in cfg}
    return GanConfig(**{**fields, "image_size": int(section(params, "prepare", "image_size")),
                        "num_classes": num_classes})


def augmented_classes(params: dict) -> list[str]:
    classes = list(section(params, "gan", "classes"))
    unknown = [c for c in classes if c not in CLASSES]
    if unknown or not classes:
        raise DermaganError(f"params: gan.classes must be a non-empty subset of {list(CLASSES)}, got {classes}")
    return classes


def training_sets(params: dict, method: str, prepared: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor, list[str]]]:
    """Name -> (uint8 NCHW train images, label index within the GAN's classes, classes)."""
    if method not in METHODS:
        raise DermaganError(f"unknown GAN method '{method}'; choose one of {METHODS}")
    train = read_split(prepared, "train")
    classes = augmented_classes(params)
    images = torch.from_numpy(train.images).permute(0, 3, 1, 2)
    wanted = [CLASSES.index(c) for c in classes]
    if method == "cdcgan":
        mask = np.isin(train.labels, wanted)
        lookup = np.full(len(CLASSES), -1)
        lookup[wanted] = np.arange(len(wanted))
        local = torch.from_numpy(lookup[train.labels[mask]])
        return {"conditional": (images[torch.from_numpy(mask)], local, classes)}
    sets = {}
    for name, index in zip(classes, wanted):
        mask = torch.from_numpy(train.labels == index)
        sets[name] = (images[mask], torch.zeros(int(mask.sum()), dtype=torch.long), [name])
    return sets


def run_train_gan(params: dict, method: str, prepared: Path, out_dir: Path, checkpoint_dir: Path) -> dict:
    """Train every GAN of ``method``; write generator weights and an index JSON to ``out_dir``."""
    device = pick_device(section(params, "train", "device"))
    configure(section(params, "gan", "experiment"))
    results = {}
    with atomic_dir(Path(out_dir)) as tmp:
        for name, (images, labels, classes) in training_sets(params, method, prepared).items():
            cfg = gan_config(params, len(classes) if method == "cdcgan" else None)
            trainer = GanTrainer(cfg, images, labels, device)
            results[name] = _train_one(trainer, method, name, classes, Path(checkpoint_dir) / method / f"{name}.pt")
            torch.save({"state_dict": trainer.G_ema.state_dict(), "config": asdict(cfg), "classes": classes},
                       tmp / f"{name}.pt")
        (tmp / "generators.json").write_text(json.dumps(results, indent=2))
    return results


def _train_one(trainer: GanTrainer, method: str, name: str, classes: list[str], checkpoint: Path,
               tags: dict | None = None, stage: str = "train_gan") -> dict:
    """One GAN run: resume if possible, log losses and sample grids, register the EMA generator.

    ``tags`` go on the run and on the registered generator version (e.g. the STGAN stage and the
    stage-1 version a stage-2 generator starts from).
    """
    cfg = trainer.cfg
    example = np.zeros((1, cfg.latent_dim), dtype=np.float32)
    return train_and_register(trainer, trainer.G_ema, method, name, classes, checkpoint,
                              run_params={"n_train_images": len(trainer.images)},
                              input_example=example if not cfg.num_classes else None,
                              conditional=bool(cfg.num_classes), tags=tags, stage=stage)


def train_and_register(trainer, model: torch.nn.Module, method: str, name: str, classes: list[str],
                       checkpoint: Path, run_params: dict, input_example: np.ndarray | None = None,
                       conditional: bool = False, tags: dict | None = None, stage: str = "train_gan") -> dict:
    """Train any trainer ``train_gan`` drives (``GanTrainer``, ``CycleGanTrainer``) in one MLflow run.

    Resumes from ``checkpoint`` if possible; logs the config and ``run_params``, the losses
    (``gan/d_loss`` and ``gan/g_loss`` plus any others ``step`` returns) and the sample grids;
    then registers ``model`` (trained in place by ``trainer``) as a ``dermagan-generator`` version.
    """
    resumed = resume_gan(trainer, checkpoint)
    started, cfg = time.perf_counter(), trainer.cfg
    tags = {k: str(v) for k, v in (tags or {}).items()}
    with mlflow.start_run(run_name=f"{method}-{name}"):
        mlflow.set_tags(standard_tags(stage, method=method, gan_classes=",".join(classes),
                                      data="real train split only", resumed=resumed, **tags))
        mlflow.log_params({**flatten(asdict(cfg)), **run_params})
        log_every = max(1, 1000 // cfg.batch_size)
        bar = tqdm(total=cfg.total_images, initial=trainer.images_seen, unit="img", mininterval=5,
                   desc=f"{method} {name}")

        def on_step(seen: int, losses: dict) -> None:
            bar.update(seen - bar.n)
            if trainer.step_count == 1 or trainer.step_count % log_every == 0:
                mlflow.log_metrics(losses, step=seen)
                bar.set_postfix(d=f"{losses['gan/d_loss']:.3f}", g=f"{losses['gan/g_loss']:.3f}", refresh=False)
            if bar.disable and _crossed(seen - cfg.batch_size, seen, max(cfg.total_images // 20, 1)):  # logs
                print(f"{method} {name}: {seen}/{cfg.total_images} images, "
                      f"d {losses['gan/d_loss']:.3f} g {losses['gan/g_loss']:.3f}", flush=True)

        def on_snapshot(seen: int, grid: torch.Tensor) -> None:
            mlflow.log_image(grid.permute(1, 2, 0).numpy(), key="samples", step=seen)

        train_gan(trainer, checkpoint, on_step=on_step, on_snapshot=on_snapshot)
        bar.close()
        wall = time.perf_counter() - started
        mlflow.log_metrics({"gan/wall_seconds": wall, "gan/images_seen": trainer.images_seen})
        version = register_generator_version(model, method, classes, trainer.images_seen, input_example,
                                             conditional, tags)
        run_id = mlflow.active_run().info.run_id
    checkpoint.unlink(missing_ok=True)
    return {"run_id": run_id, "version": version, "classes": classes, "images_seen": trainer.images_seen,
            "wall_seconds": wall, **tags}


def register_generator_version(model: torch.nn.Module, method: str, classes: list[str], images_seen: int,
                               input_example: np.ndarray | None = None, conditional: bool = False,
                               tags: dict | None = None) -> str:
    """Log ``model`` (moved to the CPU) to the active run and register it as a ``dermagan-generator``
    version tagged with the method, classes, images seen, conditional and ``tags``; return the version."""
    info = mlflow.pytorch.log_model(model.cpu(), name="generator", registered_model_name=GENERATOR_MODEL,
                                    input_example=input_example, serialization_format="pickle")
    version = str(info.registered_model_version)
    client = mlflow.MlflowClient()
    for key, value in {"method": method, "gan_classes": ",".join(classes), "images_seen": images_seen,
                       "conditional": conditional, **(tags or {})}.items():
        client.set_model_version_tag(GENERATOR_MODEL, version, key, str(value))
    return version
