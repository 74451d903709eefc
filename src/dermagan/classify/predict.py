"""Classify an image file or a folder of images with a registered model.

The input rules (what is read, what is skipped and why, the ids, the refusals) and the
preprocessing live in :mod:`dermagan.classify.preprocess`; this module turns their InputError
into DermaganError and builds the predictions table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from dermagan.classify.inference import predict_proba
from dermagan.classify.preprocess import PREPROCESSING_DEFAULTS, InputError, collect_inputs, load_batch
from dermagan.errors import DermaganError

MIN_SIDE, MAX_ASPECT = PREPROCESSING_DEFAULTS["min_side"], PREPROCESSING_DEFAULTS["max_aspect"]


def list_images(path: Path) -> list[Path]:
    """The JPEG/PNG files of ``path`` (the file itself, or a folder's direct children, sorted by name)."""
    try:
        return collect_inputs(path)[0]
    except InputError as exc:
        raise DermaganError(str(exc)) from exc


def load_folder(paths: Iterable[Path], size: int, min_side: int = MIN_SIDE, max_aspect: float = MAX_ASPECT,
                ) -> tuple[np.ndarray, list[str], list[tuple[str, str]]]:
    """Decode with the training preprocessing; refused files are returned, not raised."""
    try:
        return load_batch(list(paths), size, min_side, max_aspect,
                          progress=lambda items: tqdm(items, desc="load", unit="img", mininterval=2))
    except InputError as exc:
        raise DermaganError(str(exc)) from exc


def predict_path(path: Path, size: int, classes: tuple[str, ...], proba: Callable[[np.ndarray], np.ndarray],
                 min_side: int = MIN_SIDE, max_aspect: float = MAX_ASPECT) -> tuple[pd.DataFrame, list]:
    """Predictions (image_id, pred_dx, prob_<class>...) for a file or folder, plus every skipped entry.

    ``proba`` maps uint8 images (N, size, size, 3) to class probabilities (N, len(classes)). When
    not one image can be predicted this is a DermaganError naming ``path`` and every skipped entry.
    """
    try:
        files, skipped = collect_inputs(path)
    except InputError as exc:
        raise DermaganError(str(exc)) from exc
    images, ids, refused = load_folder(files, size, min_side, max_aspect)
    skipped = sorted(skipped + refused)
    if not ids:
        found = (f"none of the {len(files)} .jpg/.jpeg/.png file(s) could be read" if files
                 else "the folder holds no .jpg/.jpeg/.png file")
        reasons = "".join(f"\n  skipped {name}: {reason}" for name, reason in skipped)
        raise DermaganError(f"{path}: nothing to predict, {found}{reasons}")
    probabilities = np.asarray(proba(images), dtype=np.float64)
    frame = pd.DataFrame(probabilities, columns=[f"prob_{c}" for c in classes])
    frame.insert(0, "pred_dx", [classes[i] for i in probabilities.argmax(1)])
    frame.insert(0, "image_id", ids)
    return frame, skipped


def predict_folder(model: torch.nn.Module, path: Path, batch_size: int = 128, device: str | torch.device = "cpu",
                   min_side: int = MIN_SIDE, max_aspect: float = MAX_ASPECT) -> tuple[pd.DataFrame, list]:
    """:func:`predict_path` with a classifier ``nn.Module``, moved to ``device`` with its batches."""
    device = torch.device(device)
    model.to(device)
    return predict_path(path, int(model.image_size), tuple(model.classes),
                        lambda images: predict_proba(model, images, batch_size, device), min_side, max_aspect)
