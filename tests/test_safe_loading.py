"""Loading a logged classifier runs no code from the model folder (issue: registries are shared).

Each crafted folder carries a payload that would write a marker file if anything unpickled or
executed it; the loader must refuse with a clear message and leave no marker.
"""

from __future__ import annotations

import base64
import io
import os
import pickle
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from mlflow.exceptions import MlflowException
from PIL import Image

from conftest import textured_image
from dermagan.classify.inference import predict_proba
from dermagan.classify.models import create_classifier
from dermagan.classify.pyfunc_model import log_classifier
from dermagan.classify.registry_load import load_model_folder, load_registered
from dermagan.errors import DermaganError

CLASSES = ("a", "b", "c")
SIZE = 32
NAME = "safe-test-classifier"


class Payload:
    """Unpickling this writes ``marker`` (the classic pickle ``__reduce__`` exploit)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_classifier("simple_cnn", CLASSES, SIZE).eval()


@pytest.fixture
def logged(tracking: str, tmp_path: Path) -> tuple[str, torch.nn.Module]:
    model = tiny_model()
    mlflow.set_experiment("tests")  # not an experiment id an earlier test left active
    with mlflow.start_run():
        info = log_classifier(model, "simple_cnn", "none", SIZE, NAME, min_side=8)
    return f"models:/{NAME}/{info.registered_model_version}", model


def png_b64(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_the_crafted_payload_is_live(tmp_path: Path):
    """Guard for the tests below: plain unpickling of the payload does write the marker."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()


def test_registered_classifier_loads_as_the_same_network(logged):
    uri, model = logged
    loaded = load_registered(uri)
    images = np.random.default_rng(0).integers(0, 255, (4, SIZE, SIZE, 3), dtype=np.uint8)
    cpu = torch.device("cpu")
    assert np.array_equal(predict_proba(loaded, images, 4, cpu), predict_proba(model, images, 4, cpu))
    assert tuple(loaded.classes) == CLASSES and loaded.image_size == SIZE


def test_pickled_torch_model_is_refused_without_running_it(tmp_path: Path):
    folder, marker = tmp_path / "model", tmp_path / "ran"
    (folder / "data").mkdir(parents=True)
    torch.save(Payload(marker), folder / "data" / "model.pth")  # what mlflow.pytorch's pickle format holds
    (folder / "MLmodel").write_text(yaml.safe_dump({"flavors": {
        "pytorch": {"model_data": "data", "pytorch_version": str(torch.__version__), "serialization_format": "pickle"},
        "python_function": {"loader_module": "mlflow.pytorch", "data": "data"}}}))
    with pytest.raises(DermaganError, match="pickled"):
        load_model_folder(folder)
    assert not marker.exists()


def test_crafted_weights_in_a_classifier_folder_are_refused(logged, tmp_path: Path):
    uri, _ = logged
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp_path / "dl")))
    marker = tmp_path / "ran"
    weights = folder / "artifacts" / "model.pt"
    assert weights.is_file()
    torch.save({"state_dict": Payload(marker), "backbone": "simple_cnn", "classes": list(CLASSES),
                "image_size": SIZE}, weights)
    with pytest.raises(DermaganError, match="not a dermagan weights file"):
        load_model_folder(folder)
    assert not marker.exists()


def test_tampered_model_code_is_never_run(logged, tmp_path: Path):
    """A classifier folder whose python_model file was replaced: dermagan never executes it, and a
    tampered ensemble code file is refused before MLflow could run it."""
    uri, model = logged
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp_path / "dl")))
    marker = tmp_path / "ran"
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    code = folder / Path(mlmodel["flavors"]["python_function"]["model_code_path"]).name  # the folder's copy
    assert code.is_file() and code.resolve().is_relative_to(folder.resolve())
    code.write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    loaded = load_model_folder(folder)  # the network comes from model.pt and dermagan's own code
    assert isinstance(loaded, torch.nn.Module) and not marker.exists()
    mlmodel["metadata"]["kind"] = "ensemble"
    (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    with pytest.raises(DermaganError, match="differs from the pyfunc_code.py installed"):
        load_model_folder(folder)
    assert not marker.exists()


def test_unknown_pyfunc_is_refused(tmp_path: Path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "MLmodel").write_text(yaml.safe_dump({"flavors": {"python_function": {
        "loader_module": "mlflow.pyfunc.model", "python_model": "python_model.pkl"}}}))
    with pytest.raises(DermaganError, match="not a dermagan classifier"):
        load_model_folder(folder)
    shutil.rmtree(folder)
    folder.mkdir()
    with pytest.raises(DermaganError, match="no MLmodel"):
        load_model_folder(folder)


def test_pyfunc_takes_image_files_and_names_bad_rows(logged, monkeypatch: pytest.MonkeyPatch):
    """The served interface, in process: base64 PNG/JPEG cells in, label + probabilities out, and
    MLflow loads it with pickle deserialization switched off."""
    uri, model = logged
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    pyfunc = mlflow.pyfunc.load_model(uri)
    rng = np.random.default_rng(1)
    images = [textured_image(rng, SIZE, SIZE) for _ in range(3)]
    out = pyfunc.predict(pd.DataFrame({"image": [png_b64(im) for im in images]}))
    expected = predict_proba(model, np.stack(images), 8, torch.device("cpu"))
    assert list(out.columns) == ["label"] + [f"prob_{c}" for c in CLASSES]
    assert np.allclose(out[[f"prob_{c}" for c in CLASSES]].to_numpy(), expected, atol=1e-6)
    assert out["label"].tolist() == [CLASSES[i] for i in expected.argmax(1)]
    for cells, message in ((["bm90IGFuIGltYWdl"], "row 0"), (["%%%"], "not base64"), ([""], "empty"),
                           ([png_b64(images[0]), png_b64(np.zeros((2, 2, 3), np.uint8))], "row 1")):
        with pytest.raises(MlflowException, match=message):
            pyfunc.predict(pd.DataFrame({"image": cells}))
