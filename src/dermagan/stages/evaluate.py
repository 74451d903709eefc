"""The evaluate stage: one trained arm on the real-only test split (and, for a binary task, its val split)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch

from dermagan.atomic import atomic_dir, atomic_file
from dermagan.classify.artifact import load_trained
from dermagan.classify.inference import predict_proba
from dermagan.classify.tracking import log_test_results
from dermagan.config import Config
from dermagan.data.prepared import read_split
from dermagan.device import pick_device
from dermagan.errors import DermaganError
from dermagan.evaluate.calibration import reliability_figure
from dermagan.evaluate.plots import confusion_figure, roc_figure, roc_points, roc_table, save
from dermagan.evaluate.report import (binary_report, calibration_report, evaluation_report, predictions_frame,
                                      reliability_rows)


def run_evaluate(cfg: Config, arm: str, seed: int, prepared: Path, model_dir: Path, metrics_json: Path,
                 plots_dir: Path, predictions_csv: Path, roc_csv: Path, reliability_csv: Path | None = None) -> dict:
    """Score one (arm, seed) run on test, write the metrics file, figures and predictions; log to its MLflow run.

    Balanced accuracy leaves out classes with fewer than ``evaluate.min_test_count`` test images
    (``test.bma_excluded`` lists them). Calibration: top-label ECE of the probabilities as served
    (after the model's temperature, if any), and when a temperature T != 1 was fitted also the ECE
    before it; ``reliability.png`` in ``plots_dir`` and, when ``reliability_csv`` is given, the
    non-empty bins as a CSV (a DVC plot). A binary task (``data.positive``) also predicts val, to
    set the threshold of sensitivity at ``evaluate.specificity`` there (``test.binary``), and writes
    P(positive) to the predictions CSV; its ROC CSV and figure hold only the positive class.
    """
    settings, positive = cfg.evaluate, cfg.data.positive
    model, info = load_trained(model_dir)
    classes = tuple(model.classes)
    if positive is not None and positive not in classes:
        raise DermaganError(f"{model_dir}: the model's classes {list(classes)} lack data.positive = {positive!r}; "
                            f"re-run `dvc repro train@{arm}-{seed}`")
    test = read_split(prepared, "test")
    device = pick_device(cfg.train.device)
    model = model.to(device)
    proba = predict_proba(model, test.images, settings.batch_size, device)
    report = evaluation_report(test.labels, proba, classes, settings.bootstrap_samples, settings.ci_level,
                               settings.seed, settings.min_test_count)
    if positive is not None:
        val = read_split(prepared, "val")
        report["binary"] = binary_report(test.labels, proba, val.labels,
                                         predict_proba(model, val.images, settings.batch_size, device), classes,
                                         positive, settings.specificity, settings.bootstrap_samples,
                                         settings.ci_level, settings.seed)
    temperature = float(getattr(model, "temperature", torch.tensor(1.0)))
    report["calibration"], reliability = calibration_report(test.labels, proba, temperature,
                                                            settings.calibration_bins)
    document = {"arm": arm, "seed": int(seed), "model_version": info["version"], "test": report}
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
        log_test_results(cfg.mlflow.experiment, info, report, tmp,
                         {"roc_points.json": points, "predictions.json": predictions})
    return document
