"""Bookkeeping of ``dermagan cv`` (lesion-grouped K-fold of one arm on train + val): which arms may run,
per-fold extras, resume files, MLflow fold runs, the fold table, figure and summary.

The fold loop itself is :func:`dermagan.tuning.classifier.kfold_scores` (the tuner's ``objective:
kfold`` uses it too); the cv stage (stages/cv.py) wires these pieces around it.

Resume: every finished fold is written to ``<checkpoints>/cv/<name>/fold<f>.json`` (and a fold in
progress checkpoints every epoch); ``state.json`` holds the configuration and the parent MLflow run,
so a restart with the same configuration skips finished folds and logs into the same parent run.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import Metric

from dermagan.atomic import atomic_file
from dermagan.data.prepared import SplitArrays, read_split_table
from dermagan.data.trainset import OVERSAMPLE, extra_targets, oversample_extras, parse_extra, with_extras
from dermagan.errors import DermaganError
from dermagan.serialize import json_safe
from dermagan.tuning.classifier import FoldResult, lesions_of

STATE = "state.json"
DATA = "real train+val, StratifiedGroupKFold on lesion_id; the test split is not read"


def check_arm(arm: str, extra: str | None, has_experts: bool) -> None:
    """Refuse arms whose extra images or experts saw the whole train split (the folds would leak)."""
    if has_experts:
        raise DermaganError(
            f"arm '{arm}' uses class experts (arms.{arm}.experts: frozen STGAN discriminators): they were trained "
            "on the whole train split, which K-fold puts into the validation folds, so every fold would be scored "
            "on images its experts were fitted to (a leak). `dermagan cv` supports arms with extra: null or "
            "extra: oversample and no experts.")
    source = parse_extra(extra)
    if source.kind == "synthetic":
        raise DermaganError(
            f"arm '{arm}' trains on GAN images (arms.{arm}.extra: {source.label}): its generators and "
            "discriminators were trained on the whole train split, which K-fold puts into the validation folds, "
            "so every fold would be scored on images the GAN learnt from (a leak). `dermagan cv` supports "
            "arms with extra: null or extra: oversample; evaluate GAN arms on the fixed val/test splits.")


def cv_settings(n_folds: int | None, seed: int | None, default_folds: int | None,
                default_seed: int | None) -> tuple[int, int]:
    """K and the seed: the command line's, else params.yaml ``cv.folds`` / ``cv.seed``."""
    for value, default, key in ((n_folds, default_folds, "folds"), (seed, default_seed, "seed")):
        if value is None and default is None:
            raise DermaganError(f"params: missing key 'cv.{key}' (or pass --{key})")
    n_folds = default_folds if n_folds is None else n_folds
    seed = default_seed if seed is None else seed
    if int(n_folds) < 2:
        raise DermaganError(f"cv: K-fold needs at least 2 folds (--folds or params cv.folds), got {n_folds}")
    return int(n_folds), int(seed)


def fold_train_set(train: SplitArrays, extra: str | None, gan: dict, classes: tuple[str, ...]) -> SplitArrays:
    """A fold's training set: its real training part, plus (``extra: oversample``) copies drawn from it only,
    ``gan.classes`` x ``gan.amount`` with seed ``gan.seed`` (``gan``: the params block as plain values;
    ``classes``: the task labels, params ``data.classes``)."""
    if parse_extra(extra).kind != OVERSAMPLE:
        return train
    return with_extras(train, oversample_extras(train, extra_targets(gan, train, classes), int(gan["seed"]),
                                                classes))


def fold_lesions(prepared: Path, data: list[tuple[SplitArrays, SplitArrays]]) -> list[int]:
    """Lesions in each fold's validation part; refuses a lesion in both parts of a fold."""
    table, lesions = read_split_table(prepared), []
    for f, (train, val) in enumerate(data):  # StratifiedGroupKFold guarantees it; a cheap check says so
        val_lesions = set(lesions_of(table, val, prepared))
        shared = set(lesions_of(table, train, prepared)) & val_lesions
        if shared:
            raise DermaganError(f"cv fold {f}: lesion(s) {sorted(shared)[:5]} are in both its train and val parts")
        lesions.append(len(val_lesions))
    return lesions


