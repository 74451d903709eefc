"""Prediction speed: torch eager against ONNX Runtime fp32 and int8, at 1 and 2 threads, in one run.

For each model: single-image latency (p50/p95 over ``repeats`` calls after ``warmup``), throughput at
one batch size (images/s over ``batch_repeats`` calls) and the size on disk (torch: its state
dict; ONNX: the file). Every engine gets the same float32 NCHW input in [0, 1] and returns
probabilities (torch: softmax of the model's output), so only the engine differs. Timings from one
run on one machine compare with each other; against other machines they say little (the load
average at the start is recorded).

``dermagan bench-predict`` times the registered model at its own image size (int8 calibrated on
real train images) and, for scale, a fresh ``tf_efficientnet_lite0`` at 224 px with the packaged
ImageNet weights (1,000 classes), the network of the TF EfficientNet-Lite0 model card. That one's
int8 calibration uses synthetic structured images: its int8 timing is meaningful, its accuracy is
not measured.
"""

from __future__ import annotations

import io
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dermagan.errors import DermaganError
from dermagan.export.onnx import INPUT_NAME, OUTPUT_NAME, export_onnx, session, to_input
from dermagan.export.quantize import calibration_sample, cpu_kernels, quantize_int8

ENGINES = ("torch", "onnx-fp32", "onnx-int8")
REFERENCE_BACKBONE, REFERENCE_SIZE = "tf_efficientnet_lite0", 224
# The TF EfficientNet-Lite0 model card (tensorflow/tpu, models/official/efficientnet/lite): Pixel 4 CPU latency.
PIXEL4_CARD = {"fp32_ms": 12.0, "int8_ms": 6.5}
SYNTHETIC_CALIBRATION = "synthetic structured images (timing only; no accuracy is claimed for this int8 model)"


@dataclass
class BenchModel:
    """One network to time: its torch module, its two ONNX files and the uint8 images fed to it."""

    label: str
    model: nn.Module
    fp32: Path
    int8: Path
    images: np.ndarray  # uint8 (N, size, size, 3), N >= 1; batches cycle through them
    calibration: str


def structured_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Smooth random colour fields with a darker blob: image-like statistics, no real content (uint8 NHWC)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(60, 220, size=(n, 3, 8, 8)).astype(np.float32)
    fields = torch.nn.functional.interpolate(torch.from_numpy(coarse), size=(size, size), mode="bicubic",
                                             align_corners=False).numpy()
    yy, xx = np.mgrid[0:size, 0:size] / size
    centre = rng.uniform(0.3, 0.7, size=(n, 2, 1, 1))
    blob = np.exp(-((xx - centre[:, 0]) ** 2 + (yy - centre[:, 1]) ** 2) / 0.03)[:, None]
    images = fields * (1 - 0.6 * blob) + rng.normal(0, 6, size=fields.shape)
    return np.clip(images, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1).copy()


def batch_of(images: np.ndarray, size: int) -> np.ndarray:
    """``size`` images (repeating ``images`` when there are fewer) as float32 NCHW in [0, 1]."""
    return to_input(images[np.arange(size) % len(images)])


def torch_runner(model: nn.Module):
    model.eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            tensor = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
            return torch.softmax(model(tensor), dim=1).numpy()
    return run


def onnx_runner(path: Path, threads: int):
    sess = session(path, threads)
    return lambda x: sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


def make_runner(engine: str, spec: BenchModel, threads: int):
    """The runner of ``engine`` for ``spec`` (torch's thread count is set by the caller)."""
    if engine == "torch":
        return torch_runner(spec.model)
    return onnx_runner(spec.fp32 if engine == "onnx-fp32" else spec.int8, threads)


def seconds_per_call(run, x: np.ndarray, repeats: int, warmup: int) -> np.ndarray:
    for _ in range(warmup):
        run(x)
    times = np.empty(repeats)
    for i in range(repeats):
        start = time.perf_counter()
        run(x)
        times[i] = time.perf_counter() - start
    return times


