"""The dedup stage: drop synthetic near-duplicates and memorised train images; fail on holdout leaks."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from dermagan.atomic import atomic_dir  # noqa: E402
from dermagan.data.prepared import read_split  # noqa: E402
from dermagan.dedup import HASH_KINDS, deduplicate, hash_images  # noqa: E402
from dermagan.errors import DermaganError  # noqa: E402
from dermagan.evaluate.plots import save  # noqa: E402
from dermagan.params import section  # noqa: E402
from dermagan.stages.generate import MANIFEST  # noqa: E402


def hashes_of(images, cfg: dict) -> dict[str, np.ndarray]:
    """Every hash kind at one fixed scale, so real and synthetic images are comparable."""
    options = {"phash": {}, "whash": {"image_scale": int(cfg["whash_image_scale"])}}
    return {k: hash_images(images, k, int(cfg["hash_size"]), **options[k]) for k in HASH_KINDS}


def run_dedup(params: dict, prepared: Path, synthetic_dir: Path, out_dir: Path, report_dir: Path) -> dict:
    """Filter one method's synthetic set; write kept PNGs + manifest and a report with a histogram."""
    cfg = section(params, "dedup")
    manifest = pd.read_csv(Path(synthetic_dir) / MANIFEST)
    synthetic = np.stack([np.asarray(Image.open(Path(synthetic_dir) / f).convert("RGB")) for f in manifest["file"]])
    train = read_split(prepared, "train")
    holdout = np.concatenate([read_split(prepared, "val").images, read_split(prepared, "test").images])
    thresholds = {k: int(cfg["thresholds"][k]) for k in HASH_KINDS}
    rule = str(cfg.get("rule", "any"))
    result = deduplicate(hashes_of(synthetic, cfg), hashes_of(train.images, cfg), hashes_of(holdout, cfg), thresholds,
                         rule)
    manifest["reason"] = result.reason
    for kind in HASH_KINDS:
        manifest[f"nearest_train_{kind}"] = result.train_distance[kind]
    report = {"thresholds": thresholds, "rule": rule, "counts": result.counts(), "holdout_near": result.holdout_near_count,
              "per_class": manifest.groupby(["class", "reason"]).size().unstack(fill_value=0).to_dict("index")}
    if result.holdout_near_count:
        examples = manifest.loc[result.holdout_near_indices[:5], "file"].tolist()
        raise DermaganError(f"{result.holdout_near_count} synthetic image(s) are within the dedup threshold of a "
                            f"val/test image (e.g. {examples}); the GAN saw no holdout images, so investigate")
    with atomic_dir(Path(out_dir)) as tmp_out, atomic_dir(Path(report_dir)) as tmp_report:
        kept = manifest[result.keep]
        for file in kept["file"]:
            (tmp_out / file).parent.mkdir(parents=True, exist_ok=True)
            (tmp_out / file).write_bytes((Path(synthetic_dir) / file).read_bytes())
        kept.to_csv(tmp_out / MANIFEST, index=False)
        manifest.to_csv(tmp_report / "decisions.csv", index=False)
        (tmp_report / "report.json").write_text(json.dumps(report, indent=2, default=int))
        save(nearest_train_histogram(manifest, thresholds), tmp_report / "nearest_train_distance.png")
    return report


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
