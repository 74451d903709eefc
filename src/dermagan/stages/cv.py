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

Resume (:mod:`dermagan.tuning.cv`): every finished fold is written to ``<checkpoints>/cv/<name>/``;
a restart with the same configuration skips finished folds. The report folder is written
atomically once all folds are done; then the resume files go.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import matplotlib.pyplot as plt
import mlflow

from dermagan.atomic import atomic_dir
from dermagan.config import Config
from dermagan.config.layout import LAYOUT
from dermagan.data.prepared import check_classes
from dermagan.data.trainset import OVERSAMPLE, parse_extra
from dermagan.device import pick_device
from dermagan.errors import DermaganError
from dermagan.serialize import json_safe
from dermagan.tracking.setup import configure, flatten, standard_tags
from dermagan.tuning.classifier import folds, kfold_scores
from dermagan.tuning.cv import (DATA, STATE, check_arm, cv_settings, fingerprint, fold_figure, fold_lesions,
                                fold_recorder, fold_table, fold_train_set, load_resume, log_report, plain_json,
                                run_exists, summarize, write_json)


def run_cv(cfg: Config, arm: str, prepared: Path, out_dir: Path | None = None, checkpoints: Path = Path("checkpoints"),
           n_folds: int | None = None, seed: int | None = None, max_folds: int | None = None) -> dict:
    """K-fold of one arm; returns the summary (``complete: false`` when ``max_folds`` stopped it early)."""
    started = time.perf_counter()
    if max_folds is not None and max_folds < 1:
        raise DermaganError(f"cv: --max-folds must be at least 1, got {max_folds}")
    arm_cfg = cfg.arm(arm)
    check_arm(arm, arm_cfg.extra, arm_cfg.experts is not None)
    recipe = cfg.recipe(arm)
    default_folds, default_seed = (cfg.cv.folds, cfg.cv.seed) if cfg.cv is not None else (None, None)
    n_folds, seed = cv_settings(n_folds, seed, default_folds, default_seed)
    name = LAYOUT.cv_name(arm, n_folds, seed, default_seed)
    out_dir = Path(out_dir) if out_dir else LAYOUT.cv_report(name)
    resume_dir, prepared = Path(checkpoints) / "cv" / name, Path(prepared)
    extra = parse_extra(arm_cfg.extra).label
    image_size, max_batches, classes = cfg.prepare.image_size, cfg.train.max_batches_per_epoch, cfg.classes
    gan, augment = cfg.gan.plain(), cfg.augment.plain()

    check_classes(prepared, classes)  # the folder's integer labels index params data.classes
    data = folds(prepared, "kfold", n_folds, seed)
    lesions = fold_lesions(prepared, data)
    config = plain_json({
        "arm": arm, "folds": n_folds, "seed": seed, "classes": list(classes), "recipe": recipe, "extra": extra,
        "oversample": {k: gan[k] for k in ("classes", "amount", "seed")} if extra == OVERSAMPLE else None,
        "augment": augment, "image_size": image_size, "max_batches_per_epoch": max_batches,
        "data": fingerprint(data)})
    finished, docs, parent_id = load_resume(resume_dir, config)
    if finished:
        print(f"[cv {name}] resuming: fold(s) {sorted(finished)} finished earlier ({resume_dir})")
    todo = [f for f in range(n_folds) if f not in finished]
    data_run = data[: todo[max_folds - 1] + 1] if max_folds is not None and len(todo) > max_folds else data

    experiment = cfg.mlflow.experiment
    configure(experiment)
    reuse = run_exists(parent_id)
    device = pick_device(cfg.train.device)
    with mlflow.start_run(run_id=parent_id if reuse else None, run_name=None if reuse else name) as parent:
        if not reuse:
            mlflow.set_tags(standard_tags("cv", arm=arm, folds=n_folds, seed=seed, extra=extra,
                                          backbone=recipe["backbone"], device=str(device),
                                          data="real train+val (lesion-grouped K-fold); test not read"))
            mlflow.log_params({**flatten(recipe, "recipe."), "arm.extra": extra, "folds": n_folds, "seed": seed,
                               "n_pool": sum(len(v) for _, v in data), "image_size": image_size,
                               "max_batches_per_epoch": max_batches})
        resume_dir.mkdir(parents=True, exist_ok=True)
        write_json(resume_dir / STATE, {"config": config, "parent_run_id": parent.info.run_id})
        results = kfold_scores(recipe, data_run, classes=classes, seed=seed, augment=augment,
                               image_size=image_size, device=device, max_batches_per_epoch=max_batches,
                               train_part=lambda f, train: fold_train_set(train, extra, gan, classes),
                               finished=finished,
                               on_fold=fold_recorder(name, arm, n_folds, lesions, docs, reuse, resume_dir),
                               checkpoint=lambda f: resume_dir / f"fold{f}.pt")
        if len(results) < n_folds:
            mlflow.set_tag("cv_state", f"partial: {len(results)} of {n_folds} folds")
            print(f"[cv {name}] stopped after {len(results)} of {n_folds} folds (--max-folds); run the same "
                  f"command again to continue from {resume_dir}")
            return {"arm": arm, "folds": n_folds, "seed": seed, "complete": False, "finished_folds": len(results),
                    "mlflow_run_id": parent.info.run_id}

        folds_csv = fold_table(results, lesions, classes)
        summary = summarize(folds_csv, results, classes,
                            {"arm": arm, "folds": n_folds, "seed": seed, "extra": extra, "complete": True},
                            {"this_run_minutes": round((time.perf_counter() - started) / 60, 2),
                             "resumed_folds": sorted(finished), "recipe": recipe, "data": DATA,
                             "mlflow_experiment": experiment, "mlflow_run_id": parent.info.run_id})
        mean, std = summary["bal_acc_mean"], summary["bal_acc_std"]
        fig = fold_figure(folds_csv, mean, std, f"{arm}: {n_folds}-fold lesion-grouped CV, "
                                                f"bal acc {mean:.3f} ± {std:.3f}")
        with atomic_dir(out_dir) as tmp:
            folds_csv.to_csv(tmp / "folds.csv", index=False)
            (tmp / "summary.json").write_text(json.dumps(json_safe(summary), indent=2, allow_nan=False))
            fig.savefig(tmp / "folds.png", dpi=110)
        log_report(summary, fig, out_dir / "folds.csv")
        plt.close(fig)
    shutil.rmtree(resume_dir, ignore_errors=True)
    print(f"[cv {name}] balanced accuracy {mean:.4f} ± {std:.4f} over {n_folds} folds "
          f"(per fold: {', '.join(f'{s:.4f}' for s in summary['bal_acc_per_fold'])}); report in {out_dir}")
    return summary
