"""Classify a folder of images with a registered model."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from dermagan.classify.inference import predict_proba
from dermagan.data.images import IMAGE_SUFFIXES, load_image_array
from dermagan.errors import DermaganError


def list_images(folder: Path) -> list[Path]:
    """Every JPEG/PNG directly inside ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DermaganError(f"{folder}: not a folder of images")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def load_folder(paths: Iterable[Path], size: int) -> tuple[np.ndarray, list[str], list[tuple[str, str]]]:
    """Decode with the training preprocessing; unreadable files are returned, not raised."""
    arrays, ids, skipped = [], [], []
    for path in tqdm(list(paths), desc="load", unit="img", mininterval=2):
        try:
            arrays.append(load_image_array(path, size, strict=False))
            ids.append(path.stem)
        except DermaganError as exc:
            skipped.append((path.name, str(exc)))
    stack = np.stack(arrays) if arrays else np.zeros((0, size, size, 3), dtype=np.uint8)
    return stack, ids, skipped


def predict_folder(model: torch.nn.Module, folder: Path, batch_size: int = 128) -> tuple[pd.DataFrame, list]:
    """Predictions (image_id, pred_dx, prob_<class>...) for a folder, plus skipped files."""
    paths = list_images(folder)
    if not paths:
        raise DermaganError(f"{folder}: no .jpg/.jpeg/.png files found")
    images, ids, skipped = load_folder(paths, int(model.image_size))
    proba = predict_proba(model, images, batch_size, torch.device("cpu"))
    classes = list(model.classes)
    frame = pd.DataFrame(proba, columns=[f"prob_{c}" for c in classes])
    frame.insert(0, "pred_dx", [classes[i] for i in proba.argmax(1)] if len(ids) else [])
    frame.insert(0, "image_id", ids)
    return frame, skipped
