"""``dermagan export``: a registered classifier version -> ONNX fp32 + int8, checked, bundled, logged.

1. Resolve ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` to one version; load it without
   running anything its folder holds (:func:`load_for_export`; ensembles are refused).
2. Export the fp32 graph and check it against torch on the real **val** split (max |Δp|).
3. Quantise to int8, calibrated on a seeded sample of real **train** images.
4. Compare int8 with fp32 on the real **test** split (:func:`dermagan.export.quantize.compare_int8`).
5. Write the bundle folder (:mod:`dermagan.export.bundle`); before it is published, log the two
   ONNX files and ``parity.json`` to the version's run under ``onnx/`` and tag the version.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from torch import nn

from dermagan.config.layout import LAYOUT
from dermagan.data.prepared import SplitArrays, read_classes, read_split
from dermagan.errors import DermaganError
from dermagan.export.bundle import FP32_FILE, INT8_FILE, check_bundle_destination, preprocessing_spec, write_bundle
from dermagan.export.onnx import PARITY_TOLERANCE, export_onnx, file_facts, onnx_probabilities, parity, session
from dermagan.export.quantize import calibration_sample, compare_int8, cpu_kernels, quantize_int8, quantized_nodes

ARTIFACT_PATH = "onnx"
REPORT_FILE = "parity.json"
ENSEMBLE_REFUSAL = ("ensembles are not exported: an ensemble is several networks and a weighted average; export "
                    "each member version (models:/NAME/VERSION) and average their probabilities with the weights "
                    "in its MLmodel model_config")


def resolve_version(client, uri: str):
    """The ``ModelVersion`` of ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``; clear errors otherwise."""
    from mlflow.exceptions import MlflowException

    from dermagan.tracking.registry import registered_version

    body = uri.removeprefix("models:/") if uri.startswith("models:/") else None
    if not body or body.count("/") > 1 or ("@" in body and "/" in body):
        raise DermaganError(f"--model {uri}: export needs a registered version to log to and tag: "
                            "models:/NAME@ALIAS or models:/NAME/VERSION")
    name, _, number = body.partition("/")
    if "@" not in body and not number:
        raise DermaganError(f"--model {uri}: name a version or an alias (models:/{name}@champion, "
                            f"models:/{name}/3)")
    try:  # a model, alias or version that is not registered: an error saying what is (and `dermagan promote`)
        version = registered_version(client, uri)
        return version if version is not None else client.get_model_version(name, number)
    except MlflowException as exc:
        raise DermaganError(f"--model {uri}: no such registered version ({exc.message})") from exc


def load_for_export(uri: str, folder: Path) -> tuple[nn.Module, dict]:
    """The classifier at ``uri`` and its MLmodel ``metadata``; the one place that loads a model for export.

    The version's files are downloaded to ``folder`` and rebuilt by dermagan's own code
    (:func:`dermagan.classify.registry_load.load_model_folder`: weights only, nothing unpickled). An
    ensemble is refused, as is anything that is not a classifier ``nn.Module``.
    """
    import mlflow

    from dermagan.classify.registry_load import load_model_folder, read_mlmodel

    folder.mkdir(parents=True, exist_ok=True)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(folder)))
    except Exception as exc:  # noqa: BLE001 - MLflow raises many types for a bad URI or store
        raise DermaganError(f"--model {uri}: cannot download the model's files: {exc}") from exc
    mlmodel = read_mlmodel(local)
    metadata = mlmodel.get("metadata") or {}
    if metadata.get("kind") == "ensemble" or "members" in metadata:
        raise DermaganError(f"--model {uri}: is an ensemble; {ENSEMBLE_REFUSAL}")
    model = load_model_folder(local)
    if not isinstance(model, nn.Module):
        raise DermaganError(f"--model {uri}: not a classifier network ({type(model).__name__}); {ENSEMBLE_REFUSAL}")
    return model, metadata


def read_splits(prepared: Path, model: nn.Module) -> dict[str, SplitArrays]:
    """train, val and test of the prepared folder, refused unless built for the model's classes and size."""
    classes = read_classes(prepared)
    if tuple(classes) != tuple(model.classes):
        raise DermaganError(f"{prepared}: prepared for classes {list(classes)}, but the model predicts "
                            f"{list(model.classes)}; give the --prepared folder it was trained on")
    splits = {name: read_split(prepared, name) for name in ("train", "val", "test")}
    for name, split in splits.items():
        if split.images.shape[1:3] != (model.image_size, model.image_size) or not len(split):
            raise DermaganError(f"{prepared}/{name}.npz: {len(split)} images of {split.images.shape[1:3]} px, but "
                                f"the model takes {model.image_size} px; give the --prepared folder it was trained on")
    return splits


