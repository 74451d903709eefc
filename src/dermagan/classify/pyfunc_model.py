"""A trained classifier as an MLflow pyfunc that takes image files and stores no pickled object.

Logged as *models from code* (``pyfunc_code.py``) with one artifact, ``weights``: the train stage's
``model.pt`` (a state dict plus the architecture settings, read with ``torch.load(weights_only=True)``).
The MLmodel ``metadata`` says ``kind: classifier`` and carries the classes, the image size and the
input rules, so a loader can rebuild the network without running anything the model folder holds.

``predict`` takes a DataFrame with one string column ``image``: each cell a JPEG or PNG file,
base64-encoded (raw ``bytes`` cells are accepted too, for in-process use). Each image goes through
the training preprocessing (short side to the model's size, bicubic, centre crop), after the checks
``dermagan predict`` makes (size, aspect ratio, bit depth, decompression bombs). The answer is one
row per image: ``label`` (the most probable class) and ``prob_<class>`` for every class. A bad cell
is an ``MlflowException`` naming the row and the problem: over HTTP, a 400 whose ``message`` says it.
"""

from __future__ import annotations

import base64
import binascii
import io
import threading
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, Schema

from dermagan.classify import preprocess
from dermagan.classify.artifact import MODEL_FILE, model_payload
from dermagan.classify.inference import predict_proba

CODE_FILE = Path(__file__).with_name("pyfunc_code.py")
KIND = "classifier"
INPUT_COLUMN = "image"
WEIGHTS = "weights"
MAX_IMAGE_BYTES = 20 * 1024 * 1024  # one encoded image; larger cells are refused before decoding


def _refuse(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def decode_cell(value, row: int) -> bytes:
    """The image file bytes of one ``image`` cell (base64 text or raw bytes), or a clear refusal."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
    elif isinstance(value, str):
        if len(value) > MAX_IMAGE_BYTES * 4 // 3 + 4:
            raise _refuse(f"row {row}: image is over {MAX_IMAGE_BYTES // 2**20} MiB; send a smaller file")
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _refuse(f"row {row}: the '{INPUT_COLUMN}' cell is not base64-encoded image bytes ({exc})") from exc
    else:
        raise _refuse(f"row {row}: the '{INPUT_COLUMN}' cell is {type(value).__name__}, expected base64 text")
    if not data:
        raise _refuse(f"row {row}: the '{INPUT_COLUMN}' cell is empty")
    if len(data) > MAX_IMAGE_BYTES:
        raise _refuse(f"row {row}: image is over {MAX_IMAGE_BYTES // 2**20} MiB; send a smaller file")
    return data


class ClassifierModel(mlflow.pyfunc.PythonModel):
    """One trained classifier (``nn.Module`` from ``model.pt``) behind the pyfunc interface."""

    def __init__(self, model: torch.nn.Module | None = None, min_side: int | None = None,
                 max_aspect: float | None = None):
        self.model = model
        self.min_side = int(min_side or preprocess.PREPROCESSING_DEFAULTS["min_side"])
        self.max_aspect = float(max_aspect or preprocess.PREPROCESSING_DEFAULTS["max_aspect"])
        self._lock = threading.Lock()  # the server runs predict in threads

    def load_context(self, context) -> None:
        from dermagan.classify.artifact import load_weights_file

        config = dict(context.model_config or {})
        self.model = load_weights_file(Path(context.artifacts[WEIGHTS])).eval()
        self.min_side = int(config.get("min_side", self.min_side))
        self.max_aspect = float(config.get("max_aspect", self.max_aspect))

    def images(self, model_input) -> np.ndarray:
        """Decode and preprocess every row of ``model_input`` into uint8 (N, size, size, 3)."""
        if isinstance(model_input, pd.DataFrame):
            if INPUT_COLUMN not in model_input.columns:
                raise _refuse(f"input has no '{INPUT_COLUMN}' column (columns: {list(model_input.columns)}); send "
                              f"{{\"dataframe_split\": {{\"columns\": [\"{INPUT_COLUMN}\"], \"data\": [[BASE64]]}}}}")
            cells = model_input[INPUT_COLUMN].tolist()
        else:
            raise _refuse(f"input must be a table with an '{INPUT_COLUMN}' column, got {type(model_input).__name__}")
        if not cells:
            raise _refuse("input holds no images")
        size = int(self.model.image_size)
        arrays = []
        for row, cell in enumerate(cells):
            try:
                arrays.append(preprocess.load_image(io.BytesIO(decode_cell(cell, row)), size, self.min_side,
                                                    self.max_aspect))
            except preprocess.InputError as exc:
                raise _refuse(f"row {row}: {exc}") from exc
        return np.stack(arrays)

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        if self.model is None:
            raise _refuse("classifier model: no weights loaded")
        images = self.images(model_input)
        with self._lock:
            proba = predict_proba(self.model, images, 64, torch.device("cpu"))
        classes = list(self.model.classes)
        frame = pd.DataFrame(proba.astype(np.float64), columns=[f"prob_{c}" for c in classes])
        frame.insert(0, "label", [classes[i] for i in proba.argmax(1)])
        return frame


def signature(classes) -> ModelSignature:
    """Input: a string column ``image`` (base64 JPEG/PNG); output: ``label`` and one probability per class."""
    return ModelSignature(inputs=Schema([ColSpec("string", INPUT_COLUMN)]),
                          outputs=Schema([ColSpec("string", "label"),
                                          *[ColSpec("double", f"prob_{c}") for c in classes]]))


def requirements() -> list[str]:
    """Pinned pip requirements (explicit: no slow inference). Serving also needs this repository
    installed (``pip install -e .``): the network definitions are dermagan's, never the model folder's."""
    from importlib.metadata import version

    return [f"{package}=={version(package)}" for package in ("mlflow", "torch", "timm", "numpy", "pandas", "pillow")]


def log_classifier(model: torch.nn.Module, backbone: str, tta: str, image_size: int, registered_model: str | None,
                   min_side: int, max_aspect: float | None = None, metadata: dict | None = None):
    """Log (and register) the classifier pyfunc in the active run; returns MLflow's ModelInfo.

    The weights are written as ``model.pt`` (:func:`dermagan.classify.artifact.model_payload`) to a
    temporary folder and travel as the ``weights`` artifact.
    """
    import tempfile

    max_aspect = float(max_aspect or preprocess.PREPROCESSING_DEFAULTS["max_aspect"])
    classes = list(model.classes)
    with tempfile.TemporaryDirectory(prefix="dermagan-model-") as tmp:
        weights = Path(tmp) / MODEL_FILE
        torch.save(model_payload(model, backbone, tta, classes, image_size), weights)
        return mlflow.pyfunc.log_model(
            name="model", python_model=str(CODE_FILE), artifacts={WEIGHTS: str(weights)},
            model_config={"min_side": int(min_side), "max_aspect": max_aspect},
            signature=signature(classes), registered_model_name=registered_model, pip_requirements=requirements(),
            metadata={"kind": KIND, "classes": classes, "image_size": int(image_size), "backbone": backbone,
                      "tta": tta, "min_side": int(min_side), "max_aspect": max_aspect,
                      "input": f"base64 JPEG/PNG in column '{INPUT_COLUMN}'", **(metadata or {})})
