"""``dermagan cv``: lesion-grouped K-fold evaluation of one arm on train + val (never test).

The arm's recipe (params.yaml ``train`` + the tuned file + the arm's overrides) is trained once
per fold of a StratifiedGroupKFold on ``lesion_id`` over the real train and val splits, with the
same fold loop the tuner's ``objective: kfold`` uses (:func:`dermagan.tuning.classifier.kfold_scores`).
Each fold reports its best validation balanced accuracy, best epoch and per-class recalls there;
the report gives them per fold and as mean +- std (sample std, ddof 1).

Extras: ``extra: null`` and ``extra: oversample`` (copies drawn per fold from that fold's training
part only, ``gan.classes`` x ``gan.amount``, seed ``gan.seed``, as validate_augmented does for the
train split). GAN extras and class experts are refused: they were trained on the whole train
split, which K-fold puts into validation folds.

Resume: every finished fold is written to ``<checkpoints>/cv/<name>/fold<f>.json`` (and a fold in
progress checkpoints every epoch); a restart with the same configuration skips finished folds.
The report folder is written atomically once all folds are done; then the resume files go.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow.entities import Metric  # noqa: E402

from dermagan.atomic import atomic_dir, atomic_file  # noqa: E402
from dermagan.constants import CLASSES  # noqa: E402
from dermagan.data.prepared import SplitArrays, read_split_table  # noqa: E402
from dermagan.data.trainset import OVERSAMPLE, ExtraImages, oversample, parse_extra, with_extras  # noqa: E402
from dermagan.device import pick_device  # noqa: E402
from dermagan.errors import DermaganError  # noqa: E402
from dermagan.params import section  # noqa: E402
from dermagan.stages.train import arm_recipe, arm_settings  # noqa: E402
from dermagan.tracking.setup import configure, flatten, standard_tags  # noqa: E402
from dermagan.tuning.classifier import FoldResult, folds, kfold_scores, lesions_of  # noqa: E402

STATE = "state.json"


def check_arm(arm: str, settings: dict) -> None:
    """Refuse arms whose extra images or experts saw the whole train split (the folds would leak)."""
    if settings.get("experts"):
        raise DermaganError(
            f"arm '{arm}' uses class experts (arms.{arm}.experts: frozen STGAN discriminators): they were trained "
            "on the whole train split, which K-fold puts into the validation folds, so every fold would be scored "
            "on images its experts were fitted to (a leak). `dermagan cv` supports arms with extra: null or "
            "extra: oversample and no experts.")
    source = parse_extra(settings.get("extra"))
    if source.kind == "synthetic":
        raise DermaganError(
            f"arm '{arm}' trains on GAN images (arms.{arm}.extra: {source.label}): its generators and "
            "discriminators were trained on the whole train split, which K-fold puts into the validation folds, "
            "so every fold would be scored on images the GAN learnt from (a leak). `dermagan cv` supports "
            "arms with extra: null or extra: oversample; evaluate GAN arms on the fixed val/test splits.")


def cv_settings(params: dict, n_folds: int | None, seed: int | None) -> tuple[int, int]:
    """K and the seed: the command line's, else params.yaml ``cv.folds`` / ``cv.seed``."""
    if n_folds is None:
        n_folds = section(params, "cv", "folds")
    if seed is None:
        seed = section(params, "cv", "seed")
    if int(n_folds) < 2:
        raise DermaganError(f"cv: K-fold needs at least 2 folds (--folds or params cv.folds), got {n_folds}")
    return int(n_folds), int(seed)


def run_name(params: dict, arm: str, n_folds: int, seed: int) -> str:
    """``<arm>-k<K>``, plus ``-s<seed>`` when the seed is not params.yaml's ``cv.seed``."""
    default = (params.get("cv") or {}).get("seed")
    return f"{arm}-k{n_folds}" + ("" if default is not None and int(default) == seed else f"-s{seed}")


def fold_train_set(params: dict, extra: str, fold: int, train: SplitArrays) -> SplitArrays:
    """A fold's training set: its real training part, plus oversampled copies drawn from it only."""
    if parse_extra(extra).kind != OVERSAMPLE:
        return train
    from dermagan.stages.validate_augmented import extra_targets

    index, labels = oversample(train, extra_targets(params, train), int(section(params, "gan", "seed")))
    sources = np.array([f"copy:{i}" for i in np.asarray(train.image_ids).astype(str)[index]])
    return with_extras(train, ExtraImages(train.images[index], labels, sources))


def fingerprint(data: list[tuple[SplitArrays, SplitArrays]]) -> str:
    """sha256 of every validation part (ids, labels, pixels): the pool and its fold assignment."""
    digest = hashlib.sha256()
    for _, val in data:
        for array in (np.asarray(val.image_ids).astype(str), val.labels, val.images):
            digest.update(np.ascontiguousarray(array).tobytes())
        digest.update(b"|")
    return digest.hexdigest()


