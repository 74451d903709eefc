"""Shared fixtures: tiny HAM10000-layout datasets made on the fly, and the real data location."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dermagan.config.schema import HAM10000_CLASSES as CLASSES

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO.parent / "shared" / "data" / "ham10000"


def textured_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A never-constant RGB uint8 image: a colour gradient plus noise."""
    ramp = np.linspace(0, 120, width)[None, :, None]
    return np.clip(ramp + rng.integers(0, 120, (height, width, 3)), 0, 255).astype(np.uint8)


def make_ham_folder(root: Path, per_class: int = 12, seed: int = 0, size=(48, 36)) -> Path:
    """Write a HAM10000-layout folder (metadata.csv + images/) with ``per_class`` images per class.

    Every second lesion has two images, so lesion grouping matters.
    """
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for dx in CLASSES:
        for k in range(per_class):
            image_id = f"ISIC_{len(rows):07d}"
            lesion = f"HAM_{dx}_{k // 2 if k % 4 < 2 else k}"
            rows.append({"lesion_id": lesion, "image_id": image_id, "dx": dx, "dx_type": "histo",
                         "age": float(rng.integers(20, 80)), "sex": "female", "localization": "back"})
            Image.fromarray(textured_image(rng, size[1], size[0])).save(root / "images" / f"{image_id}.jpg", quality=92)
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root


@pytest.fixture
def ham_folder(tmp_path: Path) -> Path:
    return make_ham_folder(tmp_path / "raw")


@pytest.fixture
def real_data() -> Path:
    if not (REAL_DATA / "metadata.csv").is_file():
        pytest.skip(f"real HAM10000 data not found at {REAL_DATA} (see shared/data/README.md)")
    return REAL_DATA


@pytest.fixture
def tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A throw-away sqlite MLflow store; the working directory moves to tmp_path for artifacts."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    import mlflow  # an earlier test (or `dermagan` main) may have set another store process-wide

    mlflow.set_tracking_uri(uri)  # lazy: the database is made only when something is logged
    # ... and may have left its experiment active: runs would go to an experiment id this store lacks
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
    for name in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):  # mlflow.set_experiment also sets these
        monkeypatch.delenv(name, raising=False)
    return uri


def oversize_jpeg(path: Path, width: int = 20000, height: int = 20000) -> Path:
    """A small valid JPEG whose header (SOF) claims ``width`` x ``height`` px.

    Pillow reads the size from the header on open, so this trips its decompression-bomb guard
    exactly like a real huge photo, without writing or decoding gigabytes.
    """
    buffer = io.BytesIO()
    Image.fromarray(textured_image(np.random.default_rng(0), 36, 48)).save(buffer, format="JPEG", quality=90)
    data = bytearray(buffer.getvalue())
    pos = 2  # after SOI; walk the marker segments to the frame header
    while data[pos + 1] not in (0xC0, 0xC1, 0xC2):
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
    data[pos + 5:pos + 7] = height.to_bytes(2, "big")
    data[pos + 7:pos + 9] = width.to_bytes(2, "big")
    path.write_bytes(bytes(data))
    return path


def params_file(folder: Path, **blocks: dict) -> Path:
    """``folder/params.yaml``: the project's params completed as ``params_util.full_params`` does (tuned
    values merged in, so no other file is needed), with ``blocks`` updating its blocks."""
    import yaml

    from params_util import full_params

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(full_params(blocks), sort_keys=False))
    return path
