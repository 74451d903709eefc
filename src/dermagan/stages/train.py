"""The train stage: one classifier arm on the real train split, selected on real val."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch

from dermagan.atomic import atomic_dir, atomic_file
from dermagan.classify.augment import AugmentConfig
from dermagan.classify.models import create_classifier
from dermagan.classify.train import Trainer, TrainConfig, fit, load_checkpoint
from dermagan.constants import CLASSES
from dermagan.data.prepared import read_split
from dermagan.data.trainset import parse_extra, read_extras, with_extras
from dermagan.device import pick_device
from dermagan.errors import DermaganError
from dermagan.evaluate.plots import history_figure
from dermagan.params import section
from dermagan.tracking.setup import configure, flatten, standard_tags

ARM_KEYS = ("backbone", "pretrained", "augment", "class_weights")


def arm_settings(params: dict, arm: str) -> dict:
    """The arm's block of params.yaml, checked for the keys every arm needs."""
    arms = section(params, "arms")
    if arm not in arms:
        raise DermaganError(f"params: unknown arm '{arm}'; arms are {sorted(arms)}")
    settings = arms[arm]
    missing = [k for k in ARM_KEYS if k not in settings]
    if missing:
        raise DermaganError(f"params: arms.{arm} is missing {missing}")
    return settings


def run_name(arm: str, seed: int) -> str:
    """One (arm, seed) run: names its model folder, metrics file and MLflow run."""
    return f"{arm}-s{seed}"


def train_config(params: dict, arm: str, seed: int) -> TrainConfig:
    """Merge the shared ``train`` block with the arm's overrides into a TrainConfig."""
    settings, base = arm_settings(params, arm), dict(section(params, "train"))
    base.update({k: v for k, v in settings.items() if k in base})
    augment = AugmentConfig(**{**section(params, "augment"), "crop_scale": tuple(params["augment"]["crop_scale"])})
    return TrainConfig(
        epochs=int(base["epochs"]), batch_size=int(base["batch_size"]), lr=float(base["lr"]),
        weight_decay=float(base["weight_decay"]), lr_schedule=base["lr_schedule"],
        step_size=int(base["step_size"]), gamma=float(base["gamma"]), patience=int(base["patience"]),
        seed=int(seed), class_weights=bool(settings["class_weights"]),
        augment=augment if settings["augment"] else None,
        max_batches_per_epoch=base.get("max_batches_per_epoch"),
    )


def training_set(settings: dict, prepared: Path, trainset_dir: Path | None):
    """Real train split plus the arm's validated extra images (see the validate_augmented stage)."""
    train, source = read_split(prepared, "train"), parse_extra(settings.get("extra"))
    if trainset_dir is None or not (Path(trainset_dir) / "spec.json").exists():
        if source.kind != "none":
            raise DermaganError(f"arm needs extra images ({source.label}) but no training set was found at "
                                f"{trainset_dir}; run `dvc repro validate_augmented@<arm>` first")
        return train, 0
    extras, spec = read_extras(Path(trainset_dir))
    if spec["extra"] != source.label:
        raise DermaganError(f"{trainset_dir}: holds extras from '{spec['extra']}' but the arm asks for "
                            f"'{source.label}'; re-run validate_augmented")
    return with_extras(train, extras), len(extras)


