"""Static int8 quantisation of the exported graph, and whether it costs accuracy on the real test split.

:func:`quantize_int8`: ONNX Runtime's ``quant_pre_process`` (shape inference, folding), then
``quantize_static`` in QDQ format with uint8 activations and per-channel int8 weights (U8S8: on x86
every Conv becomes a QLinearConv), MinMax ranges calibrated on real **train** images only. The
softmax and everything after it (the TTA average, its log, the temperature) stay float, so the
probabilities are not rounded to 1/255 steps.

:func:`compare_int8`: top-1 agreement with the fp32 graph, balanced accuracy and ECE of both, and
paired-bootstrap CIs (one resample matrix for both) of the int8 − fp32 differences, with the
project's metric functions. The verdict is ``not worse`` unless int8's balanced accuracy is lower
beyond the CI.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from dermagan.errors import DermaganError
from dermagan.evaluate.calibration import expected_calibration_error
from dermagan.evaluate.compare import bootstrap_recalls
from dermagan.evaluate.metrics import (
    balanced_accuracy,
    bma_included,
    bootstrap_indices,
    mean_recall,
    percentile_interval,
)
from dermagan.export.onnx import INPUT_NAME, to_input

AGREEMENT_TARGET = 0.98
QUANTIZED_OPS = ("QLinearConv", "QGemm", "QLinearMatMul", "MatMulInteger", "ConvInteger", "QLinearAdd",
                 "QLinearMul", "QLinearConcat", "QLinearGlobalAveragePool", "QLinearAveragePool",
                 "QLinearSigmoid", "QLinearLeakyRelu")
FLOAT_COMPUTE_OPS = ("Conv", "FusedConv", "NchwcConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul")
CPU_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16",
             "asimddp", "i8mm")  # x86 VNNI/AMX and ARM dot-product: what MLAS's int8 kernels use


def calibration_sample(images: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Up to ``count`` images drawn without replacement (seeded), in their original order."""
    if count < 1:
        raise DermaganError(f"--calibration-count must be at least 1, got {count}")
    if len(images) <= count:
        return images
    index = np.sort(np.random.default_rng(seed).choice(len(images), size=count, replace=False))
    return images[index]


def calibration_reader(images_uint8: np.ndarray, batch_size: int = 32):
    """A ``CalibrationDataReader`` feeding uint8 (N, H, W, 3) images to the graph's ``image`` input."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(range(0, len(images_uint8), batch_size))

        def get_next(self):
            start = next(self.batches, None)
            return None if start is None else {INPUT_NAME: to_input(images_uint8[start:start + batch_size])}

    return Reader()


def softmax_tail(model) -> list[str]:
    """Names of the Softmax nodes and every node downstream of one (kept float by the quantiser)."""
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found, stack = set(), [n for n in model.graph.node if n.op_type == "Softmax"]
    while stack:
        node = stack.pop()
        if node.name in found:
            continue
        found.add(node.name)
        stack += [c for out in node.output for c in consumers.get(out, [])]
    return sorted(found)


def quantize_int8(fp32_path: Path, int8_path: Path, calibration_images: np.ndarray, batch_size: int = 32) -> dict:
    """Write the static U8S8 per-channel QDQ int8 graph of ``fp32_path`` to ``int8_path``; return its settings.

    ``calibration_images``: uint8 (N, H, W, 3) real train images (MinMax activation ranges).
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not len(calibration_images):
        raise DermaganError("int8 calibration: no calibration images")
    with tempfile.TemporaryDirectory(prefix="dermagan-quant-") as tmp:
        prepared = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(prepared))
        excluded = softmax_tail(onnx.load(str(prepared)))
        quantize_static(str(prepared), str(int8_path), calibration_reader(calibration_images, batch_size),
                        quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, per_channel=True, calibrate_method=CalibrationMethod.MinMax,
                        nodes_to_exclude=excluded)
    return {"format": "QDQ", "activations": "uint8", "weights": "int8 per channel", "calibration": "MinMax",
            "calibration_images": int(len(calibration_images)), "kept_float": excluded}


def optimized_ops(onnx_path: Path) -> Counter:
    """Op types of the graph ONNX Runtime actually runs on this machine (its optimised CPU graph)."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="dermagan-opt-") as tmp:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        return Counter(node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node)


def quantized_nodes(onnx_path: Path) -> dict:
    """Quantised vs float compute nodes in ONNX Runtime's optimised graph of ``onnx_path``."""
    ops = optimized_ops(onnx_path)
    quantized = {op: n for op, n in sorted(ops.items()) if op in QUANTIZED_OPS}
    floating = {op: n for op, n in sorted(ops.items()) if op in FLOAT_COMPUTE_OPS}
    return {"quantized": quantized, "float": floating, "n_quantized": sum(quantized.values()),
            "n_float_compute": sum(floating.values()),
            "note": "counted in ONNX Runtime's optimised CPU graph (SessionOptions.optimized_model_filepath)"}


