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
from dermagan.classify.recipe import build_classifier, build_recipe
from dermagan.classify.recipe import train_config as recipe_train_config
from dermagan.classify.train import Trainer, TrainConfig, fit, fit_temperature_on, load_checkpoint
from dermagan.constants import CLASSES
from dermagan.data.prepared import read_split
from dermagan.data.trainset import parse_extra, read_extras, with_extras
from dermagan.device import pick_device
from dermagan.errors import DermaganError
from dermagan.evaluate.plots import history_figure
from dermagan.params import section
from dermagan.tracking.setup import configure, flatten, standard_tags

def arm_settings(params: dict, arm: str) -> dict:
    """The arm's block of params.yaml (``extra`` plus any recipe keys it overrides)."""
    arms = section(params, "arms")
    if arm not in arms:
        raise DermaganError(f"params: unknown arm '{arm}'; arms are {sorted(arms)}")
    return dict(arms[arm] or {})


def arm_recipe(params: dict, arm: str) -> dict:
    """The shared recipe (params.yaml `train` + tuned values) with the arm's overrides."""
    settings = {k: v for k, v in arm_settings(params, arm).items() if k != "experts"}  # dermagan.experts reads it
    return build_recipe(section(params, "train"), settings, where=f"arms.{arm}")


def run_name(arm: str, seed: int) -> str:
    """One (arm, seed) run: names its model folder, metrics file and MLflow run."""
    return f"{arm}-s{seed}"


def train_config(params: dict, arm: str, seed: int) -> TrainConfig:
    """The arm's recipe as a TrainConfig."""
    return recipe_train_config(arm_recipe(params, arm), seed, section(params, "augment"),
                               section(params, "train").get("max_batches_per_epoch"))


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
    settings, recipe = arm_settings(params, arm), arm_recipe(params, arm)
    cfg, name = train_config(params, arm, seed), run_name(arm, seed)
    image_size = int(section(params, "prepare", "image_size"))
    device = pick_device(section(params, "train", "device"))
    torch.manual_seed(cfg.seed)
    if settings.get("experts"):  # frozen class-expert discriminators beside the backbone (dermagan.experts)
        from dermagan.experts import build_expert_classifier
        model = build_expert_classifier(recipe, CLASSES, image_size, settings["experts"], trainset_dir, arm)
    else:
        model = build_classifier(recipe, CLASSES, image_size)
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
            _log_run_settings(params, arm, settings, recipe, cfg, train, val, device, n_extra)
        result = fit(trainer, val, checkpoint, on_epoch=lambda e, m: mlflow.log_metrics(m, step=e),
                     extra={"run_id": run.info.run_id})
        history = pd.DataFrame(result.history)
        mlflow.log_metrics({"best/val_bal_acc": result.best_val_bal_acc, "best/epoch": result.best_epoch})
        if recipe["temperature_scaling"]:
            calibration = fit_temperature_on(result.model, val, cfg.batch_size * 2, device)
            mlflow.log_metrics({f"calibration/{k}": v for k, v in calibration.items()})
        mlflow.log_figure(history_figure(history, f"{arm}: training curves"), "figures/training_curves.png")
        mlflow.log_table(history, "history.json")
        registered = _log_and_register(result.model.cpu(), params, arm, settings, recipe, image_size, result, cfg.seed)
    info = {"run_id": run.info.run_id, "experiment": experiment, "arm": arm, "seed": cfg.seed, **registered,
            "best_epoch": result.best_epoch, "best_val_bal_acc": result.best_val_bal_acc}
    _write_outputs(out_dir, history_csv, result.model, recipe, image_size, info, history)
    checkpoint.unlink(missing_ok=True)
    return info


def _log_run_settings(params, arm, settings, recipe, cfg, train, val, device, n_extra) -> None:
    extra = parse_extra(settings.get("extra")).label
    tuned = sorted(set(params.get("tuned", {}).get("keys", [])) - set(settings))
    mlflow.set_tags(standard_tags("train", arm=arm, seed=cfg.seed, backbone=recipe["backbone"], extra=extra,
                                  dvc_stage=f"train@{run_name(arm, cfg.seed)}", device=str(device),
                                  tuned_keys=",".join(tuned) or "none",
                                  data="real train" + (f" + {n_extra} extra ({extra})" if n_extra else " only")
                                  + "; real-only val"))
    mlflow.log_params({**flatten(asdict(cfg)), **flatten(recipe, "recipe."), **flatten(settings, "arm."),
                       "image_size": params["prepare"]["image_size"], "n_train": len(train), "n_extra": n_extra,
                       "n_val": len(val)})


def _log_and_register(model, params, arm, settings, recipe, image_size, result, seed) -> dict:
    """Log the model with an input example and register it; tag the new version."""
    name = section(params, "mlflow", "registered_model")
    example = np.zeros((1, 3, image_size, image_size), dtype=np.float32)
    info = mlflow.pytorch.log_model(model, name="model", input_example=example,
                                    registered_model_name=name, serialization_format="pickle")
    version = str(info.registered_model_version)
    client = mlflow.MlflowClient()
    tags = {"arm": arm, "seed": seed, "extra": parse_extra(settings.get("extra")).label,
            "backbone": recipe["backbone"], "augment": recipe["augment"],
            "class_weight_power": recipe["class_weight_power"], "sampler": recipe["sampler"],
            "pretrained": recipe["pretrained"], "tta": recipe["tta"], "temperature": f"{float(model.temperature):.4f}",
            "image_size": image_size, "val_bal_acc": f"{result.best_val_bal_acc:.4f}", "best_epoch": result.best_epoch}
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))
    return {"registered_model": name, "version": version, "model_uri": f"models:/{name}/{version}"}


def _write_outputs(out_dir, history_csv, model, recipe, image_size, info, history) -> None:
    with atomic_dir(Path(out_dir)) as tmp, atomic_file(Path(history_csv)) as tmp_csv:
        torch.save({"state_dict": model.state_dict(), "backbone": recipe["backbone"], "tta": recipe["tta"],
                    "classes": list(CLASSES), "image_size": image_size,
                    **(model.checkpoint_fields() if hasattr(model, "checkpoint_fields") else {})}, tmp / "model.pt")
        (tmp / "mlflow.json").write_text(json.dumps(info, indent=2))
        history.rename(columns=lambda c: c.replace("/", "_")).to_csv(tmp_csv, index=False)