def run_train(params: dict, arm: str, seed: int, prepared: Path, trainset_dir: Path | None, out_dir: Path,
              history_csv: Path, checkpoint_dir: Path) -> dict:
    """Train one arm with one seed, log it to MLflow, register the model; write model.pt + mlflow.json."""
    settings, cfg, name = arm_settings(params, arm), train_config(params, arm, seed), run_name(arm, seed)
    image_size = int(section(params, "prepare", "image_size"))
    device = pick_device(section(params, "train", "device"))
    torch.manual_seed(cfg.seed)
    model = create_classifier(settings["backbone"], CLASSES, image_size, settings["pretrained"])
    (train, n_extra), val = training_set(settings, Path(prepared), trainset_dir), read_split(prepared, "val")
    trainer = Trainer(model, train, cfg, device)
    checkpoint = Path(checkpoint_dir) / name / "last.pt"
    resumed = load_checkpoint(trainer, checkpoint) if checkpoint.exists() else {}
    if resumed:
        print(f"resuming run '{name}' from {checkpoint} at epoch {trainer.epoch}")
    experiment = section(params, "mlflow", "experiment")
    configure(experiment)
    with mlflow.start_run(run_id=resumed.get("run_id"), run_name=None if resumed else name) as run:
        if not resumed:
            _log_run_settings(params, arm, settings, cfg, train, val, device, n_extra)
        result = fit(trainer, val, checkpoint, on_epoch=lambda e, m: mlflow.log_metrics(m, step=e),
                     extra={"run_id": run.info.run_id})
        history = pd.DataFrame(result.history)
        mlflow.log_metrics({"best/val_bal_acc": result.best_val_bal_acc, "best/epoch": result.best_epoch})
        mlflow.log_figure(history_figure(history, f"{arm}: training curves"), "figures/training_curves.png")
        mlflow.log_table(history, "history.json")
        registered = _log_and_register(result.model.cpu(), params, arm, settings, image_size, result, cfg.seed)
    info = {"run_id": run.info.run_id, "experiment": experiment, "arm": arm, "seed": cfg.seed, **registered,
            "best_epoch": result.best_epoch, "best_val_bal_acc": result.best_val_bal_acc}
    _write_outputs(out_dir, history_csv, result.model, settings, image_size, info, history)
    checkpoint.unlink(missing_ok=True)
    return info


def _log_run_settings(params, arm, settings, cfg, train, val, device, n_extra) -> None:
    extra = parse_extra(settings.get("extra")).label
    mlflow.set_tags(standard_tags("train", arm=arm, seed=cfg.seed, backbone=settings["backbone"], extra=extra,
                                  dvc_stage=f"train@{run_name(arm, cfg.seed)}", device=str(device),
                                  data="real train" + (f" + {n_extra} extra ({extra})" if n_extra else " only")
                                  + "; real-only val"))
    mlflow.log_params({**flatten(asdict(cfg)), **flatten(settings, "arm."),
                       "image_size": params["prepare"]["image_size"], "n_train": len(train), "n_extra": n_extra,
                       "n_val": len(val)})


def _log_and_register(model, params, arm, settings, image_size, result, seed) -> dict:
    """Log the model with an input example and register it; tag the new version."""
    name = section(params, "mlflow", "registered_model")
    example = np.zeros((1, 3, image_size, image_size), dtype=np.float32)
    info = mlflow.pytorch.log_model(model, name="model", input_example=example,
                                    registered_model_name=name, serialization_format="pickle")
    version = str(info.registered_model_version)
    client = mlflow.MlflowClient()
    tags = {"arm": arm, "seed": seed, "extra": parse_extra(settings.get("extra")).label,
            "backbone": settings["backbone"], "augment": settings["augment"],
            "class_weights": settings["class_weights"], "pretrained": settings["pretrained"],
            "image_size": image_size, "val_bal_acc": f"{result.best_val_bal_acc:.4f}", "best_epoch": result.best_epoch}
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))
    return {"registered_model": name, "version": version, "model_uri": f"models:/{name}/{version}"}


def _write_outputs(out_dir, history_csv, model, settings, image_size, info, history) -> None:
    with atomic_dir(Path(out_dir)) as tmp, atomic_file(Path(history_csv)) as tmp_csv:
        torch.save({"state_dict": model.state_dict(), "backbone": settings["backbone"],
                    "classes": list(CLASSES), "image_size": image_size}, tmp / "model.pt")
        (tmp / "mlflow.json").write_text(json.dumps(info, indent=2))
        history.rename(columns=lambda c: c.replace("/", "_")).to_csv(tmp_csv, index=False)
