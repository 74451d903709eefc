"""Calibration of predicted probabilities: reliability table, ECE, temperature scaling, reliability diagram.

People read the classifier's probabilities as risks, so the evaluate stage checks that a predicted
top-label confidence of 0.8 is right about 80% of the time (top-label calibration, Guo et al.,
"On Calibration of Modern Neural Networks", ICML 2017).

Binning convention (used by every function here): ``n_bins`` equal-width bins over the top-label
confidence ``max_k proba[i, k]`` in [0, 1]; bin ``b`` holds confidences in ``(lower, upper]`` with
``lower = b / n_bins`` and ``upper = (b + 1) / n_bins``, except that the first bin also holds 0,
i.e. ``[0, 1/n_bins]``. A confidence of exactly 1.0 therefore lands in the last bin.
The predicted label is ``proba.argmax(1)`` (first class on ties), as elsewhere in the project.
"""

from __future__ import annotations


import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

# fit_temperature keeps T within these bounds: a fit that runs into one means the logits carry
# (almost) no information about the labels (T -> infinity) or separate them perfectly (T -> 0).
TEMPERATURE_BOUNDS = (1e-3, 1e3)


def _check(y_true, proba, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true)
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2:
        raise ValueError(f"proba must be 2-D (n_samples, n_classes), got shape {proba.shape}")
    if y_true.ndim != 1 or len(y_true) != len(proba):
        raise ValueError(f"y_true must be 1-D with {len(proba)} labels, got shape {y_true.shape}")
    if int(n_bins) < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    return y_true, proba


def reliability_table(y_true, proba, n_bins: int = 15) -> pd.DataFrame:
    """Per-bin mean top-label confidence and accuracy.

    Columns: ``bin`` (0..n_bins-1), ``lower``, ``upper`` (the bin holds confidences in
    ``(lower, upper]``; the first bin also holds 0), ``confidence`` (mean top-label confidence),
    ``accuracy`` (share of samples whose top label is correct), ``count``. Always ``n_bins`` rows:
    an empty bin has count 0 and NaN confidence and accuracy.
    """
    y_true, proba = _check(y_true, proba, n_bins)
    n_bins = int(n_bins)
    edges = np.arange(n_bins + 1) / n_bins  # i / n correctly rounded: a confidence of 0.6 equals edge 3 of 5
    confidence = np.clip(proba.max(axis=1) if len(proba) else np.zeros(0), 0.0, 1.0)
    correct = (proba.argmax(axis=1) == y_true) if len(proba) else np.zeros(0, dtype=bool)
    # side="left" on the inner edges: a confidence equal to an edge goes to the bin below it (right-inclusive).
    index = np.searchsorted(edges[1:-1], confidence, side="left")
    count = np.bincount(index, minlength=n_bins)
    conf_sum = np.bincount(index, weights=confidence, minlength=n_bins)
    hits = np.bincount(index, weights=correct.astype(np.float64), minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, conf_sum / np.maximum(count, 1), np.nan)
        accuracy = np.where(count > 0, hits / np.maximum(count, 1), np.nan)
    return pd.DataFrame({"bin": np.arange(n_bins), "lower": edges[:-1], "upper": edges[1:],
                         "confidence": mean_conf, "accuracy": accuracy, "count": count.astype(np.int64)})


def ece_from_table(table: pd.DataFrame) -> float:
    """ECE of a :func:`reliability_table`: sum over bins of (count / N) * |accuracy - confidence|; NaN if N = 0."""
    total = int(table["count"].sum())
    if total == 0:
        return float("nan")
    used = table[table["count"] > 0]
    return float((used["count"] / total * (used["accuracy"] - used["confidence"]).abs()).sum())


def expected_calibration_error(y_true, proba, n_bins: int = 15) -> float:
    """Top-label expected calibration error (Guo et al. 2017) with the module's binning; NaN for no samples."""
    return ece_from_table(reliability_table(y_true, proba, n_bins))