def _plain(value):
    """JSON-safe: NaN -> None (recalls of a class absent from a fold), numpy scalars -> Python."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _write_json(path: Path, doc: dict) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(_plain(doc), indent=2, allow_nan=False))


def _read_fold(path: Path) -> tuple[FoldResult, dict]:
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
        _abandon(state.get("parent_run_id"))
        shutil.rmtree(folder)
        return {}, {}, None
    finished, docs = {}, {}
    for path in sorted(folder.glob("fold*.json")):
        result, doc = _read_fold(path)
        finished[result.fold], docs[result.fold] = result, doc
    return finished, docs, state.get("parent_run_id")


def _abandon(run_id: str | None) -> None:
    if not run_id:
        return
    client = mlflow.MlflowClient()
    try:
        client.set_tag(run_id, "cv_state", "abandoned (configuration changed)")
        client.set_terminated(run_id, "KILLED")
    except mlflow.exceptions.MlflowException:
        pass  # not in this tracking store


def _run_exists(run_id: str | None) -> bool:
    if not run_id:
        return False
    try:
        mlflow.MlflowClient().get_run(run_id)
        return True
    except mlflow.exceptions.MlflowException:
        return False


def _log_fold_run(name: str, arm: str, result: FoldResult, lesions_val: int) -> str:
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


def fold_table(results: list[FoldResult], lesions: list[int]) -> pd.DataFrame:
    rows = [{"fold": r.fold, "n_train": r.n_train, "n_extra": r.n_extra, "n_val": r.n_val, "lesions_val": n,
             "bal_acc": r.bal_acc, "best_epoch": r.best_epoch,
             **{f"recall_{c}": r.recalls[c] for c in CLASSES}, "minutes": round(r.seconds / 60, 3)}
            for r, n in zip(results, lesions)]
    return pd.DataFrame(rows)


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


def run_cv(params: dict, arm: str, prepared: Path, out_dir: Path | None = None, checkpoints: Path = Path("checkpoints"),
           n_folds: int | None = None, seed: int | None = None, max_folds: int | None = None) -> dict:
    """K-fold of one arm; returns the summary (``complete: false`` when ``max_folds`` stopped it early)."""
    started = time.perf_counter()
    if max_folds is not None and max_folds < 1:
        raise DermaganError(f"cv: --max-folds must be at least 1, got {max_folds}")
    settings = arm_settings(params, arm)
    check_arm(arm, settings)
    recipe = arm_recipe(params, arm)
    n_folds, seed = cv_settings(params, n_folds, seed)
    name = run_name(params, arm, n_folds, seed)
    out_dir = Path(out_dir) if out_dir else Path("reports/cv") / name
    resume_dir = Path(checkpoints) / "cv" / name
    prepared = Path(prepared)
    extra = parse_extra(settings.get("extra")).label
    image_size = int(section(params, "prepare", "image_size"))
    max_batches = section(params, "train").get("max_batches_per_epoch")

    data = folds(prepared, "kfold", n_folds, seed)
    table = read_split_table(prepared)
    lesions = []
    for f, (train, val) in enumerate(data):  # StratifiedGroupKFold guarantees it; a cheap check says so
        val_lesions = set(lesions_of(table, val, prepared))
        shared = set(lesions_of(table, train, prepared)) & val_lesions
        if shared:
            raise DermaganError(f"cv fold {f}: lesion(s) {sorted(shared)[:5]} are in both its train and val parts")
        lesions.append(len(val_lesions))

    gan = section(params, "gan") if extra == OVERSAMPLE else {}
    config = json.loads(json.dumps(_plain({
        "arm": arm, "folds": n_folds, "seed": seed, "recipe": recipe, "extra": extra,
        "oversample": {k: gan[k] for k in ("classes", "amount", "seed")} if gan else None,
        "augment": section(params, "augment"), "image_size": image_size, "max_batches_per_epoch": max_batches,
        "data": fingerprint(data)})))
    finished, docs, parent_id = load_resume(resume_dir, config)
    if finished:
        print(f"[cv {name}] resuming: fold(s) {sorted(finished)} finished earlier ({resume_dir})")

    todo = [f for f in range(n_folds) if f not in finished]
    if max_folds is not None and len(todo) > max_folds:
        data_run = data[: todo[max_folds - 1] + 1]
    else:
        data_run = data

    experiment = section(params, "mlflow", "experiment")
    configure(experiment)
    reuse = _run_exists(parent_id)
    device = pick_device(section(params, "train", "device"))
    with mlflow.start_run(run_id=parent_id if reuse else None, run_name=None if reuse else name) as parent:
        if not reuse:
            mlflow.set_tags(standard_tags("cv", arm=arm, folds=n_folds, seed=seed, extra=extra,
                                          backbone=recipe["backbone"], device=str(device),
                                          data="real train+val (lesion-grouped K-fold); test not read"))
            mlflow.log_params({**flatten(recipe, "recipe."), "arm.extra": extra, "folds": n_folds, "seed": seed,
                               "n_pool": sum(len(v) for _, v in data), "image_size": image_size,
                               "max_batches_per_epoch": max_batches})
        resume_dir.mkdir(parents=True, exist_ok=True)
        _write_json(resume_dir / STATE, {"config": config, "parent_run_id": parent.info.run_id})

        def on_fold(result: FoldResult, resumed: bool) -> None:
            f = result.fold
            run_id = docs.get(f, {}).get("run_id")
            if not (resumed and reuse and _run_exists(run_id)):
                run_id = _log_fold_run(name, arm, result, lesions[f])
                mlflow.log_metric("fold/bal_acc", result.bal_acc, step=f)
            if not resumed or run_id != docs[f].get("run_id"):
                _write_json(resume_dir / f"fold{f}.json", {**asdict(result), "lesions_val": lesions[f],
                                                          "run_id": run_id})
            how = "finished earlier" if resumed else f"{result.seconds / 60:.1f} min" + (
                f" (resumed from its checkpoint at epoch {result.resumed_epoch})" if result.resumed_epoch else "")
            print(f"[cv {name}] fold {f} ({f + 1} of {n_folds}): bal_acc {result.bal_acc:.4f} at epoch "
                  f"{result.best_epoch}; train {result.n_train}" + (f"+{result.n_extra}" if result.n_extra else "")
                  + f" / val {result.n_val} images ({lesions[f]} lesions); {how}", flush=True)

        results = kfold_scores(recipe, data_run, seed=seed, augment=section(params, "augment"), image_size=image_size,
                               device=device, max_batches_per_epoch=max_batches,
                               train_part=lambda f, train: fold_train_set(params, extra, f, train),
                               finished=finished, on_fold=on_fold, checkpoint=lambda f: resume_dir / f"fold{f}.pt")
        if len(results) < n_folds:
            mlflow.set_tag("cv_state", f"partial: {len(results)} of {n_folds} folds")
            print(f"[cv {name}] stopped after {len(results)} of {n_folds} folds (--max-folds); run the same "
                  f"command again to continue from {resume_dir}")
            return {"arm": arm, "folds": n_folds, "seed": seed, "complete": False, "finished_folds": len(results),
                    "mlflow_run_id": parent.info.run_id}

        folds_csv = fold_table(results, lesions)
        scores = folds_csv["bal_acc"].to_numpy(float)
        mean, std = float(scores.mean()), float(scores.std(ddof=1))
        recall_mean = {c: float(np.nanmean(folds_csv[f"recall_{c}"])) if folds_csv[f"recall_{c}"].notna().any()
                       else float("nan") for c in CLASSES}
        summary = {
            "arm": arm, "folds": n_folds, "seed": seed, "extra": extra, "complete": True,
            "bal_acc_mean": mean, "bal_acc_std": std, "std_ddof": 1,
            "bal_acc_per_fold": [float(s) for s in scores], "best_epoch_per_fold": folds_csv["best_epoch"].tolist(),
            "recall_mean": recall_mean, "n_pool": int(folds_csv["n_val"].sum()),
            "lesions_pool": int(folds_csv["lesions_val"].sum()),
            "wall_minutes": round(sum(r.seconds for r in results) / 60, 2),
            "this_run_minutes": round((time.perf_counter() - started) / 60, 2),
            "resumed_folds": sorted(finished), "recipe": recipe,
            "data": "real train+val, StratifiedGroupKFold on lesion_id; the test split is not read",
            "mlflow_experiment": experiment, "mlflow_run_id": parent.info.run_id,
        }
        fig = fold_figure(folds_csv, mean, std, f"{arm}: {n_folds}-fold lesion-grouped CV, "
                                                f"bal acc {mean:.3f} ± {std:.3f}")
        with atomic_dir(out_dir) as tmp:
            folds_csv.to_csv(tmp / "folds.csv", index=False)
            (tmp / "summary.json").write_text(json.dumps(_plain(summary), indent=2, allow_nan=False))
            fig.savefig(tmp / "folds.png", dpi=110)
        mlflow.log_metrics({"cv/bal_acc_mean": mean, "cv/bal_acc_std": std, "cv/wall_minutes": summary["wall_minutes"],
                            **{f"cv/recall_{c}_mean": v for c, v in recall_mean.items() if math.isfinite(v)}})
        mlflow.log_figure(fig, "figures/cv_folds.png")
        mlflow.log_dict(_plain(summary), "cv_summary.json")
        mlflow.log_artifact(str(out_dir / "folds.csv"))
        mlflow.set_tag("cv_state", "complete")
        plt.close(fig)
    shutil.rmtree(resume_dir, ignore_errors=True)
    print(f"[cv {name}] balanced accuracy {mean:.4f} ± {std:.4f} over {n_folds} folds "
          f"(per fold: {', '.join(f'{s:.4f}' for s in scores)}); report in {out_dir}")
    return summary
