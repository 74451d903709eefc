"""The dedup and calibrate-dedup stages' decision table and figures."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


def nearest_train_histogram(manifest: pd.DataFrame, thresholds: dict[str, int]) -> plt.Figure:
    """Distance of each synthetic image to its nearest real train image, per hash kind."""
    fig, axes = plt.subplots(1, len(thresholds), figsize=(5 * len(thresholds), 3.6))
    for ax, (kind, limit) in zip(np.atleast_1d(axes), thresholds.items()):
        for dx, group in manifest.groupby("class"):
            ax.hist(group[f"nearest_train_{kind}"], bins=range(0, 41), alpha=0.5, label=dx)
        ax.axvline(limit + 0.5, color="red", ls="--", label=f"threshold {limit}")
        ax.set(xlabel=f"{kind} Hamming distance to nearest real train image", ylabel="synthetic images")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def calibration_figure(distances: dict, thresholds: dict) -> plt.Figure:
    """Histograms of same-lesion pair distances and nearest different-lesion distances per hash."""
    fig, axes = plt.subplots(1, len(distances), figsize=(5.5 * len(distances), 3.8))
    for ax, (kind, (same, other)) in zip(np.atleast_1d(axes), distances.items()):
        bins = range(0, 8 * 8 + 2)
        ax.hist(same, bins=bins, alpha=0.6, density=True, label="same lesion, other photo")
        ax.hist(other, bins=bins, alpha=0.6, density=True, label="nearest image of another lesion")
        ax.axvline(int(thresholds[kind]) + 0.5, color="red", ls="--", label=f"threshold {thresholds[kind]}")
        ax.set(xlabel=f"{kind} Hamming distance", ylabel="density", title=kind)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def decisions(manifest: pd.DataFrame, result, thresholds: dict[str, int], rule: str) -> tuple[pd.DataFrame, dict]:
    """The manifest with each image's ``reason`` and nearest-train distances, and the report.json summary."""
    manifest = manifest.copy()
    manifest["reason"] = result.reason
    for kind in thresholds:
        manifest[f"nearest_train_{kind}"] = result.train_distance[kind]
    report = {"thresholds": thresholds, "rule": rule, "counts": result.counts(), "holdout_near": result.holdout_near_count,
              "per_class": manifest.groupby(["class", "reason"]).size().unstack(fill_value=0).to_dict("index")}
    return manifest, report
