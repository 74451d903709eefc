"""``dermagan predict`` for any registered classifier version: a pytorch model or the ensemble pyfunc.

A version logged by the train stage (the pickle-free classifier pyfunc) loads as the real
``nn.Module`` (``dermagan.classify.predict.predict_folder``, on the device asked for). An
ensemble version (``dermagan ensemble``) is a pyfunc without it; its MLmodel ``metadata`` names
the classes and the image size, and it takes float images (N, 3, H, W) in [0, 1]. Both read the
input through the same rules (``dermagan.classify.preprocess``).
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch

from dermagan.classify.predict import MAX_ASPECT, MIN_SIDE, predict_folder, predict_path
from dermagan.errors import DermaganError


def load_classifier(uri: str):
    """The model at ``uri``, loaded without running anything its folder brings
    (:func:`dermagan.classify.registry_load.load_registered`): an ``nn.Module`` for a dermagan
    classifier (its logged ``min_side``/``max_aspect`` become ``input_rules``), the ensemble pyfunc
    for a dermagan ensemble. Pickled models and unknown pyfuncs are refused with the reason."""
    from dermagan.classify.registry_load import load_registered

    model = load_registered(uri)
    if isinstance(model, torch.nn.Module):
        metadata = mlflow.models.get_model_info(uri).metadata or {}
        model.input_rules = {k: metadata[k] for k in ("min_side", "max_aspect") if metadata.get(k) is not None}
    return model


def predict_folder_any(model, path: Path, batch_size: int = 128, device: str | torch.device = "cpu",
                       min_side: int = MIN_SIDE, max_aspect: float = MAX_ASPECT) -> tuple[pd.DataFrame, list]:
    """Predictions (image_id, pred_dx, prob_<class>...) for an image file or a folder, plus every skipped
    entry, from either kind of model (``device`` is for the pytorch one; the pyfunc runs as it was built)."""
    if isinstance(model, torch.nn.Module):
        return predict_folder(model, path, batch_size, device, min_side, max_aspect)
    classes, image_size = pyfunc_classes(model)

    def proba(images: np.ndarray) -> np.ndarray:
        output = model.predict(images.transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255.0))
        missing = [c for c in classes if c not in output.columns]
        if missing:
            raise DermaganError(f"the model's predictions lack the class column(s) {missing}")
        return output[list(classes)].to_numpy(dtype=np.float64)

    return predict_path(path, image_size, classes, proba, min_side, max_aspect)


def input_rules(model) -> dict:
    """The ``min_side``/``max_aspect`` the model was logged with (may be empty): an ``nn.Module``'s
    ``input_rules`` (set by :func:`load_classifier`) or a pyfunc's MLmodel metadata."""
    if isinstance(model, torch.nn.Module):
        return dict(getattr(model, "input_rules", None) or {})
    metadata = getattr(getattr(model, "metadata", None), "metadata", None) or {}
    return {k: metadata[k] for k in ("min_side", "max_aspect") if metadata.get(k) is not None}


def pyfunc_classes(model) -> tuple[tuple[str, ...], int]:
    """``classes`` and ``image_size`` from a pyfunc model's MLmodel metadata, or a clear error."""
    metadata = getattr(model.metadata, "metadata", None) or {}
    missing = [key for key in ("classes", "image_size") if key not in metadata]
    if missing:
        raise DermaganError(f"pyfunc model {model.metadata.model_uuid or ''} has no {missing} in its MLmodel "
                            "metadata; it was not logged by `dermagan ensemble` and cannot classify images")
    return tuple(metadata["classes"]), int(metadata["image_size"])