def fingerprint(data: list[tuple[SplitArrays, SplitArrays]]) -> str:
    """sha256 of every validation part (ids, labels, pixels): the pool and its fold assignment."""
    digest = hashlib.sha256()
    for _, val in data:
        for array in (np.asarray(val.image_ids).astype(str), val.labels, val.images):
            digest.update(np.ascontiguousarray(array).tobytes())
        digest.update(b"|")
    return digest.hexdigest()


def plain_json(value) -> dict:
    """``value`` as it reads back from JSON (what a resume file's ``config`` is compared with)."""
    return json.loads(json.dumps(json_safe(value)))


# --- resume files ------------------------------------------------------------------------------------------------

def write_json(path: Path, doc: dict) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(json_safe(doc), indent=2, allow_nan=False))


def read_fold(path: Path) -> tuple[FoldResult, dict]:
    doc = json.loads(path.read_text())
    doc["recalls"] = {c: float("nan") if v is None else v for c, v in doc["recalls"].items()}
    return FoldResult.from_dict(doc), doc


def load_resume(folder: Path, config: dict) -> tuple[dict[int, FoldResult], dict[int, dict], str | None]:
    """Finished folds (results and their files' docs) and the parent run id of a run with this config.

    A resume folder written with another configuration is discarded (its folds would not match).
    """
    state_path = folder / STATE
    if not state_path.is_file():
        return {}, {}, None
    state = json.loads(state_path.read_text())
    if state.get("config") != config:
        changed = sorted(k for k in set(config) | set(state.get("config", {}))
                         if config.get(k) != state.get("config", {}).get(k))
        print(f"[cv] {folder}: finished folds were run with another configuration (changed: {changed}); "
              "starting over")
        abandon(state.get("parent_run_id"))
        shutil.rmtree(folder)
        return {}, {}, None
    finished, docs = {}, {}
    for path in sorted(folder.glob("fold*.json")):
        result, doc = read_fold(path)
        finished[result.fold], docs[result.fold] = result, doc
    return finished, docs, state.get("parent_run_id")


def abandon(run_id: str | None) -> None:
    """Mark a replaced parent run as abandoned (KILLED), if it is in this tracking store."""
    if not run_id:
        return
    client = mlflow.MlflowClient()
    try:
        client.set_tag(run_id, "cv_state", "abandoned (configuration changed)")
        client.set_terminated(run_id, "KILLED")
    except mlflow.exceptions.MlflowException:
        pass  # not in this tracking store


def run_exists(run_id: str | None) -> bool:
    if not run_id:
        return False
    try:
        mlflow.MlflowClient().get_run(run_id)
        return True
    except mlflow.exceptions.MlflowException:
        return False


# --- MLflow ------------------------------------------------------------------------------------------------------

def log_fold_run(name: str, arm: str, result: FoldResult, lesions_val: int) -> str:
    """One nested MLflow run (under the active parent) with the fold's curves and results."""
    with mlflow.start_run(run_name=f"{name}-fold{result.fold}", nested=True,
                          tags={"stage": "cv-fold", "arm": arm, "fold": str(result.fold)}) as run:
        mlflow.log_params({"fold": result.fold, "n_train": result.n_train, "n_extra": result.n_extra,
                           "n_val": result.n_val, "lesions_val": lesions_val})
        now = int(time.time() * 1000)
        curve = [Metric(k, float(v), now, int(row["epoch"])) for row in result.history for k, v in row.items()
                 if k != "epoch" and math.isfinite(v)]
        for start in range(0, len(curve), 1000):  # one batch per 1000 values (MLflow's limit)
            mlflow.MlflowClient().log_batch(run.info.run_id, metrics=curve[start:start + 1000])
        final = {"bal_acc": result.bal_acc, "best_epoch": result.best_epoch, "minutes": result.seconds / 60,
                 **{f"recall_{c}": r for c, r in result.recalls.items()}}
        mlflow.log_metrics({k: float(v) for k, v in final.items() if math.isfinite(v)})
        return run.info.run_id


