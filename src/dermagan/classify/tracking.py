"""MLflow side of one (arm, seed) classifier run: its settings, the registered model, its test results.

The train stage logs the run's settings (:func:`log_train_settings`) and registers the model with
its tags (:func:`log_and_register`); the evaluate stage adds the test metrics to that same run and
tags the registered version with them (:func:`log_test_results`). Plain values in, no Config.

The version keeps only what a reader of the registry needs (:data:`VERSION_TAGS`, plus ``test_bal_acc``
and ``test_bal_acc_ci`` from evaluate, and what export and promote add); the recipe (backbone, augment,
sampler, tta...) is the run's params, the fitted temperature a run tag, the best epoch and every other test
figure (recall per class, macro F1, ECE, binary AUC...) the run's metrics (``best/epoch``, ``test/...``).
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
from dermagan.errors import DermaganError
from dermagan.evaluate.report import flat_metrics
from dermagan.tracking.setup import configure, flatten, standard_tags


VERSION_TAGS = ("arm", "seed", "trained_on", "val_bal_acc")  # set at training; evaluate adds test_bal_acc(_ci)


def trained_on(extra: str, n_extra: int) -> str:
    """``real train + 1000 extra (stgan/dedup)``, or ``real train only``."""
    return "real train" + (f" + {n_extra} extra ({extra})" if n_extra else " only")


def log_train_settings(run_name: str, arm: str, settings: dict, recipe: dict, train_config, extra: str,
                       image_size: int, tuned_keys, device, n_train: int, n_extra: int, n_val: int) -> None:
    """Tags and params of a new training run. ``settings``: the arm's block as written in params.yaml;
    ``extra``: its extra-images label; ``tuned_keys``: the dotted keys that came from tuned-params files."""
    tuned = sorted(set(tuned_keys) - set(settings))
    mlflow.set_tags(standard_tags("train", arm=arm, seed=train_config.seed, backbone=recipe["backbone"], extra=extra,
                                  dvc_stage=f"train@{run_name}", device=str(device),
                                  tuned_keys=",".join(tuned) or "none",
                                  data=trained_on(extra, n_extra) + "; real-only val"))
    mlflow.log_params({**flatten(asdict(train_config)), **flatten(recipe, "recipe."), **flatten(settings, "arm."),
                       "image_size": image_size, "n_train": n_train, "n_extra": n_extra, "n_val": n_val})


def log_and_register(model, registered_model: str, arm: str, seed: int, extra: str, n_extra: int, recipe: dict,
                     image_size: int, best_val_bal_acc: float, min_side: int) -> dict:
    """Log the model as the pickle-free classifier pyfunc (:mod:`dermagan.classify.pyfunc_model`) and
    register it, in the active run; tag the new version with :data:`VERSION_TAGS` and the run with the
    fitted ``temperature``. Returns ``registered_model``, ``version`` and ``model_uri``."""
    mlflow.set_tag("temperature", f"{float(model.temperature):.4f}")
    info = log_classifier(model, recipe["backbone"], recipe["tta"], image_size, registered_model, min_side)
    version = str(info.registered_model_version)
    client = mlflow.MlflowClient()
    tags = {"arm": arm, "seed": seed, "trained_on": trained_on(extra, n_extra),
            "val_bal_acc": f"{best_val_bal_acc:.4f}"}
    for key, value in tags.items():
        client.set_model_version_tag(registered_model, version, key, str(value))
    return {"registered_model": registered_model, "version": version,
            "model_uri": f"models:/{registered_model}/{version}"}


def log_test_results(experiment: str, info: dict, report: dict, plots_dir: Path,
                     tables: dict[str, pd.DataFrame]) -> None:
    """Add test metrics, figures and tables to the training run ``info["run_id"]`` (a new run if that one is
    not in this tracking store) and tag the registered version ``info["version"]`` with the test balanced
    accuracy and its CI (the rest stays on the run, as ``test/...`` metrics)."""
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
    tags = {"test_bal_acc": f"{report['bal_acc']:.4f}",
            "test_bal_acc_ci": f"[{report['bal_acc_ci_low']:.4f}, {report['bal_acc_ci_high']:.4f}]"}
    try:
        for key, value in tags.items():
            client.set_model_version_tag(info["registered_model"], info["version"], key, value)
    except MlflowException as exc:
        print(f"warning: could not tag {info['registered_model']} v{info['version']}: {exc}")


def log_model_card(info: dict, document: dict, dataset: dict, split: str) -> str:
    """Render the version's model card (:mod:`dermagan.classify.model_card`) from its evaluate document;
    log it as ``model_card.md`` to the run and make it the version's description.

    What the model is comes from the version itself: backbone, TTA and image size from its MLmodel
    metadata (:func:`dermagan.classify.pyfunc_model.log_classifier` writes them), the extra images from the
    run's ``extra`` tag (else the version's ``trained_on``); versions registered before that kept them as
    version tags, which are read when the metadata lacks them."""
    from dermagan.classify.model_card import render_model_card

    client = mlflow.MlflowClient()
    name, version = info["registered_model"], info["version"]
    try:
        tags = client.get_model_version(name, version).tags
        facts = {**tags, **registered_metadata(name, version)}
        run_tags = client.get_run(info["run_id"]).data.tags
    except (MlflowException, DermaganError) as exc:
        print(f"warning: no model card for {name} v{version}: {exc}")
        return ""
    report = document["test"]
    model = {"registered_model": name, "version": version, "arm": info.get("arm", tags.get("arm", "?")),
             "extra": run_tags.get("extra") or tags.get("extra") or tags.get("trained_on"),
             "backbone": facts.get("backbone", "?"), "tta": facts.get("tta", "none"),
             "image_size": facts.get("image_size", "?"), "classes": list(report["per_class"]),
             "run_id": info["run_id"]}
    card = render_model_card(document, model, dataset, split)
    client.log_text(info["run_id"], card, "model_card.md")
    client.update_model_version(name, version, description=card)
    return card


def registered_metadata(name: str, version: str) -> dict:
    """The MLmodel ``metadata`` of a registered version (only its MLmodel file is read): backbone, tta,
    image_size, classes... for a classifier pyfunc; empty for a flavour without it."""
    try:
        return dict(mlflow.models.get_model_info(f"models:/{name}/{version}").metadata or {})
    except (MlflowException, OSError) as exc:
        raise DermaganError(f"{name} v{version}: cannot read its MLmodel file: {exc}") from exc
