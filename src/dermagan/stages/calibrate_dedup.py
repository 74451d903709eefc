"""Record how perceptual-hash distances separate same-lesion pairs from different lesions."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from dermagan.atomic import atomic_dir  # noqa: E402
from dermagan.constants import SPLITS  # noqa: E402
from dermagan.data.prepared import read_split, read_split_table  # noqa: E402
from dermagan.dedup.calibrate import (  # noqa: E402
    different_lesion_nearest,
    pair_distances,
    same_lesion_pairs,
    threshold_table,
)
from dermagan.evaluate.plots import save  # noqa: E402
from dermagan.params import section  # noqa: E402
from dermagan.stages.dedup import hashes_of  # noqa: E402


def run_calibrate_dedup(params: dict, prepared: Path, out_dir: Path, sample: int = 2000, seed: int = 0) -> dict:
    """Hash every prepared image; compare same-lesion pair distances with nearest other-lesion distances."""
    table = read_split_table(Path(prepared)).set_index("image_id")
    arrays = [read_split(Path(prepared), s) for s in SPLITS]
    images = np.concatenate([a.images for a in arrays])
    lesions = table.loc[np.concatenate([a.image_ids for a in arrays]), "lesion_id"].to_numpy()
    pairs = same_lesion_pairs(lesions)
    summary, tables, distances = {"same_lesion_pairs": int(len(pairs)), "images": int(len(images))}, [], {}
    for kind, hashes in hashes_of(images, section(params, "dedup")).items():
        same, other = pair_distances(hashes, pairs), different_lesion_nearest(hashes, lesions, sample, seed)
        distances[kind] = (same, other)
        threshold = int(params["dedup"]["thresholds"][kind])
        summary[kind] = {"same_lesion_median": float(np.median(same)) if len(same) else None,
                         "nearest_other_lesion_median": float(np.median(other)),
                         "threshold": threshold,
                         "same_lesion_caught_at_threshold": float((same <= threshold).mean()) if len(same) else None,
                         "other_lesion_flagged_at_threshold": float((other <= threshold).mean())}
        tables.append(threshold_table(same, other).assign(kind=kind))
    with atomic_dir(Path(out_dir)) as tmp:
        pd.concat(tables).to_csv(tmp / "thresholds.csv", index=False, float_format="%.4f")
        (tmp / "calibration.json").write_text(json.dumps(summary, indent=2))
        save(calibration_figure(distances, params["dedup"]["thresholds"]), tmp / "distances.png")
    return summary


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
