"""Record how perceptual-hash distances separate same-lesion pairs from different lesions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dermagan.atomic import atomic_dir
from dermagan.config import Config
from dermagan.constants import SPLITS
from dermagan.data.prepared import read_split, read_split_table
from dermagan.dedup import hashes_of
from dermagan.dedup.calibrate import calibrate
from dermagan.dedup.report import calibration_figure
from dermagan.errors import DermaganError
from dermagan.evaluate.plots import save


def run_calibrate_dedup(cfg: Config, prepared: Path, out_dir: Path, sample: int = 2000, seed: int = 0) -> dict:
    """Hash every prepared image; compare same-lesion pair distances with nearest other-lesion distances."""
    if cfg.dedup is None:
        raise DermaganError("params: missing key 'dedup' (hash_size, whash_image_scale, rule, thresholds)")
    table = read_split_table(Path(prepared)).set_index("image_id")
    arrays = [read_split(Path(prepared), s) for s in SPLITS]
    images = np.concatenate([a.images for a in arrays])
    lesions = table.loc[np.concatenate([a.image_ids for a in arrays]), "lesion_id"].to_numpy()
    hashes = hashes_of(images, cfg.dedup.hash_size, cfg.dedup.whash_image_scale)
    thresholds = dict(cfg.dedup.thresholds)
    summary, thresholds_table, distances = calibrate(hashes, lesions, thresholds, sample, seed)
    with atomic_dir(Path(out_dir)) as tmp:
        thresholds_table.to_csv(tmp / "thresholds.csv", index=False, float_format="%.4f")
        (tmp / "calibration.json").write_text(json.dumps(summary, indent=2))
        save(calibration_figure(distances, thresholds), tmp / "distances.png")
    return summary
