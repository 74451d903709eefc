"""The classifier objective: real-only validation balanced accuracy of one training recipe.

``objective: holdout`` trains on the real train split and scores the real val split after every
epoch (the pruner sees each epoch). ``objective: kfold`` scores the mean over a lesion-grouped
K-fold of train + val (StratifiedGroupKFold on ``lesion_id``); the step reported for fold f,
epoch e is ``100 f + e``. The test split is never read.

:func:`kfold_scores` is the one training loop over folds: the tuning objective calls it, and so
does ``dermagan cv`` (stages/cv.py), which adds per-fold extras, resume and reporting around it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch

from dermagan.classify.recipe import build_classifier, build_recipe, train_config
from dermagan.classify.train import Trainer, fit, load_checkpoint
from dermagan.data.prepared import SplitArrays, read_split, read_split_table
from dermagan.data.splits import grouped_kfold
from dermagan.device import pick_device
from dermagan.errors import DermaganError
from dermagan.tracking.setup import flatten
from dermagan.tuning.space import check_space, suggest

OBJECTIVES = ("holdout", "kfold")


def subset(arrays: SplitArrays, idx: np.ndarray) -> SplitArrays:
    return SplitArrays(arrays.images[idx], arrays.labels[idx], arrays.image_ids[idx])


def lesions_of(table: pd.DataFrame, arrays: SplitArrays, where: Path) -> np.ndarray:
    """The ``lesion_id`` of every image of ``arrays`` (split table rows); error if one has none."""
    groups = table.set_index("image_id")["lesion_id"].reindex(arrays.image_ids.astype(str)).to_numpy()
    if any(g is None or (isinstance(g, float) and np.isnan(g)) for g in groups):
        raise DermaganError(f"{where}: some train/val images have no lesion_id in the split table")
    return groups


def folds(prepared: Path, objective: str, n_splits: int, seed: int) -> list[tuple[SplitArrays, SplitArrays]]:
    """(train, validation) pairs: the real train/val splits, or a lesion-grouped K-fold of both."""
    if objective not in OBJECTIVES:
        raise DermaganError(f"params: tune.classifier.objective must be one of {OBJECTIVES}, got '{objective}'")
    train, val = read_split(prepared, "train"), read_split(prepared, "val")
    if objective == "holdout":
        return [(train, val)]
    pool = SplitArrays(np.concatenate([train.images, val.images]), np.concatenate([train.labels, val.labels]),
                       np.concatenate([train.image_ids, val.image_ids]))
    groups = lesions_of(read_split_table(prepared), pool, prepared)
    return [(subset(pool, tr), subset(pool, va)) for tr, va in grouped_kfold(pool.labels, groups, n_splits, seed)]


@dataclass
class FoldResult:
    """One fold trained to the end (or early stopping): its best epoch by val balanced accuracy."""

    fold: int
    n_train: int  # real images of the fold's training part
    n_extra: int  # extra images added to it (``train_part``), e.g. oversampled copies
    n_val: int
    bal_acc: float  # best validation balanced accuracy
    best_epoch: int
    recalls: dict[str, float]  # per-class validation recall at the best epoch (NaN: class not in the fold)
    seconds: float
    history: list[dict] = field(default_factory=list)  # per-epoch metrics
    resumed_epoch: int = 0  # epochs restored from the fold's checkpoint (a run killed inside the fold)

    @classmethod
    def from_dict(cls, doc: dict) -> FoldResult:
        return cls(**{k: doc[k] for k in cls.__dataclass_fields__ if k in doc})


def kfold_scores(recipe: dict, data: Sequence[tuple[SplitArrays, SplitArrays]], *, classes: tuple[str, ...],
                 seed: int, augment: dict, image_size: int, device: torch.device, max_batches_per_epoch: int | None = None,
                 on_epoch: Callable[[int, int, dict], None] | None = None,
                 train_part: Callable[[int, SplitArrays], SplitArrays] | None = None,
                 finished: dict[int, FoldResult] | None = None,
                 on_fold: Callable[[FoldResult, bool], None] | None = None,
                 checkpoint: Callable[[int], Path] | None = None) -> list[FoldResult]:
    """Train ``recipe`` once per (train, validation) pair of ``data`` (see :func:`folds`); ``classes``: the task
    labels (params ``data.classes``) the integer labels index.

    Every fold starts from ``torch.manual_seed(seed)``, so a fold's result does not depend on
    which folds ran before it. ``on_epoch(fold, epoch, metrics)`` sees every epoch (the tuner's
    pruning hook). ``train_part(fold, train)`` may return the fold's training set with extras
    (drawn from ``train`` only). Folds in ``finished`` are not trained again; ``on_fold(result,
    resumed)`` is called for every fold in order. ``checkpoint(fold)`` names a per-epoch
    checkpoint file: a fold killed half-way resumes from it, and it is deleted when the fold ends.
    """
    finished = finished or {}
    results = []
    for f, (train, val) in enumerate(data):
        if f in finished:
            results.append(finished[f])
            if on_fold:
                on_fold(finished[f], True)
            continue
        started = time.perf_counter()
        fold_train = train_part(f, train) if train_part else train
        cfg = train_config(recipe, seed, augment, max_batches_per_epoch)
        torch.manual_seed(cfg.seed)
        trainer = Trainer(build_classifier(recipe, tuple(classes), image_size), fold_train, cfg, device)
        path = checkpoint(f) if checkpoint else None
        if path is not None and path.exists():
            load_checkpoint(trainer, path)  # a checkpoint of another TrainConfig is ignored
        resumed_epoch = trainer.epoch

        def epoch_hook(epoch: int, metrics: dict, fold: int = f) -> None:
            if on_epoch:
                on_epoch(fold, epoch, metrics)

        fitted = fit(trainer, val, path, on_epoch=epoch_hook)
        best = fitted.history[fitted.best_epoch - 1] if fitted.best_epoch else {}
        result = FoldResult(fold=f, n_train=len(train), n_extra=len(fold_train) - len(train), n_val=len(val),
                            bal_acc=float(fitted.best_val_bal_acc), best_epoch=int(fitted.best_epoch),
                            recalls={c: float(best.get(f"val/recall_{c}", float("nan"))) for c in classes},
                            seconds=time.perf_counter() - started,
                            history=[{k: float(v) for k, v in row.items()} for row in fitted.history],
                            resumed_epoch=resumed_epoch)
        if path is not None:
            path.unlink(missing_ok=True)
        results.append(result)
        if on_fold:
            on_fold(result, False)
    return results


def make_objective(config: dict) -> Callable:
    """objective(trial, report) for the plain values in ``config`` (see tuning/targets.py; ``classes``: the task
    labels, params ``data.classes``)."""
    space, classes = config["space"], tuple(config["classes"])
    check_space(space, "tune.classifier.space")
    data = folds(Path(config["prepared"]), config["objective"], int(config["kfold_splits"]), int(config["seed"]))
    device = pick_device(config["device"])

    def objective(trial, report) -> float:
        recipe = build_recipe(config["train"], suggest(trial, space), where="tune.classifier.space")
        mlflow.log_params({**flatten(recipe, "recipe."), "objective": config["objective"], "folds": len(data)})
        report.plan(len(data) * int(recipe["epochs"]))
        results = kfold_scores(recipe, data, classes=classes, seed=int(config["seed"]), augment=config["augment"],
                               image_size=int(config["image_size"]), device=device,
                               max_batches_per_epoch=config.get("max_batches_per_epoch"),
                               on_epoch=lambda fold, epoch, metrics: report(100 * fold + epoch,
                                                                            metrics["val/bal_acc"], metrics))
        scores = [r.bal_acc for r in results]
        trial.set_user_attr("fold_scores", scores)
        return float(np.mean(scores))

    return objective