def cpu_kernels() -> dict:
    """What can be known about the int8 kernels ONNX Runtime uses here: its version, device and providers,
    and the CPU's int8-relevant instruction-set flags (``/proc/cpuinfo``). MLAS picks its kernels at run
    time from CPUID and no API reports the choice, so the kernel itself is inferred, not read."""
    import onnxruntime as ort

    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    flags |= set(line.split(":", 1)[1].split())
    except OSError:
        pass
    present = [f for f in CPU_FLAGS if f in flags]
    if "amx_int8" in present:
        likely = "AMX or AVX512-VNNI u8s8 kernels"
    elif "avx512_vnni" in present or "avx_vnni" in present:
        likely = "VNNI u8s8 kernels (AVX512-VNNI / AVX-VNNI)"
    elif "asimddp" in present:
        likely = "ARM dot-product (SDOT/UDOT) kernels"
    elif present:
        likely = "AVX2/AVX512 without VNNI: int8 may be no faster than fp32"
    else:
        likely = "unknown (no CPU flags readable)"
    return {"onnxruntime": ort.__version__, "device": ort.get_device(),
            "providers": ort.get_available_providers(), "cpu_flags": present, "cpu_count": os.cpu_count(),
            "likely_int8_kernels": likely,
            "note": "MLAS selects kernels from CPUID at run time; ONNX Runtime does not report which one ran"}


def _ece_resampled(y_true: np.ndarray, proba: np.ndarray, idx: np.ndarray, n_bins: int) -> np.ndarray:
    return np.array([expected_calibration_error(y_true[row], proba[row], n_bins) for row in idx])


def compare_int8(p_fp32: np.ndarray, p_int8: np.ndarray, y_true: np.ndarray, n_boot: int = 2000,
                 level: float = 0.95, seed: int = 0, n_bins: int = 15, min_count: int = 0) -> dict:
    """int8 against fp32 probabilities on the same images (real test split, labels ``y_true``).

    Top-1 agreement (target ``AGREEMENT_TARGET``), balanced accuracy (classes with ``min_count``
    images, the project's one definition) and top-label ECE (``n_bins``) of both, and the paired
    bootstrap (``n_boot`` resamples of the images, ``seed``, ``level`` percentile CI) of
    int8 − fp32 for both. ``verdict``: ``worse`` when the whole BMA difference CI is below 0, else
    ``not worse``.
    """
    p_fp32, p_int8, y_true = np.asarray(p_fp32), np.asarray(p_int8), np.asarray(y_true, dtype=np.int64)
    if p_fp32.shape != p_int8.shape or len(y_true) != len(p_fp32) or not len(y_true):
        raise DermaganError(f"compare_int8: {p_fp32.shape} fp32 and {p_int8.shape} int8 probabilities for "
                            f"{len(y_true)} labels")
    n_classes = p_fp32.shape[1]
    pred_fp32, pred_int8 = p_fp32.argmax(1), p_int8.argmax(1)
    included = bma_included(np.bincount(y_true, minlength=n_classes), min_count)
    idx = bootstrap_indices(len(y_true), n_boot, seed)
    bma = {name: balanced_accuracy(y_true, pred, n_classes, min_count)
           for name, pred in (("fp32", pred_fp32), ("int8", pred_int8))}
    ece = {name: expected_calibration_error(y_true, p, n_bins) for name, p in (("fp32", p_fp32), ("int8", p_int8))}
    bma_diffs = (mean_recall(bootstrap_recalls(y_true, pred_int8, idx, n_classes), included)
                 - mean_recall(bootstrap_recalls(y_true, pred_fp32, idx, n_classes), included))
    ece_diffs = _ece_resampled(y_true, p_int8, idx, n_bins) - _ece_resampled(y_true, p_fp32, idx, n_bins)
    bma_ci, ece_ci = percentile_interval(bma_diffs, level), percentile_interval(ece_diffs, level)
    agreement = float((pred_fp32 == pred_int8).mean())
    worse = bma_ci[1] is not None and bma_ci[1] < 0
    return {
        "n_images": int(len(y_true)), "top1_agreement": agreement, "agreement_target": AGREEMENT_TARGET,
        "agreement_ok": agreement >= AGREEMENT_TARGET,
        "max_abs_dp": float(np.abs(p_int8 - p_fp32).max()),
        "bal_acc": bma, "ece": ece,
        "bal_acc_delta": bma["int8"] - bma["fp32"], "bal_acc_delta_ci": list(bma_ci),
        "ece_delta": ece["int8"] - ece["fp32"], "ece_delta_ci": list(ece_ci),
        "ci_level": float(level), "n_resamples": int(n_boot), "calibration_bins": int(n_bins),
        "min_test_count": int(min_count), "verdict": "worse" if worse else "not worse",
    }
