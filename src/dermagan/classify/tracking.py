"""MLflow side of one (arm, seed) classifier run: its settings, the registered model, its test results.

The train stage logs the run's settings (:func:`log_train_settings`) and registers the model with
its tags (:func:`log_and_register`); the evaluate stage adds the test metrics to that same run and
tags the registered version with them (:func:`log_test_results`). Plain values in, no Config.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.entities import Metric, RunTag
from mlflow.exceptions import MlflowException

from dermagan.classify.pyfunc_model import log_classifier
from dermagan.evaluate.report import flat_metrics
from dermagan.tracking.setup import configure, flatten, standard_tags


def log_train_settings(run_name: str, arm: str, settings: dict, recipe: dict, train_config, extra: str,
                       image_size: int, tuned_keys, device, n_train: int, n_extra: int, n_val: int) -> None:
    """Tags and params of a new training run. ``settings``: the arm's block as written in params.yaml;
    ``extra``: its extra-images label; ``tuned_keys``: the dotted keys that came from tuned-params files."""
    tuned = sorted(set(tuned_keys) - set(settings))
    mlflow.set_tags(standard_tags("train", arm=arm, seed=train_config.seed, backbone=recipe["backbone"], extra=extra,
                                  dvc_stage=f"train@{run_name}", device=str(device),
                                  tuned_keys=",".join(tuned) or "none",
                                  data="real train" + (f" + {n_extra} extra ({extra})" if n_extra else " only")
                                  + "; real-only val"))
    mlflow.log_params({**flatten(asdict(train_config)), **flatten(recipe, "recipe."), **flatten(settings, "arm."),
                       "image_size": image_size, "n_train": n_train, "n_extra": n_extra, "n_val": n_val})


def log_and_register(model, registered_model: str, arm: str, seed: int, extra: str, recipe: dict, image_size: int,
                     best_val_bal_acc: float, best_epoch: int, min_side: int) -> dict:
    """Log the model as the pickle-free classifier pyfunc (:mod:`dermagan.classify.pyfunc_model`) and
    register it; tag the new version. Returns ``registered_model``, ``version`` and ``model_uri``."""
    info = log_classifier(model, recipe["backbone"], recipe["tta"], image_size, registered_model, min_side)
    version = str(info.registered_model_version)
    client = mlflow.MlflowClient()
    tags = {"arm": arm, "seed": seed, "extra": extra,
            "backbone": recipe["backbone"], "augment": recipe["augment"],
            "class_weight_power": recipe["class_weight_power"], "sampler": recipe["sampler"],
            "pretrained": recipe["pretrained"], "tta": recipe["tta"], "temperature": f"{float(model.temperature):.4f}",
            "image_size": image_size, "val_bal_acc": f"{best_val_bal_acc:.4f}", "best_epoch": best_epoch}
    for key, value in tags.items():
        client.set_model_version_tag(registered_model, version, key, str(value))
    return {"registered_model": registered_model, "version": version,
            "model_uri": f"models:/{registered_model}/{version}"}


def log_test_results(experiment: str, info: dict, report: dict, plots_dir: Path,
                     tables: dict[str, pd.DataFrame]) -> None:
    """Add test metrics, figures and tables to the training run ``info["run_id"]`` (a new run if that one is
    not in this tracking store) and tag the registered version ``info["version"]`` with them."""
    configure(experiment)
    client = mlflow.MlflowClient()
    run_id = info["run_id"]
    try:
        client.get_run(run_id)
    except MlflowException:
        print(f"warning: MLflow run {run_id} not found in {mlflow.get_tracking_uri()}; logging to a new run")
        with mlflow.start_run(run_name=f"evaluate-{info.get('version')}") as run:
            run_id = run.info.run_id
    # Logged through the client so the training run keeps its own start/end time and status.
    timestamp = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), timestamp, 0) for k, v in flat_metrics(report).items()],
                     tags=[RunTag("evaluated_on", "test (real-only, lesion-disjoint)")])
    client.log_artifacts(run_id, str(plots_dir), "test")
    for name, table in tables.items():
        mlflow.log_table(table, f"test/{name}", run_id=run_id)
    client = mlflow.MlflowClient()
    tags = {"test_bal_acc": f"{report['bal_acc']:.4f}",
            "test_bal_acc_ci": f"[{report['bal_acc_ci_low']:.4f}, {report['bal_acc_ci_high']:.4f}]",
            "test_macro_f1": f"{report['macro_f1']:.4f}",
            **{f"test_recall_{c}": f"{v['recall']:.4f}" for c, v in report["per_class"].items()}}
    if report.get("calibration", {}).get("ece") is not None:
        tags["test_ece"] = f"{report['calibration']['ece']:.4f}"
    for key in ("auc", "sensitivity", "specificity", "threshold"):  # binary tasks: test_auc, test_sensitivity...
        if (report.get("binary") or {}).get(key) is not None:
            tags[f"test_{key}"] = f"{report['binary'][key]:.4f}"
    try:
        for key, value in tags.items():
            client.set_model_version_tag(info["registered_model"], info["version"], key, value)
    except MlflowException as exc:
        print(f"warning: could not tag {info['registered_model']} v{info['version']}: {exc}")


def log_model_card(info: dict, document: dict, dataset: dict, split: str) -> str:
    """Render the version's model card (:mod:`dermagan.classify.model_card`) from its evaluate document
    and registry tags; log it as ``model_card.md`` to the run and make it the version's description."""
    from dermagan.classify.model_card import render_model_card

    client = mlflow.MlflowClient()
    name, version = info["registered_model"], info["version"]
    try:
        tags = client.get_model_version(name, version).tags
    except MlflowException as exc:
        print(f"warning: no model card for {name} v{version}: {exc}")
        return ""
    report = document["test"]
    model = {"registered_model": name, "version": version, "arm": info.get("arm", tags.get("arm", "?")),
             "extra": tags.get("extra"), "backbone": tags.get("backbone", "?"), "tta": tags.get("tta", "none"),
             "image_size": tags.get("image_size", "?"), "classes": list(report["per_class"]),
             "run_id": info["run_id"]}
    card = render_model_card(document, model, dataset, split)
    client.log_text(info["run_id"], card, "model_card.md")
    client.update_model_version(name, version, description=card)
    return card
