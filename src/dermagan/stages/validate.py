"""The validate stage glue: thresholds from params, Great Expectations run, MLflow log."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow

from dermagan.atomic import atomic_dir
from dermagan.errors import DermaganError
from dermagan.params import section
from dermagan.tracking.setup import configure, standard_tags
from dermagan.validation.runner import validate_prepared
from dermagan.validation.suites import Thresholds


def thresholds_from(params: dict) -> Thresholds:
    cfg = section(params, "validate")
    return Thresholds(image_size=int(section(params, "prepare", "image_size")),
                      min_pixel_std=float(cfg["min_pixel_std"]), min_class_count=int(cfg["min_class_count"]),
                      min_class_share=float(cfg["min_class_share"]), max_class_share=float(cfg["max_class_share"]))


def run_validate(params: dict, prepared: Path, raw_dir: Path, out_dir: Path) -> None:
    """Validate the prepared dataset. On failure the outputs go to ``<out>-failed`` for inspection
    (not a pipeline output) and the stage raises with a short summary."""
    out_dir = Path(out_dir)
    failed_dir = out_dir.with_name(out_dir.name + "-failed")
    with atomic_dir(failed_dir) as tmp:
        report = validate_prepared(Path(prepared), Path(raw_dir), thresholds_from(params), tmp / "data_docs")
        report.docs_index = "data_docs/index.html"  # relative to summary.json, wherever the folder ends up
        (tmp / "summary.json").write_text(json.dumps(report.to_dict(), indent=2))
        (tmp / "summary.txt").write_text(report.summary_text() + "\n")
        report.class_balance.to_csv(tmp / "class_balance.csv", index=False, float_format="%.4f")
        _log_to_mlflow(params, report, tmp)
    cfg = section(params, "validate")
    print(f"class balance (thresholds: count >= {cfg['min_class_count']}, "
          f"{cfg['min_class_share']} <= share <= {cfg['max_class_share']} in every split):")
    print(report.class_balance.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(report.summary_text())
    if not report.success:
        raise DermaganError(f"data validation failed; Data Docs and summary in {failed_dir}/\n{report.summary_text()}")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    failed_dir.rename(out_dir)


def _log_to_mlflow(params: dict, report, folder: Path) -> None:
    configure(section(params, "mlflow", "experiment"))
    with mlflow.start_run(run_name="validate"):
        mlflow.set_tags(standard_tags("validate", dvc_stage="validate", success=report.success))
        mlflow.log_metric("validate/failed_expectations", len(report.failures))
        mlflow.log_artifacts(str(folder), "validation")
