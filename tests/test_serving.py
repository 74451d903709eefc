"""`mlflow models serve` of a registered classifier takes image files: the real server, on loopback.

The server is started as a user would (``mlflow models serve -m models:/NAME@champion
--env-manager local --host 127.0.0.1``) with pickle deserialization switched off; answers must equal
``dermagan predict``'s, bad requests get an error naming the problem, and the server keeps serving.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import REAL_DATA, oversize_jpeg, textured_image
from dermagan.classify.models import create_classifier
from dermagan.classify.predict import predict_folder
from dermagan.classify.pyfunc_model import log_classifier
from dermagan.classify.serving_bench import image_body, load_test, post, serve
from dermagan.config.schema import HAM10000_CLASSES as CLASSES

NAME = "serve-test-classifier"
SIZE = 32


def sample_images(folder: Path, count: int = 6) -> list[Path]:
    """Real HAM10000 JPEGs when ../shared/data is present, else generated ones."""
    folder.mkdir()
    real = sorted((REAL_DATA / "images").glob("*.jpg"))[:count] if (REAL_DATA / "images").is_dir() else []
    if real:
        return [Path(shutil.copy(p, folder / p.name)) for p in real]
    rng = np.random.default_rng(0)
    files = [folder / f"img_{i}.png" for i in range(count)]
    for f in files:
        Image.fromarray(textured_image(rng, 45, 60)).save(f)
    return files


@pytest.fixture
def server(tracking: str, tmp_path: Path):
    if shutil.which("uvicorn", path=str(Path(sys.executable).parent)) is None:
        pytest.skip(f"uvicorn is not installed beside {sys.executable}; mlflow models serve needs it")
    torch.manual_seed(0)
    model = create_classifier("simple_cnn", CLASSES, SIZE).eval()
    mlflow.set_experiment("tests")  # not an experiment id an earlier test left active
    with mlflow.start_run():
        info = log_classifier(model, "simple_cnn", "none", SIZE, NAME, min_side=16)
    mlflow.MlflowClient().set_registered_model_alias(NAME, "champion", info.registered_model_version)
    with serve(f"models:/{NAME}@champion", tmp_path / "serve.log", tracking) as port:
        yield port, model


def test_served_answers_equal_predict_and_bad_requests_are_named(server, tmp_path: Path):
    port, model = server
    files = sample_images(tmp_path / "images")
    status, answer = post(port, image_body(files))
    assert status == 200, answer
    served = pd.DataFrame(answer["predictions"])
    local, skipped = predict_folder(model, tmp_path / "images")
    assert not skipped and len(served) == len(files)
    columns = [f"prob_{c}" for c in CLASSES]
    np.testing.assert_allclose(served[columns].to_numpy(), local[columns].to_numpy(), atol=1e-6)
    assert served["label"].tolist() == local["pred_dx"].tolist()

    not_image = json.dumps({"dataframe_split": {"columns": ["image"],
                                                "data": [[base64.b64encode(b"hello, not a JPEG").decode()]]}})
    huge = oversize_jpeg(tmp_path / "huge.jpg", 20000, 20000)
    for body, words in ((not_image.encode(), "cannot decode"), (image_body([huge]), "too large"),
                        (b"", "")):
        status, answer = post(port, body)
        assert 400 <= status < 500, (status, answer)
        assert words.lower() in answer.get("message", "").lower(), answer
        assert "message" in answer and answer["message"]
    status, answer = post(port, image_body(files[:2]))  # still serving
    assert status == 200 and len(answer["predictions"]) == 2


def test_load_benchmark_counts_every_request(server):
    """The load harness itself: a bounded run against the real server, every request answered."""
    port, _ = server
    rng = np.random.default_rng(2)
    body = json.dumps({"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(
        _png(textured_image(rng, 40, 40))).decode()]]}}).encode()
    result = load_test(port, [body], clients=4, requests=24, time_limit_s=120)
    assert result["requests_sent"] == 24 and result["errors"] == 0
    assert 0 < result["p50_ms"] <= result["p95_ms"] <= result["max_ms"]


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()
