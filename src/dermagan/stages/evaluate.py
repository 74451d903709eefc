"""The evaluate stage: one trained arm on the real-only test split."""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path

import mlflow
import pandas as pd
import torch
from mlflow.entities import Metric, RunTag
from mlflow.exceptions import MlflowException

from dermagan.atomic import atomic_dir, atomic_file
from dermagan.classify.inference import predict_proba
from dermagan.classify.models import NormalizedClassifier, create_classifier
from dermagan.data.prepared import read_split
from dermagan.device import pick_device
from dermagan.errors import DermaganError
from dermagan.evaluate.calibration import (
    ece_from_table,
    expected_calibration_error,
    reliability_figure,
    reliability_table,
    uncalibrated_proba,
)
from dermagan.evaluate.plots import confusion_figure, roc_figure, roc_points, roc_table, save
from dermagan.evaluate.report import evaluation_report, flat_metrics
from dermagan.params import section
from dermagan.tracking.setup import configure


def load_trained(model_dir: Path) -> tuple[NormalizedClassifier, dict]:
    """Rebuild the classifier saved by the train stage; also return its mlflow.json."""
    path = Path(model_dir) / "model.pt"
    if not path.is_file():
        raise DermaganError(f"{path}: trained model not found; run the train stage first")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if saved.get("kind") == "class_experts":  # backbone + frozen class-expert discriminators (dermagan.experts)
        from dermagan.experts import load_expert_classifier
        model = load_expert_classifier(saved, path)
    else:
        model = create_classifier(saved["backbone"], tuple(saved["classes"]), saved["image_size"],
                                  tta=saved.get("tta", "none"))
        model.load_state_dict(saved["state_dict"])
    info = json.loads((Path(model_dir) / "mlflow.json").read_text())
    return model, info


def run_evaluate(params: dict, arm: str, seed: int, prepared: Path, model_dir: Path, metrics_json: Path, plots_dir: Path,
                 predictions_csv: Path, roc_csv: Path, reliability_csv: Path | None = None) -> dict:
    """Score one (arm, seed) run on test, write the metrics file, figures and predictions; log to its MLflow run.

    Calibration: top-label ECE of the probabilities as served (after the model's temperature, if
    any), and when a temperature T != 1 was fitted also the ECE before it; ``reliability.png`` in
    ``plots_dir`` and, when ``reliability_csv`` is given, the non-empty bins as a CSV (a DVC plot).
    """
    cfg = section(params, "evaluate")
    model, info = load_trained(model_dir)
    test = read_split(prepared, "test")
    device = pick_device(section(params, "train", "device"))
    proba = predict_proba(model.to(device), test.images, int(cfg["batch_size"]), device)
    report = evaluation_report(test.labels, proba, model.classes, int(cfg["bootstrap_samples"]),
                               float(cfg["ci_level"]), int(cfg["seed"]))
    n_bins = int(section(params, "evaluate", "calibration_bins"))
    temperature = float(getattr(model, "temperature", torch.tensor(1.0)))
    reliability = reliability_table(test.labels, proba, n_bins)
    report["calibration"] = {
        "ece": _finite_or_none(ece_from_table(reliability)),
        "ece_uncalibrated": (_finite_or_none(expected_calibration_error(
            test.labels, uncalibrated_proba(proba, temperature), n_bins)) if temperature != 1.0 else None),
        "temperature": temperature, "n_bins": n_bins}
    document = {"arm": arm, "seed": int(seed), "model_version": info["version"], "test": report}
    title = f"{arm} (seed {seed})"
    points = roc_points(test.labels, proba, model.classes)
    aucs = {c: v["auc"] for c, v in report["per_class"].items()}
    predictions = pd.DataFrame({"image_id": test.image_ids, "actual": [model.classes[i] for i in test.labels],
                                "predicted": [model.classes[i] for i in proba.argmax(1)]})
    with (atomic_dir(Path(plots_dir)) as tmp, atomic_file(Path(metrics_json)) as tmp_json,
          atomic_file(Path(predictions_csv)) as tmp_predictions, atomic_file(Path(roc_csv)) as tmp_roc,
          atomic_file(Path(reliability_csv)) if reliability_csv is not None else contextlib.nullcontext() as tmp_rel):
        predictions.to_csv(tmp_predictions, index=False)
        roc_table(points).to_csv(tmp_roc, index=False, float_format="%.4f")
        if tmp_rel is not None:
            reliability.loc[reliability["count"] > 0, ["bin", "confidence", "accuracy", "count"]].to_csv(
                tmp_rel, index=False, float_format="%.4f")
        save(reliability_figure(reliability, f"{title}: test reliability (top label)", report["calibration"]["ece"]),
             tmp / "reliability.png")
        save(confusion_figure(test.labels, proba.argmax(1), model.classes, f"{title}: test confusion"), tmp / "confusion.png")
        save(roc_figure(points, aucs, f"{title}: test ROC (one-vs-rest)"), tmp / "roc.png")
        tmp_json.write_text(json.dumps(document, indent=2))
        _log_to_mlflow(params, info, report, tmp, {"roc_points.json": points, "predictions.json": predictions})
    return document


def _log_to_mlflow(params: dict, info: dict, report: dict, plots_dir: Path, tables: dict[str, pd.DataFrame]) -> None:
    """Add test metrics to the training run and tag the registered version with them."""
    configure(section(params, "mlflow", "experiment"))
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
    try:
        for key, value in tags.items():
            client.set_model_version_tag(info["registered_model"], info["version"], key, value)
    except MlflowException as exc:
        print(f"warning: could not tag {info['registered_model']} v{info['version']}: {exc}")


def _finite_or_none(value: float) -> float | None:
    """JSON-safe: NaN or infinity -> None."""
    return float(value) if math.isfinite(value) else None
