"""The evaluate stage: one trained arm on the real-only test split (and, for a binary task, its val split),
and on every external test set beside it."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import mlflow
import torch
from mlflow.entities import Metric, RunTag
from mlflow.exceptions import MlflowException

from dermagan.atomic import atomic_dir, atomic_file
from dermagan.classify.artifact import load_trained
from dermagan.classify.inference import predict_proba
from dermagan.classify.tracking import log_model_card, log_test_results
from dermagan.config import Config
from dermagan.data.splits import split_description
from dermagan.data.prepared import read_split
from dermagan.device import pick_device
from dermagan.errors import DermaganError
from dermagan.evaluate.calibration import reliability_figure
from dermagan.evaluate.external import (EXTERNAL, external_set_names, load_sets, mlflow_external_metrics,
                                        predictions_file)
from dermagan.evaluate.plots import confusion_figure, roc_figure, roc_points, roc_table, save
from dermagan.evaluate.report import (binary_report, calibration_report, evaluation_report, predictions_frame,
                                      reliability_rows)
from dermagan.tracking.datasets import dataset_input, dataset_name, log_datasets
from dermagan.tracking.setup import configure


def run_evaluate(cfg: Config, arm: str, seed: int, prepared: Path, model_dir: Path, metrics_json: Path,
                 plots_dir: Path, predictions_csv: Path, roc_csv: Path, reliability_csv: Path | None = None,
                 external_dir: Path | None = None) -> dict:
    """Score one (arm, seed) run on test, write the metrics file, figures and predictions; log to its MLflow run.

    Balanced accuracy leaves out classes with fewer than ``evaluate.min_test_count`` test images
    (``test.bma_excluded`` lists them). Calibration: top-label ECE of the probabilities as served
    (after the model's temperature, if any), and when a temperature T != 1 was fitted also the ECE
    before it; ``reliability.png`` in ``plots_dir`` and, when ``reliability_csv`` is given, the
    non-empty bins as a CSV (a DVC plot). A binary task (``data.positive``) also predicts val, to
    set the threshold of sensitivity at ``evaluate.specificity`` there (``test.binary``), and writes
    P(positive) to the predictions CSV; its ROC CSV and figure hold only the positive class.

    ``external_dir`` (``prepare-external``'s folder): every external test set in it (exactly params
    ``evaluate.external``'s) is scored by the same model the same way (binary tasks: with the same val
    threshold) into ``external.NAME`` of the metrics file (the structure of ``test``), its predictions
    into ``plots_dir/external/NAME.csv`` and its metrics into the MLflow run as ``external/NAME/...``.
    Without sets (or without ``external_dir``) nothing of this is written.

    The run's MLflow dataset inputs gain the test split (context ``test``), a binary task's val split
    (``validation``) and each external set (``external``): see :mod:`dermagan.tracking.datasets`.
    """
    settings, positive = cfg.evaluate, cfg.data.positive
    model, info = load_trained(model_dir)
    classes = tuple(model.classes)
    if positive is not None and positive not in classes:
        raise DermaganError(f"{model_dir}: the model's classes {list(classes)} lack data.positive = {positive!r}; "
                            f"re-run `dvc repro train@{arm}-{seed}`")
    test = read_split(prepared, "test")
    names = external_set_names(external_dir, settings.external, classes)
    device = pick_device(cfg.train.device)
    model = model.to(device)
    proba = predict_proba(model, test.images, settings.batch_size, device)
    val = read_split(prepared, "val") if positive is not None else None
    val_proba = predict_proba(model, val.images, settings.batch_size, device) if val is not None else None
    temperature = float(getattr(model, "temperature", torch.tensor(1.0)))
    report, reliability = _split_report(cfg, test.labels, proba, classes, temperature, val, val_proba)
    label = cfg.data.dataset.name  # the MLflow dataset inputs: test, val when it set a threshold, external sets
    inputs = [dataset_input(dataset_name(label, "test"), test, classes, f"{prepared}/test.npz", "test")]
    if val is not None:
        inputs.append(dataset_input(dataset_name(label, "val"), val, classes, f"{prepared}/val.npz", "validation"))
    external, external_predictions = {}, {}
    for name, arrays in load_sets(external_dir, names).items():
        inputs.append(dataset_input(name, arrays, classes, f"{external_dir}/{name}.npz", "external"))
        external_proba = predict_proba(model, arrays.images, settings.batch_size, device)
        external[name] = _split_report(cfg, arrays.labels, external_proba, classes, temperature, val, val_proba)[0]
        external_predictions[name] = predictions_frame(arrays.image_ids, arrays.labels, external_proba, classes,
                                                       positive)
    document = {"arm": arm, "seed": int(seed), "model_version": info["version"], "test": report}
    if external:
        document["external"] = external
    title = f"{arm} (seed {seed})"
    points = roc_points(test.labels, proba, classes)
    if positive is not None:
        points = points[points["class"] == positive].reset_index(drop=True)
    aucs = {c: v["auc"] for c, v in report["per_class"].items()}
    predictions = predictions_frame(test.image_ids, test.labels, proba, classes, positive)
    with (atomic_dir(Path(plots_dir)) as tmp, atomic_file(Path(metrics_json)) as tmp_json,
          atomic_file(Path(predictions_csv)) as tmp_predictions, atomic_file(Path(roc_csv)) as tmp_roc,
          atomic_file(Path(reliability_csv)) if reliability_csv is not None else contextlib.nullcontext() as tmp_rel):
        predictions.to_csv(tmp_predictions, index=False)
        roc_table(points).to_csv(tmp_roc, index=False, float_format="%.4f")
        if tmp_rel is not None:
            reliability_rows(reliability).to_csv(tmp_rel, index=False, float_format="%.4f")
        save(reliability_figure(reliability, f"{title}: test reliability (top label)", report["calibration"]["ece"]),
             tmp / "reliability.png")
        save(confusion_figure(test.labels, proba.argmax(1), classes, f"{title}: test confusion"),
             tmp / "confusion.png")
        kind = f"positive class {positive}" if positive is not None else "one-vs-rest"
        save(roc_figure(points, aucs, f"{title}: test ROC ({kind})"), tmp / "roc.png")
        tmp_json.write_text(json.dumps(document, indent=2))
        # The run to log into, made first if missing, so that test, external sets and the card share it.
        info = {**info, "run_id": tracked_run_id(cfg.mlflow.experiment, info)}
        log_datasets(inputs, info["run_id"])
        log_test_results(cfg.mlflow.experiment, info, report, tmp,
                         {"roc_points.json": points, "predictions.json": predictions})
        for name, frame in external_predictions.items():  # after log_test_results: not under its test/ artifacts
            path = predictions_file(tmp, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            frame.to_csv(path, index=False)
        if external:
            log_external_results(info["run_id"], external, tmp / EXTERNAL)
        log_model_card(info, document,
                       cfg.data.dataset.model_dump(), split_description(
            cfg.prepare.split.by, cfg.prepare.split.test_sources, cfg.prepare.val_fraction, cfg.prepare.test_fraction,
            cfg.prepare.seed, cfg.prepare.max_lesions_per_class))
    return document


def _split_report(cfg: Config, labels, proba, classes: tuple[str, ...], temperature: float, val, val_proba
                  ) -> tuple[dict, object]:
    """The metrics document's block of one scored split (test, or an external set) and its reliability table:
    the evaluation report, a binary task's ``binary`` block (threshold set on val), ``calibration``."""
    settings, positive = cfg.evaluate, cfg.data.positive
    report = evaluation_report(labels, proba, classes, settings.bootstrap_samples, settings.ci_level,
                               settings.seed, settings.min_test_count)
    if positive is not None:
        report["binary"] = binary_report(labels, proba, val.labels, val_proba, classes, positive,
                                         settings.specificity, settings.bootstrap_samples, settings.ci_level,
                                         settings.seed)
    report["calibration"], reliability = calibration_report(labels, proba, temperature, settings.calibration_bins)
    return report, reliability


def tracked_run_id(experiment: str, info: dict) -> str:
    """The training run ``info["run_id"]``, or (not in this tracking store) a new run, as log_test_results does."""
    configure(experiment)
    try:
        mlflow.MlflowClient().get_run(info["run_id"])
        return info["run_id"]
    except MlflowException:
        print(f"warning: MLflow run {info['run_id']} not found in {mlflow.get_tracking_uri()}; logging to a new run")
        with mlflow.start_run(run_name=f"evaluate-{info.get('version')}") as run:
            return run.info.run_id


def log_external_results(run_id: str, external: dict[str, dict], folder: Path) -> None:
    """``external/NAME/bal_acc``... metrics and the per-set predictions (artifacts ``external/``) of the run."""
    client, timestamp = mlflow.MlflowClient(), int(time.time() * 1000)
    metrics = [Metric(key, float(value), timestamp, 0) for name, report in external.items()
               for key, value in mlflow_external_metrics(name, report).items()]
    client.log_batch(run_id, metrics=metrics, tags=[RunTag("evaluated_on_external", ",".join(external))])
    client.log_artifacts(run_id, str(folder), EXTERNAL)
