"""One MLflow run per trained generator, and its registration as a ``dermagan-generator`` version.

Every GAN training stage (train_gan, train_stgan_base, train_stgan, train_cyclegan) trains through
:func:`train_and_register`: resume from a checkpoint if one matches, log the config, losses and
sample grids, then register the trained generator with tags naming the method, its classes and
the images seen. The caller must have configured the MLflow experiment (``tracking.configure``).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import mlflow
import numpy as np
import torch
from tqdm.auto import tqdm

from dermagan.gan.train import GanTrainer, crossed, resume_gan, train_gan
from dermagan.tracking.setup import flatten, standard_tags

GENERATOR_MODEL = "dermagan-generator"  # the default of gan.registered_model (every generator's versions)


def train_and_register_gan(trainer: GanTrainer, method: str, name: str, classes: list[str], checkpoint: Path,
                           tags: dict | None = None, stage: str = "train_gan",
                           registered_model: str = GENERATOR_MODEL) -> dict:
    """One DCGAN/STGAN run: resume if possible, log losses and sample grids, register the EMA generator.

    ``tags`` go on the run and on the registered generator version (e.g. the STGAN stage and the
    stage-1 version a stage-2 generator starts from).
    """
    cfg = trainer.cfg
    example = np.zeros((1, cfg.latent_dim), dtype=np.float32)
    return train_and_register(trainer, trainer.G_ema, method, name, classes, checkpoint,
                              run_params={"n_train_images": len(trainer.images)},
                              input_example=example if not cfg.num_classes else None,
                              conditional=bool(cfg.num_classes), tags=tags, stage=stage,
                              registered_model=registered_model)


def train_and_register(trainer, model: torch.nn.Module, method: str, name: str, classes: list[str],
                       checkpoint: Path, run_params: dict, input_example: np.ndarray | None = None,
                       conditional: bool = False, tags: dict | None = None, stage: str = "train_gan",
                       registered_model: str = GENERATOR_MODEL) -> dict:
    """Train any trainer ``train_gan`` drives (``GanTrainer``, ``CycleGanTrainer``) in one MLflow run.

    Resumes from ``checkpoint`` if possible; logs the config and ``run_params``, the losses
    (``gan/d_loss`` and ``gan/g_loss`` plus any others ``step`` returns) and the sample grids;
    then registers ``model`` (trained in place by ``trainer``) as a version of ``registered_model``.
    Returns the index entry: run id, registered model, version, classes, images seen, wall seconds and ``tags``.
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
            if bar.disable and crossed(seen - cfg.batch_size, seen, max(cfg.total_images // 20, 1)):  # logs
                print(f"{method} {name}: {seen}/{cfg.total_images} images, "
                      f"d {losses['gan/d_loss']:.3f} g {losses['gan/g_loss']:.3f}", flush=True)

        def on_snapshot(seen: int, grid: torch.Tensor) -> None:
            mlflow.log_image(grid.permute(1, 2, 0).numpy(), key="samples", step=seen)

        train_gan(trainer, checkpoint, on_step=on_step, on_snapshot=on_snapshot)
        bar.close()
        wall = time.perf_counter() - started
        mlflow.log_metrics({"gan/wall_seconds": wall, "gan/images_seen": trainer.images_seen})
        version = register_generator_version(model, method, classes, trainer.images_seen, input_example,
                                             conditional, tags, registered_model)
        run_id = mlflow.active_run().info.run_id
    checkpoint.unlink(missing_ok=True)
    return {"run_id": run_id, "registered_model": registered_model, "version": version, "classes": classes, "images_seen": trainer.images_seen,
            "wall_seconds": wall, **tags}


def register_generator_version(model: torch.nn.Module, method: str, classes: list[str], images_seen: int,
                               input_example: np.ndarray | None = None, conditional: bool = False,
                               tags: dict | None = None, registered_model: str = GENERATOR_MODEL) -> str:
    """Log ``model`` (moved to the CPU) to the active run and register it as a version of ``registered_model``
    (``gan.registered_model``), tagged with the method, classes, images seen, conditional and ``tags``; return the version."""
    info = mlflow.pytorch.log_model(model.cpu(), name="generator", registered_model_name=registered_model,
                                    input_example=input_example, serialization_format="pickle")
    version = str(info.registered_model_version)
    client = mlflow.MlflowClient()
    for key, value in {"method": method, "gan_classes": ",".join(classes), "images_seen": images_seen,
                       "conditional": conditional, **(tags or {})}.items():
        client.set_model_version_tag(registered_model, version, key, str(value))
    return version