def model_card(client, version) -> str:
    """The version's model card (its description, else the run's ``model_card.md``), or a stub saying it is missing."""
    if (version.description or "").strip():
        return version.description
    if version.run_id:
        try:
            with tempfile.TemporaryDirectory() as tmp:
                return Path(client.download_artifacts(version.run_id, "model_card.md", tmp)).read_text()
        except Exception:  # noqa: BLE001 - no card logged (e.g. never evaluated)
            pass
    return (f"# Model card: {version.name} version {version.version}\n\nNo model card was recorded for this "
            "version (run `dermagan evaluate` for it). Research use only; not a medical device.\n")


def version_tags(report: dict) -> dict[str, str]:
    """The registry tags an export sets (sizes, checksums, parity, int8 figures)."""
    fp32, int8, cmp = report["onnx"], report["onnx_int8"], report["int8_vs_fp32"]
    low, high = cmp["bal_acc_delta_ci"]
    ci = "n/a" if low is None else f"[{low:+.4f}, {high:+.4f}]"
    return {"onnx_sha256": fp32["sha256"], "onnx_bytes": str(fp32["bytes"]),
            "onnx_int8_sha256": int8["sha256"], "onnx_int8_bytes": str(int8["bytes"]),
            "onnx_max_abs_dp": f"{report['parity']['max_abs_dp']:.3g}",
            "int8_top1_agreement": f"{cmp['top1_agreement']:.4f}",
            "int8_bma_delta": f"{cmp['bal_acc_delta']:+.4f}", "int8_bma_delta_ci": ci,
            "int8_verdict": cmp["verdict"]}


def log_export(client, version, folder: Path, report: dict) -> None:
    """ONNX files and ``parity.json`` to the version's run (artifact path ``onnx/``); tags on the version."""
    if not version.run_id:
        raise DermaganError(f"{version.name} v{version.version} has no MLflow run to log the ONNX files to")
    for name in (FP32_FILE, INT8_FILE, REPORT_FILE):
        client.log_artifact(version.run_id, str(folder / name), ARTIFACT_PATH)
    for key, value in version_tags(report).items():
        client.set_model_version_tag(version.name, version.version, key, value)


