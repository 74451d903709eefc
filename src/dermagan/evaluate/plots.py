"""Figures people would rather look at than read: curves, confusion matrix, ROC."""

from __future__ import annotations


import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import confusion_matrix, roc_curve  # noqa: E402


def history_figure(history: pd.DataFrame, title: str) -> plt.Figure:
    """Train/val loss and val balanced accuracy per epoch."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_loss.plot(history["epoch"], history["train/loss"], marker="o", label="train loss")
    ax_loss.plot(history["epoch"], history["val/loss"], marker="o", label="val loss (real)")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_loss.legend()
    ax_acc.plot(history["epoch"], history["val/bal_acc"], marker="o", color="C2", label="val balanced acc")
    ax_acc.plot(history["epoch"], history["train/acc"], marker=".", color="C7", label="train acc")
    ax_acc.set(xlabel="epoch", ylim=(0, 1), title="accuracy")
    ax_acc.legend()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def confusion_figure(y_true: np.ndarray, y_pred: np.ndarray, classes: tuple[str, ...], title: str) -> plt.Figure:
    """Row-normalised confusion matrix (recall on the diagonal) with raw counts in each cell."""
    counts = confusion_matrix(y_true, y_pred, labels=range(len(classes)))
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.2, 5.4))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{rates[i, j]:.2f}\n({counts[i, j]})", ha="center", va="center", fontsize=7,
                    color="white" if rates[i, j] > 0.6 else "black")
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xticklabels=classes, yticklabels=classes,
           xlabel="predicted", ylabel="true", title=title)
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of true class")
    fig.tight_layout()
    return fig


def roc_points(y_true: np.ndarray, proba: np.ndarray, classes: tuple[str, ...]) -> pd.DataFrame:
    """One-vs-rest ROC curve points of every class: columns class, fpr, tpr."""
    frames = []
    for c, name in enumerate(classes):
        positives = y_true == c
        if 0 < positives.sum() < len(y_true):
            fpr, tpr, _ = roc_curve(positives, proba[:, c])
            frames.append(pd.DataFrame({"class": name, "fpr": fpr, "tpr": tpr}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["class", "fpr", "tpr"])


def roc_table(points: pd.DataFrame, grid_size: int = 101, group: str = "class") -> pd.DataFrame:
    """ROC curves on one shared FPR grid, long format: columns ``<group>``, ``fpr``, ``tpr`` (a DVC plot
    that needs no class names). ``points``: columns ``<group>``, ``fpr``, ``tpr`` (e.g. :func:`roc_points`)."""
    grid = np.linspace(0, 1, grid_size)
    frames = [pd.DataFrame({group: name, "fpr": grid, "tpr": np.interp(grid, g["fpr"], g["tpr"])})
              for name, g in points.groupby(group, sort=False)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[group, "fpr", "tpr"])


def roc_figure(points: pd.DataFrame, aucs: dict[str, float | None], title: str, group: str = "class") -> plt.Figure:
    """ROC curves (one per ``group`` value: class, or arm), AUC in the legend."""
    fig, ax = plt.subplots(figsize=(5.6, 5))
    for name, g in points.groupby(group, sort=False):
        auc = aucs.get(name)
        ax.plot(g["fpr"], g["tpr"], label=f"{name} (AUC {auc:.3f})" if auc is not None else name)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def save(fig: plt.Figure, path) -> None:
    fig.savefig(path, dpi=110)
    plt.close(fig)
