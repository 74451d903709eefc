"""The classifier objective: real-only validation balanced accuracy of one training recipe.

``objective: holdout`` trains on the real train split and scores the real val split after every
epoch (the pruner sees each epoch). ``objective: kfold`` scores the mean over a lesion-grouped
K-fold of train + val (StratifiedGroupKFold on ``lesion_id``); the step reported for fold f,
epoch e is ``100 f + e``. The test split is never read.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np
import torch

from dermagan.classify.recipe import build_classifier, build_recipe, train_config
from dermagan.classify.train import Trainer, fit
from dermagan.constants import CLASSES
from dermagan.data.prepared import SplitArrays, read_split, read_split_table
from dermagan.data.splits import grouped_kfold
from dermagan.device import pick_device
from dermagan.errors import DermaganError
from dermagan.tracking.setup import flatten
from dermagan.tuning.space import check_space, suggest

OBJECTIVES = ("holdout", "kfold")


def subset(arrays: SplitArrays, idx: np.ndarray) -> SplitArrays:
    return SplitArrays(arrays.images[idx], arrays.labels[idx], arrays.image_ids[idx])


def folds(prepared: Path, objective: str, n_splits: int, seed: int) -> list[tuple[SplitArrays, SplitArrays]]:
    """(train, validation) pairs: the real train/val splits, or a lesion-grouped K-fold of both."""
    if objective not in OBJECTIVES:
        raise DermaganError(f"params: tune.classifier.objective must be one of {OBJECTIVES}, got '{objective}'")
    train, val = read_split(prepared, "train"), read_split(prepared, "val")
    if objective == "holdout":
        return [(train, val)]
    pool = SplitArrays(np.concatenate([train.images, val.images]), np.concatenate([train.labels, val.labels]),
                       np.concatenate([train.image_ids, val.image_ids]))
    lesion = read_split_table(prepared).set_index("image_id")["lesion_id"]
    groups = lesion.reindex(pool.image_ids.astype(str)).to_numpy()
    if any(g is None or (isinstance(g, float) and np.isnan(g)) for g in groups):
        raise DermaganError(f"{prepared}: some train/val images have no lesion_id in the split table")
    return [(subset(pool, tr), subset(pool, va)) for tr, va in grouped_kfold(pool.labels, groups, n_splits, seed)]


def make_objective(config: dict) -> Callable:
    """objective(trial, report) for the plain values in ``config`` (see stages/tune.py)."""
    space = config["space"]
    check_space(space, "tune.classifier.space")
    data = folds(Path(config["prepared"]), config["objective"], int(config["kfold_splits"]), int(config["seed"]))
    device = pick_device(config["device"])

    def objective(trial, report) -> float:
        recipe = build_recipe(config["train"], suggest(trial, space), where="tune.classifier.space")
        mlflow.log_params({**flatten(recipe, "recipe."), "objective": config["objective"], "folds": len(data)})
        report.plan(len(data) * int(recipe["epochs"]))
        scores = []
        for f, (train, val) in enumerate(data):
            cfg = train_config(recipe, int(config["seed"]), config["augment"], config.get("max_batches_per_epoch"))
            torch.manual_seed(cfg.seed)
            trainer = Trainer(build_classifier(recipe, CLASSES, int(config["image_size"])), train, cfg, device)

            def on_epoch(epoch: int, metrics: dict, fold: int = f) -> None:
                report(100 * fold + epoch, metrics["val/bal_acc"], metrics)

            scores.append(fit(trainer, val, on_epoch=on_epoch).best_val_bal_acc)
        trial.set_user_attr("fold_scores", [float(s) for s in scores])
        return float(np.mean(scores))

    return objective