def run_export(model_uri: str, out: Path | None, prepared: Path, *, n_boot: int, level: float, seed: int,
               n_bins: int, min_count: int, calibration_count: int = 256, tolerance: float = PARITY_TOLERANCE,
               log: bool = True) -> dict:
    """Export, check, bundle and log one registered version (see the module doc); returns the report.

    ``out``: the bundle folder (None: ``bundles/NAME-vVERSION``). The fp32 graph must match torch
    within ``tolerance`` on val, or nothing is written. ``n_boot``/``level``/``seed``/``n_bins``/
    ``min_count``: params ``evaluate`` (bootstrap, CI, ECE bins, BMA's class floor); ``seed`` also
    draws the ``calibration_count`` train images.
    """
    import mlflow

    client = mlflow.MlflowClient()
    version = resolve_version(client, model_uri)
    out = Path(out) if out is not None else LAYOUT.bundle(version.name, version.version)
    check_bundle_destination(out)
    with tempfile.TemporaryDirectory(prefix="dermagan-export-") as tmp:
        work = Path(tmp)
        model, metadata = load_for_export(f"models:/{version.name}/{version.version}", work / "model")
        splits = read_splits(prepared, model)
        fp32, int8 = work / FP32_FILE, work / INT8_FILE
        onnx_info = export_onnx(model, fp32)
        checked = parity(model, fp32, splits["val"].images, tolerance=tolerance)
        if not checked["ok"]:
            raise DermaganError(f"the ONNX graph differs from the torch model by up to {checked['max_abs_dp']:.2e} "
                                f"in probability on val (tolerance {tolerance:g}); nothing exported")
        calibration = calibration_sample(splits["train"].images, calibration_count, seed)
        quant = quantize_int8(fp32, int8, calibration)
        test = splits["test"]
        p_fp32 = onnx_probabilities(session(fp32), test.images)
        p_int8 = onnx_probabilities(session(int8), test.images)
        report = {
            "source": {"registered_model": version.name, "version": str(version.version), "run_id": version.run_id,
                       "model_uri": model_uri},
            "onnx": onnx_info, "onnx_int8": {**quant, "path": INT8_FILE, **file_facts(int8)},
            "parity": {**checked, "split": "val"},
            "int8_vs_fp32": {**compare_int8(p_fp32, p_int8, test.labels, n_boot, level, seed, n_bins, min_count),
                             "split": "test", "calibration_split": "train"},
            "int8_nodes": quantized_nodes(int8), "cpu": cpu_kernels(),
        }
        preprocessing = preprocessing_spec(model.image_size, metadata.get("min_side"), metadata.get("max_aspect"))

        write_bundle(out, fp32, int8, model.classes, preprocessing, model_card(client, version),
                     {"source": report["source"], "export": {k: report[k] for k in ("parity", "int8_vs_fp32")}},
                     documents={REPORT_FILE: report},
                     before_publish=(lambda folder: log_export(client, version, folder, report)) if log else None)
    return {**report, "bundle": str(out)}


def summary(report: dict) -> str:
    """What ``dermagan export`` prints: the bundle, the files, parity and the int8 verdict."""
    src, par, cmp, nodes = report["source"], report["parity"], report["int8_vs_fp32"], report["int8_nodes"]
    low, high = cmp["bal_acc_delta_ci"]
    ci = "n/a" if low is None else f"[{low:+.4f}, {high:+.4f}]"
    lines = [f"exported {src['registered_model']} v{src['version']} to {report['bundle']}",
             f"  model.onnx {report['onnx']['bytes'] / 1e6:.2f} MB; model.int8.onnx {report['onnx_int8']['bytes'] / 1e6:.2f} MB "
             f"({nodes['n_quantized']} quantised compute nodes, {nodes['n_float_compute']} float)",
             f"  parity on {par['n_images']} val images: max |dp| {par['max_abs_dp']:.2e} (tolerance {par['tolerance']:g}), "
             f"top-1 agreement {par['top1_agreement']:.4f}",
             f"  int8 on {cmp['n_images']} test images: top-1 agreement {cmp['top1_agreement']:.4f} (target "
             f"{cmp['agreement_target']}), balanced accuracy {cmp['bal_acc']['int8']:.4f} vs {cmp['bal_acc']['fp32']:.4f} "
             f"(diff {cmp['bal_acc_delta']:+.4f} {ci}, {cmp['ci_level']:.0%} paired bootstrap): {cmp['verdict']}; "
             f"ECE {cmp['ece']['int8']:.4f} vs {cmp['ece']['fp32']:.4f}"]
    if not cmp["agreement_ok"]:
        lines.append(f"warning: int8 agrees with fp32 on only {cmp['top1_agreement']:.1%} of test images; prefer "
                     "model.onnx (predict.py without --int8)")
    return "\n".join(lines)