def fold_recorder(name: str, arm: str, n_folds: int, lesions: list[int], docs: dict[int, dict], reuse: bool,
                  resume_dir: Path) -> Callable[[FoldResult, bool], None]:
    """``on_fold`` for :func:`kfold_scores`: log a fold's nested run (once: a resumed fold whose run is in the
    reused parent keeps it), write its resume file, print one line."""
    def on_fold(result: FoldResult, resumed: bool) -> None:
        f = result.fold
        run_id = docs.get(f, {}).get("run_id")
        if not (resumed and reuse and run_exists(run_id)):
            run_id = log_fold_run(name, arm, result, lesions[f])
            mlflow.log_metric("fold/bal_acc", result.bal_acc, step=f)
        if not resumed or run_id != docs[f].get("run_id"):
            write_json(resume_dir / f"fold{f}.json", {**asdict(result), "lesions_val": lesions[f], "run_id": run_id})
        how = "finished earlier" if resumed else f"{result.seconds / 60:.1f} min" + (
            f" (resumed from its checkpoint at epoch {result.resumed_epoch})" if result.resumed_epoch else "")
        print(f"[cv {name}] fold {f} ({f + 1} of {n_folds}): bal_acc {result.bal_acc:.4f} at epoch "
              f"{result.best_epoch}; train {result.n_train}" + (f"+{result.n_extra}" if result.n_extra else "")
              + f" / val {result.n_val} images ({lesions[f]} lesions); {how}", flush=True)

    return on_fold


def log_report(summary: dict, fig, folds_csv: Path) -> None:
    """The finished study's metrics, figure, summary and fold table in the active (parent) run."""
    mlflow.log_metrics({"cv/bal_acc_mean": summary["bal_acc_mean"], "cv/bal_acc_std": summary["bal_acc_std"],
                        "cv/wall_minutes": summary["wall_minutes"],
                        **{f"cv/recall_{c}_mean": v for c, v in summary["recall_mean"].items() if math.isfinite(v)}})
    mlflow.log_figure(fig, "figures/cv_folds.png")
    mlflow.log_dict(json_safe(summary), "cv_summary.json")
    mlflow.log_artifact(str(folds_csv))
    mlflow.set_tag("cv_state", "complete")


# --- the report --------------------------------------------------------------------------------------------------

def fold_table(results: list[FoldResult], lesions: list[int], classes: tuple[str, ...]) -> pd.DataFrame:
    rows = [{"fold": r.fold, "n_train": r.n_train, "n_extra": r.n_extra, "n_val": r.n_val, "lesions_val": n,
             "bal_acc": r.bal_acc, "best_epoch": r.best_epoch,
             **{f"recall_{c}": r.recalls[c] for c in classes}, "minutes": round(r.seconds / 60, 3)}
            for r, n in zip(results, lesions)]
    return pd.DataFrame(rows)


def summarize(table: pd.DataFrame, results: list[FoldResult], classes: tuple[str, ...], head: dict,
              tail: dict) -> dict:
    """The summary of a finished study: ``head`` (arm, folds, seed, extra, complete), the statistics of
    ``table`` (:func:`fold_table`): mean +- sample std (ddof 1) of the folds' balanced accuracy,
    per-class mean recall (NaN where no fold has the class), pool sizes, minutes; then ``tail``."""
    scores = table["bal_acc"].to_numpy(float)
    recall_mean = {c: float(np.nanmean(table[f"recall_{c}"])) if table[f"recall_{c}"].notna().any()
                   else float("nan") for c in classes}
    return {**head, "bal_acc_mean": float(scores.mean()), "bal_acc_std": float(scores.std(ddof=1)), "std_ddof": 1,
            "bal_acc_per_fold": [float(s) for s in scores], "best_epoch_per_fold": table["best_epoch"].tolist(),
            "recall_mean": recall_mean, "n_pool": int(table["n_val"].sum()),
            "lesions_pool": int(table["lesions_val"].sum()),
            "wall_minutes": round(sum(r.seconds for r in results) / 60, 2), **tail}


def fold_figure(table: pd.DataFrame, mean: float, std: float, title: str):
    fig, ax = plt.subplots(figsize=(max(4.5, 0.9 * len(table) + 2), 3.6))
    ax.bar(table["fold"].astype(str), table["bal_acc"], color="#4c72b0", width=0.6, label="fold")
    ax.axhspan(mean - std, mean + std, color="#dd8452", alpha=0.2, label=f"mean ± std ({std:.3f})")
    ax.axhline(mean, color="#dd8452", lw=2, label=f"mean {mean:.3f}")
    for x, y in enumerate(table["bal_acc"]):
        ax.text(x, y / 2, f"{y:.3f}", ha="center", va="center", fontsize=8, color="white")
    ax.set(xlabel="fold", ylabel="val balanced accuracy (best epoch)", title=title,
           ylim=(0, min(1.05, max(table["bal_acc"].max(), mean + std) * 1.15 + 0.02)))
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig
