"""The trained-classifier folder the train stage writes: ``model.pt`` (weights and what rebuilds the
network) and ``mlflow.json`` (its MLflow run and registered version).

Written by :func:`save_trained` (the train stage) and read by :func:`load_trained` (evaluate, the
ensemble stage and pyfunc, the GAN tuner's probe), so the format lives in one place. ``model.pt``
holds only tensors and plain values: it loads with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dermagan.classify.models import NormalizedClassifier, create_classifier
from dermagan.errors import DermaganError

MODEL_FILE = "model.pt"
INFO_FILE = "mlflow.json"


def model_payload(model: torch.nn.Module, backbone: str, tta: str, classes: tuple[str, ...] | list[str],
                  image_size: int) -> dict:
    """What ``model.pt`` holds: the state dict, the backbone, TTA, class names and image size, plus the
    model's own ``checkpoint_fields()`` (e.g. ``kind: class_experts`` and its expert bank)."""
    return {"state_dict": model.state_dict(), "backbone": backbone, "tta": tta, "classes": list(classes),
            "image_size": image_size,
            **(model.checkpoint_fields() if hasattr(model, "checkpoint_fields") else {})}


def save_trained(folder: Path, model: torch.nn.Module, backbone: str, tta: str, classes: tuple[str, ...] | list[str],
                 image_size: int, info: dict) -> None:
    """Write ``model.pt`` and ``mlflow.json`` into ``folder`` (the caller makes it atomic)."""
    folder = Path(folder)
    torch.save(model_payload(model, backbone, tta, classes, image_size), folder / MODEL_FILE)
    (folder / INFO_FILE).write_text(json.dumps(info, indent=2))


def read_payload(path: Path) -> dict:
    """``model.pt`` as plain tensors and values: ``torch.load(weights_only=True)``, which refuses any
    pickled object (a crafted file cannot run code here); a refusal is a DermaganError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DermaganError(f"{path}: trained model not found; run the train stage first")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - UnpicklingError, RuntimeError (not a zip), EOFError...
        raise DermaganError(f"{path}: not a dermagan weights file (it must hold only tensors and plain values; "
                            f"loading refused without running anything it contains: {str(exc).splitlines()[0]})"
                            ) from exc
    if not isinstance(saved, dict) or not {"state_dict", "backbone", "classes", "image_size"} <= set(saved):
        raise DermaganError(f"{path}: not a dermagan weights file (expected state_dict, backbone, classes and "
                            "image_size)")
    return saved


def build_model(saved: dict, path: Path) -> NormalizedClassifier:
    """The classifier a payload describes (see :func:`model_payload`), its weights loaded."""
    if saved.get("kind") == "class_experts":  # backbone + frozen class-expert discriminators (dermagan.experts)
        from dermagan.experts import load_expert_classifier
        return load_expert_classifier(saved, path)
    model = create_classifier(saved["backbone"], tuple(saved["classes"]), saved["image_size"],
                              tta=saved.get("tta", "none"))
    try:
        model.load_state_dict(saved["state_dict"])
    except RuntimeError as exc:
        raise DermaganError(f"{path}: weights do not match the {saved['backbone']} model it describes: {exc}") from exc
    return model


def load_weights_file(path: Path) -> NormalizedClassifier:
    """Rebuild a classifier from one ``model.pt`` (the train stage's folder or a registered model)."""
    return build_model(read_payload(path), Path(path))


def load_trained(model_dir: Path) -> tuple[NormalizedClassifier, dict]:
    """Rebuild the classifier saved by :func:`save_trained`; also return its ``mlflow.json``."""
    model = load_weights_file(Path(model_dir) / MODEL_FILE)
    info = json.loads((Path(model_dir) / INFO_FILE).read_text())
    return model, info
