"""``dermagan predict`` for any registered classifier version: a pytorch model or the ensemble pyfunc.

A version logged by the train stage has the ``pytorch`` flavor and loads as the real
``nn.Module`` (folder prediction unchanged: ``dermagan.classify.predict.predict_folder``). An
ensemble version (``dermagan ensemble``) is a pyfunc without it; its MLmodel ``metadata`` names
the classes and the image size, and it takes float images (N, 3, H, W) in [0, 1].
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch

from dermagan.classify.predict import list_images, load_folder, predict_folder
from dermagan.errors import DermaganError


def load_classifier(uri: str):
    """The model at ``uri``: an ``nn.Module`` when it has the pytorch flavor, else the pyfunc model."""
    flavors = mlflow.models.get_model_info(uri).flavors
    if "pytorch" in flavors:
        return mlflow.pytorch.load_model(uri, map_location="cpu")
    if "python_function" not in flavors:
        raise DermaganError(f"model '{uri}' has neither the pytorch nor the python_function flavor "
                            f"(flavors: {sorted(flavors)})")
    return mlflow.pyfunc.load_model(uri)


def predict_folder_any(model, folder: Path, batch_size: int = 128) -> tuple[pd.DataFrame, list]:
    """Predictions (image_id, pred_dx, prob_<class>...) for a folder, plus skipped files, from either kind."""
    if isinstance(model, torch.nn.Module):
        return predict_folder(model, folder, batch_size)
    classes, image_size = pyfunc_classes(model)
    paths = list_images(folder)
    if not paths:
        raise DermaganError(f"{folder}: no .jpg/.jpeg/.png files found")
    images, ids, skipped = load_folder(paths, image_size)
    if ids:
        output = model.predict(images.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0))
        missing = [c for c in classes if c not in output.columns]
        if missing:
            raise DermaganError(f"the model's predictions lack the class column(s) {missing}")
        proba = output[list(classes)].to_numpy(dtype=np.float64)
    else:
        proba = np.zeros((0, len(classes)))
    frame = pd.DataFrame(proba, columns=[f"prob_{c}" for c in classes])
    frame.insert(0, "pred_dx", [classes[i] for i in proba.argmax(1)] if len(ids) else [])
    frame.insert(0, "image_id", ids)
    return frame, skipped


def pyfunc_classes(model) -> tuple[tuple[str, ...], int]:
    """``classes`` and ``image_size`` from a pyfunc model's MLmodel metadata, or a clear error."""
    metadata = getattr(model.metadata, "metadata", None) or {}
    missing = [key for key in ("classes", "image_size") if key not in metadata]
    if missing:
        raise DermaganError(f"pyfunc model {model.metadata.model_uuid or ''} has no {missing} in its MLmodel "
                            "metadata; it was not logged by `dermagan ensemble` and cannot classify images")
    return tuple(metadata["classes"]), int(metadata["image_size"])
