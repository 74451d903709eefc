"""Real-vs-synthetic image grids: the figure to look at before trusting any fidelity number."""

from __future__ import annotations


import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def random_subset(images: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Up to ``n`` images drawn without replacement, in a seed-determined order."""
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(images), size=min(n, len(images)), replace=False)
    return images[np.sort(pick)]


def real_vs_synthetic_figure(real: dict[str, np.ndarray], synthetic: dict[str, np.ndarray], per_side: int,
                             synthetic_title: str, real_title: str = "real (train)",
                             title: str | None = None) -> plt.Figure:
    """One row per class: ``per_side`` real images on the left, ``per_side`` synthetic ones on the right.

    ``real`` and ``synthetic`` map class -> uint8 images (N, H, W, 3); only the first ``per_side`` of each
    are drawn (pick them with ``random_subset``). Empty slots stay blank; a class with no images says so.
    """
    classes = list(real)
    cell = 1.1
    fig = plt.figure(figsize=(2 * per_side * cell + 0.9, len(classes) * cell + 0.9), layout="constrained")
    halves = fig.subfigures(1, 2, wspace=0.04)
    for half, images, caption in ((halves[0], real, real_title), (halves[1], synthetic, synthetic_title)):
        axes = np.asarray(half.subplots(len(classes), per_side, squeeze=False))
        for row, name in enumerate(classes):
            _draw_row(axes[row], images.get(name, np.zeros((0, 1, 1, 3), np.uint8)), name)
        half.suptitle(caption, fontsize=12, fontweight="bold")
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def _draw_row(axes: np.ndarray, images: np.ndarray, name: str) -> None:
    """Fill one row of axes with images, the class name as the row label."""
    for j, ax in enumerate(axes):
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        if j < len(images):
            ax.imshow(images[j], interpolation="nearest")
    axes[0].set_ylabel(name, fontsize=11, rotation=0, ha="right", va="center")
    if not len(images):
        axes[0].text(0.5, 0.5, "no images", ha="center", va="center", fontsize=8, color="grey",
                     transform=axes[0].transAxes)
