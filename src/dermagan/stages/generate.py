"""The generate stage: PNGs per method and class from the trained EMA generators, plus a manifest."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from dermagan.atomic import atomic_dir
from dermagan.config import Config
from dermagan.data.prepared import read_split
from dermagan.data.trainset import MANIFEST
from dermagan.gan.generate import (
    candidate_counts,
    index_entry,
    make_class_images,
    manifest_rows,
    method_counts,
    read_generator_index,
    write_pngs,
)


def run_generate(cfg: Config, method: str, prepared: Path, gan_dir: Path, out_dir: Path) -> pd.DataFrame:
    """Write ``out_dir/<class>/*.png`` and ``out_dir/manifest.csv``; deterministic for ``gan.generate_seed``."""
    train = read_split(prepared, "train")
    real_counts = {c: int((train.labels == i).sum()) for i, c in enumerate(cfg.classes)}
    wanted = method_counts(cfg.gan.plain(), real_counts, method)  # gan.amount, or gan.amount_tuned.<method>.<class>
    counts = candidate_counts(wanted, float(cfg.gan.candidates_factor))  # spares for dedup to drop
    index = read_generator_index(Path(gan_dir))
    seed = int(cfg.gan.generate_seed)
    frames = []
    with atomic_dir(Path(out_dir)) as tmp:
        for offset, (dx, n) in enumerate(counts.items()):
            entry = index_entry(index, method, dx, Path(gan_dir))
            images, sources = make_class_images(method, Path(entry["path"]), dx, n, seed + offset, train, cfg.classes)
            files = write_pngs(images, tmp / dx, f"{method}_{dx}")
            frames.append(manifest_rows([f"{dx}/{f}" for f in files], dx, entry["version"], seed + offset, sources))
        manifest = pd.concat(frames, ignore_index=True)
        manifest.to_csv(tmp / MANIFEST, index=False)
    return manifest
