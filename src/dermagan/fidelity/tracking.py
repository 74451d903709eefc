"""Add a fidelity report to the MLflow runs of the generators it scored (metrics and figures)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import mlflow
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from dermagan.evaluate.fidelity import FIDELITY_KEYS
from dermagan.fidelity.report import SETS
from dermagan.gan.generate import INDEX, read_generator_index
from dermagan.tracking.setup import configure


def mlflow_metrics(dx: str, metrics: dict, conditional: bool) -> dict[str, float]:
    """``fidelity/<metric>`` (one run per class) or ``fidelity/<class>/<metric>`` (one ``conditional``
    generator for every class); no NaNs."""
    infix = f"{dx}/" if conditional else ""
    flat = {f"{prefix}/{infix}{key}": metrics[name][key] for name, prefix in SETS.items()
            for key in (*FIDELITY_KEYS, "n_fake", "knn_k")}
    flat.update({f"{prefix}/{infix}{key}": value for name, prefix in SETS.items()
                 for key, value in metrics[f"domain_{name}"].items() if key.endswith("_domain") or
                 key.endswith("_domain_std")})
    for block in ("two_sample", "memorisation_domain"):
        flat.update({f"{block}/{infix}{key}": value for key, value in metrics[block].items()
                     if isinstance(value, (int, float)) and not isinstance(value, bool)})
    flat.update({f"fidelity/{infix}{key}": value for key, value in metrics.items()
                 if key.startswith("nearest_train_") or key in ("n_generated", "n_kept")})
    for name, prefix in (("dedup", "source_leakage"), ("generated", "source_leakage_generated")):
        flat.update({f"{prefix}/{infix}{key}": value for key, value in metrics.get("source_leakage", {}).get(
            name, {}).items() if isinstance(value, (int, float)) and not isinstance(value, bool)})
    return {k: float(v) for k, v in flat.items() if v is not None and math.isfinite(float(v))}


def log_to_gan_runs(gan_dir: Path, document: dict, figures: list[Path], conditional: bool, experiment: str) -> None:
    """Add the fidelity metrics and figures to the GAN run(s) in generators.json (MLflow ``experiment``);
    warn on unknown runs."""
    index = read_generator_index(gan_dir)
    configure(experiment)
    client = mlflow.MlflowClient()
    timestamp = int(time.time() * 1000)
    covered = {dx for entry in index.values() for dx in entry.get("classes", [])}
    for dx in sorted(set(document["classes"]) - covered):
        print(f"warning: no GAN run for class {dx} in {Path(gan_dir) / INDEX}; its fidelity is not logged")
    for name, entry in index.items():
        scored = [dx for dx in entry.get("classes", [name]) if dx in document["classes"]]
        if not scored:
            continue
        try:
            client.get_run(entry["run_id"])
        except MlflowException:
            print(f"warning: GAN run {entry['run_id']} ({name}) not found in {mlflow.get_tracking_uri()}; "
                  "fidelity not logged to MLflow for it")
            continue
        values = {k: v for dx in scored for k, v in mlflow_metrics(dx, document["classes"][dx], conditional).items()}
        values.update({f"cas/{k}": float(v) for k, v in document.get("cas", {}).items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))})
        client.log_batch(entry["run_id"], metrics=[Metric(k, v, timestamp, 0) for k, v in values.items()])
        for figure in figures:
            client.log_artifact(entry["run_id"], str(figure), "fidelity")
