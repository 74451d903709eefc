"""A trained classifier as one ONNX file that maps images to class probabilities.

The graph holds everything ``dermagan predict`` does after the pixels are decoded and resized:
input normalisation, test-time augmentation (the dihedral views averaged), the temperature fitted
on validation and the final softmax. Input ``image``: float32 RGB in [0, 1], NCHW, at the model's
image size, any batch size. Output ``probs``: (batch, classes), rows summing to 1.

Exported with PyTorch's dynamo exporter (``torch.export``; needs ``onnxscript``), traced at batch
2 with a dynamic batch dimension, into a single file (no external data). H and W are fixed: with
TF "same" padding the pads are folded in for the export size, so the graph is valid only there.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dermagan.classify.inference import predict_proba
from dermagan.classify.models import NormalizedClassifier
from dermagan.data.external import file_sha256
from dermagan.errors import DermaganError

INPUT_NAME, OUTPUT_NAME = "image", "probs"
DEFAULT_OPSET = 18  # >= 17 (LayerNormalization); 18 runs on onnxruntime >= 1.14 and ONNX Runtime Mobile
PARITY_TOLERANCE = 1e-4  # max |p_onnx - p_torch| over every image and class


class ProbabilityGraph(nn.Module):
    """``softmax(model(image))``: what is exported (the model's output is logits / temperature, or the
    log of the TTA-averaged softmax / temperature, so this is the probability predict reports)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(image), dim=1)


def exportable_kind(model: nn.Module) -> str:
    """``classifier`` or ``class_experts``; any other model is refused with a DermaganError."""
    if isinstance(model, NormalizedClassifier):
        return "classifier"
    from dermagan.experts.model import ClassExpertClassifier

    if isinstance(model, ClassExpertClassifier):
        return "class_experts"
    raise DermaganError(f"cannot export a {type(model).__name__}: only dermagan classifiers (NormalizedClassifier, "
                        "or a class-experts classifier) are exported to ONNX; an ensemble is exported member by "
                        "member")


def file_facts(path: Path) -> dict:
    """``{"bytes": size, "sha256": hex}`` of a file."""
    return {"bytes": Path(path).stat().st_size, "sha256": file_sha256(path)}


def export_onnx(model: nn.Module, path: Path, opset: int = DEFAULT_OPSET) -> dict:
    """Write ``model`` (put in eval mode) as an ONNX probability graph to ``path``; return its facts.

    The file passes ``onnx.checker.check_model`` and carries the classes, image size, TTA and
    temperature in its metadata. Refuses models that are not dermagan classifiers, and reports an
    exporter failure as a DermaganError naming the model.
    """
    import onnx

    if int(opset) < 17:
        raise DermaganError(f"ONNX opset {opset}: use 17 or later")
    kind = exportable_kind(model)
    size = int(model.image_size)
    graph = ProbabilityGraph(model.eval()).eval()
    example = (torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0)),)
    path = Path(path)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(graph, example, str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch")}}, dynamo=True,
                              opset_version=int(opset), external_data=False, verbose=False)
    except Exception as exc:  # noqa: BLE001 - torch.export raises many types; all mean "not exportable"
        raise DermaganError(f"cannot export the {kind} model ({type(model.net).__name__} backbone, tta "
                            f"{model.tta}) to ONNX: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from exc
    document = onnx.load(str(path))
    metadata = {"classes": json.dumps(list(model.classes)), "image_size": str(size), "tta": model.tta,
                "temperature": f"{float(model.temperature):.6g}", "kind": kind,
                "input": "float32 RGB in [0, 1], NCHW", "output": "class probabilities (softmax)"}
    for key, value in metadata.items():
        document.metadata_props.add(key=key, value=value)
    document.producer_name = "dermagan"
    onnx.save(document, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    return {"path": path.name, "opset": int(opset), "kind": kind, "image_size": size, "tta": model.tta,
            "temperature": float(model.temperature), "input": INPUT_NAME, "output": OUTPUT_NAME,
            **file_facts(path)}


def session(path: Path, threads: int | None = None):
    """An onnxruntime CPU session for ``path`` (``threads``: intra-op threads; None: ORT's default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no optimizer notices on stderr
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def to_input(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) in [0, 1], as ``dermagan.classify.inference`` makes it."""
    return np.ascontiguousarray(np.asarray(images).transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255.0)


def onnx_probabilities(onnx_session, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Class probabilities (N, C) float64 of uint8 images (N, H, W, 3) from an onnxruntime session."""
    out = [onnx_session.run([OUTPUT_NAME], {INPUT_NAME: to_input(images[i:i + batch_size])})[0]
           for i in range(0, len(images), batch_size)]
    width = onnx_session.get_outputs()[0].shape[1]
    return np.concatenate(out).astype(np.float64) if out else np.zeros((0, int(width)))


def parity(model: nn.Module, onnx_path: Path, images_uint8: np.ndarray, batch_size: int = 64,
           tolerance: float = PARITY_TOLERANCE) -> dict:
    """ONNX against torch on ``images_uint8`` (N, H, W, 3): max and mean |Δp| over every image and class,
    top-1 agreement, and ``ok`` when max |Δp| <= ``tolerance``."""
    if not len(images_uint8):
        raise DermaganError("parity: no images to compare on")
    p_torch = predict_proba(model, images_uint8, batch_size, torch.device("cpu")).astype(np.float64)
    p_onnx = onnx_probabilities(session(onnx_path), images_uint8, batch_size)
    delta = np.abs(p_onnx - p_torch)
    return {"n_images": int(len(images_uint8)), "max_abs_dp": float(delta.max()), "mean_abs_dp": float(delta.mean()),
            "top1_agreement": float((p_onnx.argmax(1) == p_torch.argmax(1)).mean()),
            "tolerance": float(tolerance), "ok": bool(delta.max() <= tolerance)}