def time_engine(run, images: np.ndarray, batch_size: int, repeats: int, batch_repeats: int, warmup: int) -> dict:
    """Single-image latency percentiles (ms) and throughput at ``batch_size`` (images/s) of one runner."""
    single = seconds_per_call(run, batch_of(images, 1), repeats, warmup) * 1000
    batch = seconds_per_call(run, batch_of(images, batch_size), batch_repeats, max(1, warmup // 5))
    return {"p50_ms": float(np.percentile(single, 50)), "p95_ms": float(np.percentile(single, 95)),
            "mean_ms": float(single.mean()), "batch_images_per_s": float(batch_size * batch_repeats / batch.sum()),
            "repeats": int(repeats), "batch_repeats": int(batch_repeats)}


def state_dict_bytes(model: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def bench_predict(models: list[BenchModel], threads: tuple[int, ...] = (1, 2), batch_size: int = 64,
                  repeats: int = 50, batch_repeats: int = 5, warmup: int = 5) -> dict:
    """Every model x thread count x engine, timed back to back; returns rows and the run's context."""
    rows = []
    previous = torch.get_num_threads()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    try:
        for spec in models:
            sizes = {"torch": state_dict_bytes(spec.model), "onnx-fp32": spec.fp32.stat().st_size,
                     "onnx-int8": spec.int8.stat().st_size}
            for n in threads:
                torch.set_num_threads(int(n))
                for engine in ENGINES:  # one runner at a time: no idle ORT thread pool spins beside the timed one
                    timing = time_engine(make_runner(engine, spec, n), spec.images, batch_size, repeats,
                                         batch_repeats, warmup)
                    rows.append({"model": spec.label, "image_size": int(spec.model.image_size), "engine": engine,
                                 "threads": int(n), "bytes": int(sizes[engine]), "calibration": spec.calibration,
                                 **timing})
    finally:
        torch.set_num_threads(previous)
    for row in rows:
        base = next(r for r in rows if r["model"] == row["model"] and r["threads"] == row["threads"]
                    and r["engine"] == "torch")
        row["speedup_p50_vs_torch"] = base["p50_ms"] / row["p50_ms"]
        row["speedup_batch_vs_torch"] = row["batch_images_per_s"] / base["batch_images_per_s"]
    return {"rows": rows, "batch_size": int(batch_size), "threads": [int(n) for n in threads],
            "load_average_at_start": list(load) if load else None, "torch": torch.__version__, "cpu": cpu_kernels(),
            "pixel4_card_ms": PIXEL4_CARD}


def markdown_table(doc: dict) -> str:
    """The benchmark as a Markdown table, with what the calibration of each int8 model was."""
    lines = [f"| model | px | engine | threads | p50 ms | p95 ms | img/s @{doc['batch_size']} | MB | p50 speed-up |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in doc["rows"]:
        lines.append(f"| {r['model']} | {r['image_size']} | {r['engine']} | {r['threads']} | {r['p50_ms']:.2f} | "
                     f"{r['p95_ms']:.2f} | {r['batch_images_per_s']:.0f} | {r['bytes'] / 1e6:.2f} | "
                     f"{r['speedup_p50_vs_torch']:.2f}x |")
    notes = sorted({(r["model"], r["calibration"]) for r in doc["rows"] if r["engine"] == "onnx-int8"})
    lines += ["", *[f"- {model}: int8 calibrated on {how}" for model, how in notes]]
    card = doc["pixel4_card_ms"]
    cpu = doc["cpu"]
    load = doc.get("load_average_at_start")
    lines += [f"- For scale, the TF EfficientNet-Lite0 model card gives {card['fp32_ms']:g} ms fp32 and "
              f"{card['int8_ms']:g} ms int8 on a Pixel 4 CPU (other hardware, other runtime).",
              f"- Here: torch {doc['torch']}, onnxruntime {cpu['onnxruntime']}, {cpu['cpu_count']} CPUs, flags "
              f"{', '.join(cpu['cpu_flags']) or 'unknown'} ({cpu['likely_int8_kernels']})"
              + (f"; load average {load[0]:.2f} at the start" if load else "") + "."]
    return "\n".join(lines) + "\n"


def reference_model() -> nn.Module:
    """``tf_efficientnet_lite0`` at 224 px with the packaged ImageNet weights, all 1,000 classes."""
    from dermagan.classify.models import create_classifier

    return create_classifier(REFERENCE_BACKBONE, tuple(str(i) for i in range(1000)), REFERENCE_SIZE,
                             pretrained="package").eval()


def prepare_model(label: str, model: nn.Module, images: np.ndarray, calibration_images: np.ndarray,
                  calibration: str, folder: Path) -> BenchModel:
    """Export ``model`` to fp32 and int8 ONNX files in ``folder`` and describe it for :func:`bench_predict`."""
    folder.mkdir(parents=True, exist_ok=True)
    fp32, int8 = folder / "model.onnx", folder / "model.int8.onnx"
    export_onnx(model, fp32)
    quantize_int8(fp32, int8, calibration_images)
    return BenchModel(label, model.eval(), fp32, int8, images, calibration)


def bench_models(model, label: str, train_images: np.ndarray, timing_images: np.ndarray, *,
                      calibration_count: int = 256, seed: int = 0, reference: bool = True,
                      threads: tuple[int, ...] = (1, 2), batch_size: int = 64, repeats: int = 50,
                      batch_repeats: int = 5) -> dict:
    """Export ``model`` (int8 calibrated on a seeded sample of real ``train_images``) and, with ``reference``,
    the 224 px EfficientNet-Lite0; time both (see the module doc). Returns :func:`bench_predict`'s document."""
    with tempfile.TemporaryDirectory(prefix="dermagan-bench-") as tmp:
        calibration = calibration_sample(train_images, calibration_count, seed)
        specs = [prepare_model(label, model, timing_images, calibration,
                               f"real train images ({len(calibration)})", Path(tmp) / "model")]
        if reference:
            net = reference_model()
            synthetic = structured_images(32, REFERENCE_SIZE, seed)
            specs.append(prepare_model(f"{REFERENCE_BACKBONE} (ImageNet)", net, synthetic, synthetic,
                                       SYNTHETIC_CALIBRATION, Path(tmp) / "reference"))
        return bench_predict(specs, threads, batch_size, repeats, batch_repeats)


def run_bench_predict(model_uri: str, prepared: Path, out: Path, *, seed: int, calibration_count: int = 256,
                      reference: bool = True, threads: tuple[int, ...] = (1, 2), batch_size: int = 64,
                      repeats: int = 50, batch_repeats: int = 5) -> tuple[dict, str]:
    """``dermagan bench-predict``: the registered model at ``model_uri`` (loaded as for export; timed on
    real val images, int8 calibrated on real train images) and the reference network; writes ``out``
    (JSON) and the Markdown table beside it (``out`` with ``.md``). Returns both."""
    import json

    from dermagan.atomic import atomic_file
    from dermagan.export.registered import load_for_export, read_splits
    from dermagan.outputs import FILE, check_output
    from dermagan.serialize import json_safe

    if min(threads, default=0) < 1 or batch_size < 1 or repeats < 1 or batch_repeats < 1:
        raise DermaganError(f"bench-predict: --threads {list(threads)}, --batch-size {batch_size} and --repeats "
                            f"{repeats} must all be at least 1")
    out = Path(out)
    if out.suffix == ".md":
        raise DermaganError(f"--out {out}: give the JSON path; the Markdown table goes beside it as .md")
    table_path = out.with_suffix(".md")
    for path in (out, table_path):
        check_output(path, FILE, "--out")
    with tempfile.TemporaryDirectory(prefix="dermagan-bench-model-") as tmp:
        model, _ = load_for_export(model_uri, Path(tmp))
    splits = read_splits(prepared, model)
    doc = bench_models(model, f"{model_uri} ({type(model.net).__name__})", splits["train"].images,
                       splits["val"].images[:batch_size], calibration_count=calibration_count, seed=seed,
                       reference=reference, threads=threads, batch_size=batch_size, repeats=repeats,
                       batch_repeats=batch_repeats)
    doc["model_uri"] = model_uri
    table = markdown_table(doc)
    with atomic_file(out, "--out") as tmp_json, atomic_file(table_path, "--out (.md)") as tmp_md:
        tmp_json.write_text(json.dumps(json_safe(doc), indent=2) + "\n")
        tmp_md.write_text(table)
    return doc, table
