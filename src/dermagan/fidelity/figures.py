"""The fidelity report's figures: real vs kept synthetic images, nearest real images, nearest-train distances."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from dermagan.evaluate.plots import save
from dermagan.evaluate.sample_grids import real_vs_synthetic_figure
from dermagan.fidelity.report import HASHES, Scored

GRID_FIGURE = "real_vs_synthetic.png"
DISTANCE_FIGURE = "nearest_train_distance.png"
NEAREST_FIGURE = "nearest_train_examples.png"


def save_figures(scored: Scored, decisions: pd.DataFrame, classes: list[str], method: str, grid_images: int,
                 nearest_examples: int, folder: Path) -> list[Path]:
    """Write the three figures into ``folder``; return their paths (grid, nearest examples, distances)."""
    folder = Path(folder)
    title = f"{method}: random real train vs kept synthetic images"
    save(real_vs_synthetic_figure(scored.grid_real, scored.grid_synthetic, grid_images,
                                  f"synthetic ({method}, after dedup)", title=title), folder / GRID_FIGURE)
    save(real_vs_synthetic_figure(scored.near_real, scored.near_synthetic, nearest_examples,
                                  f"synthetic ({method})", real_title="nearest real train image",
                                  title=f"{method}: kept synthetic images (right) and, in the same column on "
                                        "the left, the real train image nearest to each in the domain space"),
         folder / NEAREST_FIGURE)
    save(nearest_train_figure(decisions, classes, method), folder / DISTANCE_FIGURE)
    return [folder / GRID_FIGURE, folder / NEAREST_FIGURE, folder / DISTANCE_FIGURE]


def nearest_train_figure(decisions: pd.DataFrame, classes: list[str], method: str) -> plt.Figure:
    """Per class, each generated image's Hamming distance to its nearest real train image (kept vs removed)."""
    fig, axes = plt.subplots(1, len(HASHES), figsize=(5 * len(HASHES), 3.8), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, kind in zip(axes[0], HASHES):
        column = f"nearest_train_{kind}"
        groups = [decisions.loc[decisions["class"] == dx, [column, "reason"]] for dx in classes]
        ax.boxplot([g[column].to_numpy(float) for g in groups], showfliers=False)
        ax.set_xticks(range(1, len(classes) + 1), classes)
        for i, group in enumerate(groups, start=1):
            kept = (group["reason"] == "kept").to_numpy()
            x = i + rng.uniform(-0.18, 0.18, len(group))
            ax.scatter(x[kept], group[column][kept], s=6, alpha=0.5, color="C0", label="kept" if i == 1 else None)
            ax.scatter(x[~kept], group[column][~kept], s=8, alpha=0.8, color="C3",
                       label="removed" if i == 1 else None)
        ax.set(xlabel="class", ylabel=f"{kind} Hamming distance", title=f"{kind}: nearest real train image")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7, loc="upper right")
    fig.suptitle(f"{method}: synthetic images' distance to the nearest real train image")
    fig.tight_layout()
    return fig
