"""The offline bundle: one folder that classifies images with onnxruntime, numpy and Pillow only.

Contents: ``model.onnx`` (fp32) and ``model.int8.onnx`` (see :mod:`dermagan.export.onnx`,
:mod:`dermagan.export.quantize`), ``labels.json``, ``preprocessing.json``, ``predict.py`` (a copy
of ``bundle_predict.py``), ``preprocess.py`` (a verbatim copy of ``dermagan/classify/preprocess.py``,
the rules ``dermagan predict`` applies), ``MODEL_CARD.md``, ``README.txt`` and ``bundle.json``
(what the bundle is, where it came from, each file's size and sha256).

The folder is written atomically (:func:`dermagan.atomic.atomic_dir`). An existing non-empty
folder is replaced only when it is an earlier bundle: a dermagan output whose ``bundle.json`` says
``kind: dermagan-onnx-bundle``; anything else is refused before any work is done.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from dermagan.atomic import atomic_dir
from dermagan.classify import preprocess
from dermagan.errors import DermaganError
from dermagan.export.onnx import INPUT_NAME, OUTPUT_NAME, file_facts
from dermagan.outputs import DIR, check_output, is_own_dir
from dermagan.serialize import json_safe

BUNDLE_KIND = "dermagan-onnx-bundle"
MANIFEST = "bundle.json"
FP32_FILE, INT8_FILE = "model.onnx", "model.int8.onnx"
TEMPLATE = Path(__file__).with_name("bundle_predict.py")
PREPROCESS_SOURCE = Path(preprocess.__file__)
README = """dermagan ONNX bundle: {title}
Usage (Python 3.10+, no dermagan or torch needed; see MODEL_CARD.md before any use):
  pip install onnxruntime numpy pillow
  python predict.py IMAGE_OR_FOLDER [--out preds.csv] [--int8] [--threads N]
"""


def preprocessing_spec(image_size: int, min_side: int | None = None, max_aspect: float | None = None) -> dict:
    """What ``preprocessing.json`` says: the resize, the input rules and the graph's input format."""
    defaults = preprocess.PREPROCESSING_DEFAULTS
    return {"image_size": int(image_size), "min_side": int(min_side or defaults["min_side"]),
            "max_aspect": float(max_aspect or defaults["max_aspect"]),
            "resize": "short side to image_size (bicubic), centre crop to image_size x image_size",
            "color": "RGB (8-bit RGB, RGBA, L, LA and P images are converted)",
            "input_name": INPUT_NAME, "input_range": [0.0, 1.0], "input_dtype": "float32", "layout": "NCHW",
            "output_name": OUTPUT_NAME,
            "output": "class probabilities (softmax; normalisation, TTA and temperature are inside the graph)"}


def is_bundle(folder: Path) -> bool:
    """True for a folder dermagan wrote as a bundle (output marker and a bundle manifest)."""
    folder = Path(folder)
    if not is_own_dir(folder):
        return False
    try:
        return json.loads((folder / MANIFEST).read_text()).get("kind") == BUNDLE_KIND
    except (OSError, ValueError, AttributeError):
        return False


def check_bundle_destination(folder: Path) -> None:
    """Refuse ``folder`` unless it is missing, empty or an earlier bundle (it only looks)."""
    folder = Path(folder)
    check_output(folder, DIR, "--out")
    if folder.is_dir() and any(folder.iterdir()) and not is_bundle(folder):
        raise DermaganError(f"--out {folder}: is a dermagan output but not an export bundle (no {MANIFEST} of kind "
                            f"{BUNDLE_KIND}); a bundle replaces only an earlier bundle: remove it yourself or "
                            "choose another path")


def write_bundle(folder: Path, onnx_path: Path, int8_path: Path, classes, preprocessing: dict,
                 model_card_text: str, manifest: dict | None = None, documents: dict[str, dict] | None = None,
                 before_publish: Callable[[Path], None] | None = None) -> dict:
    """Write the bundle folder; returns its ``bundle.json`` document.

    ``preprocessing``: :func:`preprocessing_spec`; ``manifest``: extra keys for ``bundle.json``
    (source model, export figures); ``documents``: more JSON files (name -> content), e.g. the export
    report; ``before_publish(tmp)`` runs on the complete temporary folder
    before it is renamed into place (e.g. logging its files to MLflow): if it raises, nothing is left.
    """
    folder = Path(folder)
    check_bundle_destination(folder)
    classes = [str(c) for c in classes]
    with atomic_dir(folder, "--out") as tmp:
        shutil.copyfile(onnx_path, tmp / FP32_FILE)
        shutil.copyfile(int8_path, tmp / INT8_FILE)
        shutil.copyfile(TEMPLATE, tmp / "predict.py")
        shutil.copyfile(PREPROCESS_SOURCE, tmp / "preprocess.py")
        (tmp / "labels.json").write_text(json.dumps({"classes": classes}, indent=2) + "\n")
        (tmp / "preprocessing.json").write_text(json.dumps(preprocessing, indent=2) + "\n")
        (tmp / "MODEL_CARD.md").write_text(model_card_text.rstrip() + "\n")
        for name, content in (documents or {}).items():
            (tmp / name).write_text(json.dumps(json_safe(content), indent=2) + "\n")
        source = (manifest or {}).get("source") or {}
        title = (f"{source['registered_model']} version {source['version']}" if {"registered_model", "version"}
                 <= set(source) else "classifier")
        (tmp / "README.txt").write_text(README.format(title=f"{title}, {len(classes)} classes "
                                                            f"({', '.join(classes)}), {preprocessing['image_size']} px"))
        files = {p.name: file_facts(p) for p in sorted(tmp.iterdir()) if p.is_file() and not p.name.startswith(".")}
        document = {"kind": BUNDLE_KIND, "format": 1, "classes": classes,
                    "image_size": int(preprocessing["image_size"]), **(manifest or {}), "files": files}
        (tmp / MANIFEST).write_text(json.dumps(json_safe(document), indent=2) + "\n")
        if before_publish is not None:
            before_publish(tmp)
    return document
