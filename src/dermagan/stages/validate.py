"""The validate stage glue: thresholds from params, Great Expectations run, MLflow log."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow

from dermagan.atomic import atomic_dir
from dermagan.config import Config
from dermagan.data.prepared import check_classes
from dermagan.errors import DermaganError
from dermagan.outputs import is_own_dir
from dermagan.tracking.setup import configure, standard_tags
from dermagan.validation.runner import validate_prepared
from dermagan.validation.suites import Thresholds


def thresholds_from(cfg: Config) -> Thresholds:
    v = cfg.validation
    return Thresholds(image_size=cfg.prepare.image_size, min_pixel_std=v.min_pixel_std,
                      min_class_count=v.min_class_count, min_class_share=v.min_class_share,
                      max_class_share=v.max_class_share)


def run_validate(cfg: Config, prepared: Path, raw_dir: Path, out_dir: Path) -> None:
    """Validate the prepared dataset into ``out_dir``. On failure ``out_dir`` is left as it was, the
    outputs go to ``<out>-failed`` for inspection (not a pipeline output) and the stage raises with a
    short summary; on success an earlier ``<out>-failed`` folder (dermagan's own) is removed."""
    out_dir = Path(out_dir)
    failed_dir = out_dir.with_name(out_dir.name + "-failed")
    limits = cfg.validation
    check_classes(Path(prepared), cfg.classes)  # prepared for another label set: a clear error, not GX noise
    with atomic_dir(out_dir) as tmp:
        report = validate_prepared(Path(prepared), Path(raw_dir), thresholds_from(cfg), cfg.classes,
                                   tmp / "data_docs")
        report.docs_index = "data_docs/index.html"  # relative to summary.json, wherever the folder ends up
        (tmp / "summary.json").write_text(json.dumps(report.to_dict(), indent=2))
        (tmp / "summary.txt").write_text(report.summary_text() + "\n")
        report.class_balance.to_csv(tmp / "class_balance.csv", index=False, float_format="%.4f")
        log_to_mlflow(cfg.mlflow.experiment, report, tmp)
        print(f"class balance (thresholds: count >= {limits.min_class_count}, "
              f"{limits.min_class_share} <= share <= {limits.max_class_share} in every split):")
        print(report.class_balance.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        print(report.summary_text())
        if not report.success:  # keep the outputs beside the last good ones; out_dir stays as it was
            with atomic_dir(failed_dir) as tmp_failed:
                shutil.copytree(tmp, tmp_failed, dirs_exist_ok=True)
            raise DermaganError(f"data validation failed; Data Docs and summary in {failed_dir}/\n"
                                f"{report.summary_text()}")
    if failed_dir.is_dir() and not failed_dir.is_symlink() and is_own_dir(failed_dir):  # an earlier failure's outputs no longer apply
        shutil.rmtree(failed_dir)


def log_to_mlflow(experiment: str, report, folder: Path) -> None:
    configure(experiment)
    with mlflow.start_run(run_name="validate"):
        mlflow.set_tags(standard_tags("validate", dvc_stage="validate", success=report.success))
        mlflow.log_metric("validate/failed_expectations", len(report.failures))
        mlflow.log_artifacts(str(folder), "validation")
