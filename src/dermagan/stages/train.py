"""The train stage: one classifier arm on the real train split, selected on real val."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
import torch

from dermagan.atomic import atomic_dir, atomic_file
from dermagan.classify.artifact import save_trained
from dermagan.classify.recipe import build_arm_classifier, train_config
from dermagan.classify.tracking import log_and_register, log_train_settings
from dermagan.classify.train import Trainer, fit, fit_temperature_on, load_checkpoint
from dermagan.config import Config
from dermagan.config.layout import LAYOUT
from dermagan.data.prepared import read_split
from dermagan.data.trainset import parse_extra, training_set
from dermagan.device import pick_device
from dermagan.evaluate.plots import history_figure
from dermagan.tracking.datasets import log_datasets, training_inputs
from dermagan.tracking.setup import configure


def run_train(cfg: Config, arm: str, seed: int, prepared: Path, trainset_dir: Path | None, out_dir: Path,
              history_csv: Path, checkpoint_dir: Path) -> dict:
    """Train one arm with one seed, log it to MLflow, register the model; write model.pt + mlflow.json."""
    arm_cfg, recipe = cfg.arm(arm), cfg.recipe(arm)
    settings = arm_cfg.model_dump(exclude_unset=True)  # the arm's block as params.yaml writes it (MLflow arm.*)
    extra = parse_extra(arm_cfg.extra).label
    tc = train_config(recipe, seed, cfg.augment.plain(), cfg.train.max_batches_per_epoch)
    name, image_size = LAYOUT.run_name(arm, seed), cfg.prepare.image_size
    device = pick_device(cfg.train.device)
    torch.manual_seed(tc.seed)
    experts = arm_cfg.experts.plain() if arm_cfg.experts is not None else None
    model = build_arm_classifier(recipe, cfg.classes, image_size, experts, trainset_dir, arm)
    (train, n_extra), val = training_set(arm_cfg.extra, Path(prepared), trainset_dir), read_split(prepared, "val")
    trainer = Trainer(model, train, tc, device)
    checkpoint = Path(checkpoint_dir) / name / "last.pt"
    resumed = load_checkpoint(trainer, checkpoint) if checkpoint.exists() else {}
    if resumed:
        print(f"resuming run '{name}' from {checkpoint} at epoch {trainer.epoch}")
    experiment = cfg.mlflow.experiment
    configure(experiment)
    with mlflow.start_run(run_id=resumed.get("run_id"), run_name=None if resumed else name) as run:
        if not resumed:
            log_train_settings(name, arm, settings, recipe, tc, extra, image_size, cfg.tuned.keys, device,
                               len(train), n_extra, len(val))
        log_datasets(training_inputs(cfg.data.dataset.name, cfg.classes, train, n_extra, extra, val, str(prepared),
                                     trainset_dir and str(trainset_dir)))  # idempotent: a resumed run logs again
        result = fit(trainer, val, checkpoint, on_epoch=lambda e, m: mlflow.log_metrics(m, step=e),
                     extra={"run_id": run.info.run_id})
        history = pd.DataFrame(result.history)
        mlflow.log_metrics({"best/val_bal_acc": result.best_val_bal_acc, "best/epoch": result.best_epoch})
        if recipe["temperature_scaling"]:
            calibration = fit_temperature_on(result.model, val, tc.batch_size * 2, device)
            mlflow.log_metrics({f"calibration/{k}": v for k, v in calibration.items()})
        mlflow.log_figure(history_figure(history, f"{arm}: training curves"), "figures/training_curves.png")
        mlflow.log_table(history, "history.json")
        registered = log_and_register(result.model.cpu(), cfg.mlflow.registered_model, arm, tc.seed, extra, n_extra,
                                      recipe, image_size, result.best_val_bal_acc, cfg.prepare.min_image_side)
    info = {"run_id": run.info.run_id, "experiment": experiment, "arm": arm, "seed": tc.seed, **registered,
            "best_epoch": result.best_epoch, "best_val_bal_acc": result.best_val_bal_acc}
    with atomic_dir(Path(out_dir)) as tmp, atomic_file(Path(history_csv)) as tmp_csv:
        save_trained(tmp, result.model, recipe["backbone"], recipe["tta"], cfg.classes, image_size, info)
        history.rename(columns=lambda c: c.replace("/", "_")).to_csv(tmp_csv, index=False)
    checkpoint.unlink(missing_ok=True)
    return info
