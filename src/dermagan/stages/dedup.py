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


def run_dedup(cfg: Config, prepared: Path, synthetic_dir: Path, out_dir: Path, report_dir: Path,
              method: str | None = None) -> dict:
    """Filter one method's synthetic set; write kept PNGs + manifest and a report with a histogram.

    A sampled image near a val/test image is an error (the GAN saw no holdout image). A translation
    (``method`` with the registry's ``translation`` flag) is a function of one real train image, so it
    inherits that image's near-duplicates among other lesions' holdout photos: such translations are
    dropped (reason ``near_holdout``) and listed with their sources in the report, never kept."""
    from dermagan.gan.methods import get_method

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
    translation = method is not None and get_method(method).translation
    near = result.holdout_near_indices
    if len(near) and not translation:
        examples = manifest.loc[near[:5], "file"].tolist()
        raise DermaganError(f"{len(near)} synthetic image(s) are within the dedup threshold of a "
                            f"val/test image (e.g. {examples}); the GAN saw no holdout images, so investigate")
    if len(near):
        result.keep[near] = False
        result.reason[near] = "near_holdout"
        print(f"dedup: warning: dropped {len(near)} translation(s) within the dedup threshold of a val/test image "
              "(their real train source has a near-duplicate there)")
    manifest, report = decisions(manifest, result, thresholds, dedup.rule)
    if len(near):
        report["dropped_near_holdout"] = manifest.loc[near, [c for c in ("file", "source") if c in manifest]
                                                      ].to_dict("records")
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