def fit_temperature(logits: np.ndarray | torch.Tensor, labels, max_iter: int = 200) -> float:
    """The scalar T > 0 that minimises the mean NLL of ``softmax(logits / T)`` on ``labels``.

    Fit on a validation split, never on test. Optimises ``log T`` (start 0, i.e. T = 1) with
    torch's L-BFGS and a strong-Wolfe line search in float64 (deterministic on CPU). The result
    is clipped to ``TEMPERATURE_BOUNDS``.
    """
    z = torch.as_tensor(np.asarray(logits.detach().cpu() if isinstance(logits, torch.Tensor) else logits),
                        dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels.detach().cpu() if isinstance(labels, torch.Tensor) else labels),
                        dtype=torch.int64)
    if z.ndim != 2 or y.ndim != 1 or len(y) != len(z):
        raise ValueError(f"logits must be (n, k) and labels (n,), got {tuple(z.shape)} and {tuple(y.shape)}")
    if len(y) == 0:
        raise ValueError("fit_temperature needs at least one sample")
    if int(y.min()) < 0 or int(y.max()) >= z.shape[1]:
        raise ValueError(f"labels must lie in [0, {z.shape[1] - 1}]")
    if not torch.isfinite(z).all():
        raise ValueError("logits contain NaN or infinite values")
    low, high = np.log(TEMPERATURE_BOUNDS[0]), np.log(TEMPERATURE_BOUNDS[1])
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=int(max_iter), tolerance_grad=1e-10,
                                  tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        # Clamped inside the loss so a run-away step cannot overflow exp(); the gradient is 0 outside.
        loss = torch.nn.functional.cross_entropy(z / log_t.clamp(low, high).exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    value = float(log_t.detach())
    if not np.isfinite(value):
        raise ValueError("temperature fit diverged")
    return float(np.exp(np.clip(value, low, high)))


def uncalibrated_proba(proba, temperature: float) -> np.ndarray:
    """The model's probabilities before temperature scaling, float64.

    ``proba = softmax(z / T)`` gives ``log proba = z / T - c`` with one constant ``c`` per row,
    so ``softmax(T * log proba) = softmax(z)`` exactly. Zeros (underflow) are floored at the
    smallest positive float64 before the log; the softmax subtracts the row maximum.
    """
    temperature = float(temperature)
    if not np.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite positive number, got {temperature}")
    proba = np.asarray(proba, dtype=np.float64)
    scaled = temperature * np.log(np.maximum(proba, np.finfo(np.float64).tiny))
    scaled -= scaled.max(axis=-1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=-1, keepdims=True)


def reliability_figure(table: pd.DataFrame, title: str, ece: float | None) -> plt.Figure:
    """Reliability diagram: accuracy per confidence bin against the diagonal, the gap to each bin's
    mean confidence shaded, and the number of images per bin beneath. ECE in the legend."""
    fig, (ax, ax_count) = plt.subplots(2, 1, figsize=(5.6, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    centers = ((table["lower"] + table["upper"]) / 2).to_numpy()
    width = (table["upper"] - table["lower"]).to_numpy()
    used = (table["count"] > 0).to_numpy()
    accuracy = table["accuracy"].to_numpy(dtype=float)
    confidence = table["confidence"].to_numpy(dtype=float)
    ece_text = f"ECE {ece:.3f}" if ece is not None and np.isfinite(ece) else "ECE n/a"
    ax.bar(centers[used], accuracy[used], width=width[used], color="C0", edgecolor="black", linewidth=0.6,
           label="accuracy")
    ax.bar(centers[used], confidence[used] - accuracy[used], bottom=accuracy[used], width=width[used],
           color="C3", alpha=0.3, edgecolor="C3", hatch="//", linewidth=0.6, label="gap to mean confidence")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8, label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title=f"{title}\n{ece_text}")
    ax.legend(fontsize=8, loc="upper left")
    ax_count.bar(centers, table["count"].to_numpy(), width=width, color="C7", edgecolor="black", linewidth=0.6)
    ax_count.set(xlim=(0, 1), xlabel="top-label confidence", ylabel="images")
    fig.tight_layout()
    return fig
