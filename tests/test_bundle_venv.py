"""The offline bundle in a fresh venv holding only onnxruntime, numpy and Pillow: same predictions as
`dermagan predict` on real images (generated ones where ../shared/data is absent).

Skips, printing the reason, only when pip cannot install the three packages (e.g. no package index).
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REAL_DATA, textured_image
from dermagan.classify.models import create_classifier
from dermagan.classify.pyfunc_model import log_classifier
from dermagan.cli import main
from dermagan.config.schema import HAM10000_CLASSES as CLASSES
from dermagan.errors import DermaganError
from dermagan.export.bundle import preprocessing_spec, write_bundle
from dermagan.export.onnx import export_onnx
from dermagan.export.quantize import quantize_int8
from dermagan.export.runtime_env import RUNTIME_PACKAGES, installed, make_runtime_venv, run_bundle

SIZE = 32
NAME = "bundle-venv-test"


def image_folder(folder: Path, count: int = 8) -> Path:
    folder.mkdir()
    real = sorted((REAL_DATA / "images").glob("*.jpg"))[:count] if (REAL_DATA / "images").is_dir() else []
    for path in real:
        shutil.copy(path, folder / path.name)
    rng = np.random.default_rng(3)
    for i in range(0 if real else count):
        Image.fromarray(textured_image(rng, 45, 60)).save(folder / f"img_{i}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_bundle_in_a_fresh_venv_matches_dermagan_predict(tracking: str, tmp_path: Path, capsys):
    try:
        python = make_runtime_venv(tmp_path / "venv")
    except DermaganError as exc:
        print(f"SKIP reason: {exc}")
        pytest.skip(f"the run-time packages cannot be installed here: {exc}")
    packages = set(installed(python))
    assert set(RUNTIME_PACKAGES) <= packages
    assert not packages & {"torch", "dermagan", "mlflow", "pandas", "timm"}, packages

    torch.manual_seed(0)
    model = create_classifier("simple_cnn", CLASSES, SIZE, tta="hflip").eval()
    model.temperature.fill_(1.3)
    mlflow.set_experiment("tests")  # not an experiment id an earlier test left active
    with mlflow.start_run():
        info = log_classifier(model, "simple_cnn", "hflip", SIZE, NAME, min_side=16)
    images = image_folder(tmp_path / "images")
    fp32, int8 = tmp_path / "m.onnx", tmp_path / "m.int8.onnx"
    export_onnx(model, fp32)
    rng = np.random.default_rng(0)
    quantize_int8(fp32, int8, np.stack([textured_image(rng, SIZE, SIZE) for _ in range(16)]))
    bundle = tmp_path / "bundle"
    write_bundle(bundle, fp32, int8, CLASSES, preprocessing_spec(SIZE, min_side=16), "# card\n")

    expected_csv = tmp_path / "dermagan.csv"
    assert main(["predict", str(images), "--model", f"models:/{NAME}/{info.registered_model_version}",
                 "--out", str(expected_csv)]) in (0, None)
    capsys.readouterr()
    run = run_bundle(python, bundle, images, tmp_path / "bundle.csv")
    assert run["returncode"] == 0, run["stderr"]
    assert "notes.txt" in run["stderr"]  # skipped entries are named, as dermagan predict names them
    expected, got = read_csv(expected_csv), read_csv(tmp_path / "bundle.csv")
    assert list(got[0]) == list(expected[0]) and len(got) == len(expected) > 0
    assert [r["image_id"] for r in got] == [r["image_id"] for r in expected]
    assert [r["pred_dx"] for r in got] == [r["pred_dx"] for r in expected]
    columns = [c for c in expected[0] if c.startswith("prob_")]
    diff = np.abs(np.array([[float(r[c]) for c in columns] for r in got])
                  - np.array([[float(r[c]) for c in columns] for r in expected]))
    assert diff.max() <= 1e-4, diff.max()
    assert run["peak_rss_mib"] and run["peak_rss_mib"] > 1

    one = run_bundle(python, bundle, next(images.glob("*.*g")), tmp_path / "one.csv", "--int8")
    assert one["returncode"] == 0 and len(read_csv(tmp_path / "one.csv")) == 1, one["stderr"]
