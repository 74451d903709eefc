"""The dedup stage: drop synthetic near-duplicates and memorised train images; fail on holdout leaks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from dermagan.atomic import atomic_dir
from dermagan.config import Config
from dermagan.data.prepared import read_split
from dermagan.data.trainset import MANIFEST
from dermagan.dedup import HASH_KINDS, deduplicate, hashes_of
from dermagan.dedup.report import decisions, nearest_train_histogram
from dermagan.errors import DermaganError
from dermagan.evaluate.plots import save


def run_dedup(cfg: Config, prepared: Path, synthetic_dir: Path, out_dir: Path, report_dir: Path) -> dict:
    """Filter one method's synthetic set; write kept PNGs + manifest and a report with a histogram."""
    if cfg.dedup is None:
        raise DermaganError("params: missing key 'dedup' (hash_size, whash_image_scale, rule, thresholds)")
    dedup = cfg.dedup
    manifest = pd.read_csv(Path(synthetic_dir) / MANIFEST)
    synthetic = np.stack([np.asarray(Image.open(Path(synthetic_dir) / f).convert("RGB")) for f in manifest["file"]])
    train = read_split(prepared, "train")
    holdout = np.concatenate([read_split(prepared, "val").images, read_split(prepared, "test").images])
    thresholds = {k: int(dedup.thresholds[k]) for k in HASH_KINDS}

    def hashes(images):
        return hashes_of(images, dedup.hash_size, dedup.whash_image_scale)

    result = deduplicate(hashes(synthetic), hashes(train.images), hashes(holdout), thresholds, dedup.rule)
    manifest, report = decisions(manifest, result, thresholds, dedup.rule)
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
