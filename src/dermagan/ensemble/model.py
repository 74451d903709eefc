"""The weighted ensemble as an MLflow pyfunc model.

Logged as *models from code* (``pyfunc_code.py``): no pickled Python object. The member
classifiers travel as artifacts, one folder per member holding the train stage's ``model.pt``
(+ ``mlflow.json``), loaded with ``torch.load(weights_only=True)``; weights, member order,
classes and image size live in the pyfunc ``model_config`` (and ``classes``/``image_size`` also in
the MLmodel ``metadata``, where ``dermagan predict`` reads them).
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema, TensorSpec

from dermagan.ensemble.weights import combine
from dermagan.errors import DermaganError

CODE_FILE = Path(__file__).with_name("pyfunc_code.py")
CONFIG_KEYS = ("members", "weights", "classes", "image_size")


@torch.no_grad()
def member_probabilities(members: list[torch.nn.Module], images: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """Softmax probabilities of every member for float images (N, 3, H, W) in [0, 1]: (members, N, classes)."""
    tensor = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    out = []
    for member in members:
        member.eval()
        chunks = [torch.softmax(member(chunk).float(), dim=1) for chunk in tensor.split(batch_size)]
        out.append(torch.cat(chunks).numpy() if chunks else np.zeros((0, len(member.classes)), dtype=np.float32))
    return np.stack(out).astype(np.float64)


def check_images(images, image_size: int) -> np.ndarray:
    """The pyfunc input as a float32 array (N, 3, size, size) with values in [0, 1], or a clear error."""
    if isinstance(images, pd.DataFrame):
        raise DermaganError("ensemble model: pass the images as a numpy array (N, 3, H, W), not a DataFrame")
    array = np.asarray(images)
    expected = (3, image_size, image_size)
    if array.ndim != 4 or array.shape[1:] != expected:
        raise DermaganError(f"ensemble model: expected float images of shape (N, {expected[0]}, {expected[1]}, "
                            f"{expected[2]}), got {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise DermaganError(f"ensemble model: expected float images in [0, 1], got dtype {array.dtype} "
                            "(divide uint8 images by 255)")
    if array.size and (array.min() < 0 or array.max() > 1):
        raise DermaganError(f"ensemble model: image values must lie in [0, 1], got [{array.min():.3g}, "
                            f"{array.max():.3g}] (divide uint8 images by 255)")
    return array.astype(np.float32, copy=False)


class EnsembleModel(mlflow.pyfunc.PythonModel):
    """Σ_m w_m p_m(class | image) over trained classifier arms.

    ``predict`` takes float32 images (N, 3, image_size, image_size) in [0, 1] (what the torch
    classifiers take) and returns a DataFrame with one probability column per class.
    Construct with ``members``/``weights``/``classes``/``image_size`` to use it in-process, or
    empty (the pyfunc loader) and ``load_context`` reads them from the logged model.
    """

    def __init__(self, members: list[torch.nn.Module] | None = None, weights=None,
                 classes: tuple[str, ...] | None = None, image_size: int | None = None, batch_size: int = 128):
        self.members = list(members or [])
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float64)
        self.classes = None if classes is None else tuple(classes)
        self.image_size = None if image_size is None else int(image_size)
        self.batch_size = int(batch_size)

    def load_context(self, context) -> None:
        from dermagan.classify.artifact import load_trained

        config = dict(context.model_config or {})
        missing = [k for k in CONFIG_KEYS if k not in config]
        if missing:
            raise DermaganError(f"ensemble model: model_config lacks {missing}; was it logged by `dermagan ensemble`?")
        self.classes, self.image_size = tuple(config["classes"]), int(config["image_size"])
        self.weights = np.asarray(config["weights"], dtype=np.float64)
        self.batch_size = int(config.get("batch_size", self.batch_size))
        self.members = []
        for name in config["members"]:
            if name not in context.artifacts:
                raise DermaganError(f"ensemble model: member '{name}' has no artifact folder in the logged model")
            member, _ = load_trained(Path(context.artifacts[name]))
            if tuple(member.classes) != self.classes or int(member.image_size) != self.image_size:
                raise DermaganError(f"ensemble model: member '{name}' has classes {member.classes} at "
                                    f"{member.image_size} px; the ensemble expects {self.classes} at "
                                    f"{self.image_size} px")
            self.members.append(member.eval())
        if len(self.weights) != len(self.members):
            raise DermaganError(f"ensemble model: {len(self.weights)} weights for {len(self.members)} members")

    def predict(self, context, model_input: np.ndarray, params=None) -> pd.DataFrame:
        if not self.members:
            raise DermaganError("ensemble model: no members loaded")
        images = check_images(model_input, self.image_size)
        proba = combine(member_probabilities(self.members, images, self.batch_size), self.weights)
        return pd.DataFrame(proba, columns=list(self.classes))


def signature(classes: tuple[str, ...], image_size: int) -> ModelSignature:
    """Input: float32 tensor (-1, 3, size, size); output: one double column per class."""
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, image_size, image_size))]),
                          outputs=Schema([ColSpec("double", c) for c in classes]))


def requirements() -> list[str]:
    """Pinned pip requirements of the pyfunc (given explicitly: no slow requirement inference).

    Loading it also needs the ``dermagan`` package itself (its classifier definitions), which is not
    on PyPI: install this repository (``pip install -e .``) where the model is served.
    """
    from importlib.metadata import version

    return [f"{package}=={version(package)}" for package in ("mlflow", "torch", "timm", "numpy", "pandas")]


def log_ensemble(member_dirs: dict[str, Path], weights: np.ndarray, classes: tuple[str, ...], image_size: int,
                 registered_model: str | None, metadata: dict | None = None, batch_size: int = 128):
    """Log (and register, if ``registered_model``) the ensemble pyfunc in the active run; returns ModelInfo.

    ``member_dirs``: member name -> the train stage's model folder (model.pt + mlflow.json), in the
    order of ``weights``.
    """
    for name, folder in member_dirs.items():
        if not (Path(folder) / "model.pt").is_file():
            raise DermaganError(f"{Path(folder) / 'model.pt'}: member '{name}' not found; run the train stage first")
    config = {"members": list(member_dirs), "weights": [float(w) for w in weights], "classes": list(classes),
              "image_size": int(image_size), "batch_size": int(batch_size)}
    example = np.zeros((1, 3, image_size, image_size), dtype=np.float32)
    return mlflow.pyfunc.log_model(
        name="model", python_model=str(CODE_FILE), artifacts={k: str(v) for k, v in member_dirs.items()},
        model_config=config, signature=signature(classes, image_size), input_example=example,
        registered_model_name=registered_model, pip_requirements=requirements(),
        metadata={"classes": list(classes), "image_size": int(image_size), "kind": "ensemble", **(metadata or {})})
