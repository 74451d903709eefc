"""Classify dermoscopy images with this bundle's ONNX model: no dermagan, no torch.

Usage:  python predict.py IMAGE_OR_FOLDER [--out preds.csv] [--int8] [--threads N]

Needs Python 3.10+, numpy, Pillow and onnxruntime. The input rules and the resize are those of
``dermagan predict`` (``preprocess.py`` beside this file is a verbatim copy of dermagan's): one
image file or the direct children of a folder; other entries and refused images are named on
stderr. The CSV has the columns of ``dermagan predict``: image_id, pred_dx, prob_<class>...
Exit status: 0 when at least one image was predicted, 1 when none could be, 2 for a bad argument,
a bundle file that does not match bundle.json, or an output path that is refused.

This file is ``dermagan/export/bundle_predict.py``, copied into every bundle as ``predict.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
sys.dont_write_bytecode = True  # leave the bundle folder as shipped (no __pycache__ beside the models)
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
import preprocess  # noqa: E402  (the bundle's copy of dermagan/classify/preprocess.py)

FP32, INT8 = "model.onnx", "model.int8.onnx"
INPUT_NAME, OUTPUT_NAME = "image", "probs"


class BundleError(Exception):
    """A problem with the bundle, the arguments or the output path; exit status 2."""


def read_json(name: str) -> dict:
    try:
        return json.loads((HERE / name).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleError(f"{HERE / name}: cannot read the bundle's {name} ({exc})") from exc


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checked_model(name: str, manifest: dict) -> Path:
    """The model file, refused when it differs from the checksum bundle.json recorded."""
    path = HERE / name
    expected = (manifest.get("files") or {}).get(name, {}).get("sha256")
    if not path.is_file():
        raise BundleError(f"{path}: the bundle has no {name}")
    if expected and sha256(path) != expected:
        raise BundleError(f"{path}: does not match the checksum in bundle.json; the bundle was altered or "
                          "damaged, re-export it (`dermagan export`)")
    return path


def session(path: Path, threads: int | None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def probabilities(sess: ort.InferenceSession, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Class probabilities (N, C) of uint8 images (N, H, W, 3): float RGB in [0, 1], NCHW, in batches."""
    out = []
    for start in range(0, len(images), batch_size):
        batch = np.ascontiguousarray(images[start:start + batch_size].transpose(0, 3, 1, 2), dtype=np.float32)
        out.append(sess.run([OUTPUT_NAME], {INPUT_NAME: batch / np.float32(255.0)})[0])
    return np.concatenate(out).astype(np.float64)


def check_out(out: Path, header: list[str]) -> None:
    """Refuse to replace an existing file unless it is empty or a predictions CSV with this header."""
    if not out.is_file() or out.stat().st_size == 0:
        return
    with open(out, encoding="utf-8", errors="replace") as fh:
        first = fh.readline().rstrip("\r\n")
    if first != ",".join(preprocess.csv_safe(h) for h in header):
        raise BundleError(f"{out}: exists and is not a predictions file of this model; it is not replaced: "
                          "remove it yourself or choose another --out")


def run(args: argparse.Namespace) -> int:
    manifest, labels, prep = read_json("bundle.json"), read_json("labels.json"), read_json("preprocessing.json")
    classes = [str(c) for c in labels["classes"]]
    size, min_side, max_aspect = int(prep["image_size"]), int(prep["min_side"]), float(prep["max_aspect"])
    header = ["image_id", "pred_dx", *[f"prob_{c}" for c in classes]]
    out = Path(args.out)
    check_out(out, header)
    model = checked_model(INT8 if args.int8 else FP32, manifest)
    try:
        files, skipped = preprocess.collect_inputs(args.input)
        images, ids, refused = preprocess.load_batch(files, size, min_side, max_aspect)
    except preprocess.InputError as exc:
        raise BundleError(str(exc)) from exc
    skipped = sorted(skipped + refused)
    for name, reason in skipped:
        print(f"skipped {name}: {reason}", file=sys.stderr)
    if not ids:
        found = f"none of the {len(files)} image file(s) could be read" if files else "no .jpg/.jpeg/.png file"
        print(f"predict.py: nothing to predict in {args.input}: {found}; no CSV written", file=sys.stderr)
        return 1
    proba = probabilities(session(model, args.threads), images)
    rows = [[image_id, classes[int(p.argmax())], *[float(v) for v in p]] for image_id, p in zip(ids, proba)]
    try:
        preprocess.write_predictions_csv(header, rows, out)
    except preprocess.InputError as exc:
        raise BundleError(str(exc)) from exc
    print(f"wrote {len(rows)} predictions to {out} ({len(skipped)} file(s) skipped; {model.name})")
    return 0


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="predict.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="an image file (.jpg/.jpeg/.png) or a folder of them")
    parser.add_argument("--out", default="preds.csv", help="CSV to write (default: %(default)s)")
    parser.add_argument("--int8", action="store_true", help=f"use the int8 model ({INT8}) instead of {FP32}")
    parser.add_argument("--threads", type=int, help="CPU threads for onnxruntime (default: its own choice)")
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        return run(args)
    except BundleError as exc:
        print(f"predict.py: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
