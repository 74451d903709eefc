"""The generate stage: PNGs per method and class from the trained EMA generators, plus a manifest."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from dermagan.atomic import atomic_dir
from dermagan.constants import CLASSES
from dermagan.data.prepared import SplitArrays, read_split
from dermagan.errors import DermaganError
from dermagan.gan.cyclegan import GENERATOR_NAME as CYCLEGAN
from dermagan.gan.cyclegan import choose_sources, load_translator, translate
from dermagan.gan.generate import (
    load_generator,
    manifest_rows,
    read_generator_index,
    method_counts,
    sample_images,
    write_pngs,
)
from dermagan.params import section

MANIFEST = "manifest.csv"


def run_generate(params: dict, method: str, prepared: Path, gan_dir: Path, out_dir: Path) -> pd.DataFrame:
    """Write ``out_dir/<class>/*.png`` and ``out_dir/manifest.csv``; deterministic for ``gan.generate_seed``."""
    cfg = section(params, "gan")
    train = read_split(prepared, "train")
    real_counts = {c: int((train.labels == i).sum()) for i, c in enumerate(CLASSES)}
    wanted = method_counts(cfg, real_counts, method)  # gan.amount, or gan.amount_tuned.<method>.<class>
    factor = float(cfg.get("candidates_factor", 1.0))
    if factor < 1:
        raise DermaganError(f"params: gan.candidates_factor must be >= 1, got {factor}")
    counts = {dx: math.ceil(n * factor) for dx, n in wanted.items()}  # spares for dedup to drop
    index = read_generator_index(Path(gan_dir))
    seed = int(cfg["generate_seed"])
    frames = []
    with atomic_dir(Path(out_dir)) as tmp:
        for offset, (dx, n) in enumerate(counts.items()):
            name = "conditional" if method == "cdcgan" else dx
            if name not in index:
                raise DermaganError(f"no generator '{name}' for class {dx} in {gan_dir} (have {sorted(index)})")
            if method == CYCLEGAN:  # translate distinct real source-class train images
                images, sources = translate_train_images(Path(index[name]["path"]), train, dx, n, seed + offset)
            else:
                generator, saved = load_generator(Path(index[name]["path"]))
                label = saved["classes"].index(dx) if method == "cdcgan" else saved.get("label")
                images, sources = sample_images(generator, n, seed + offset, label), None
            files = write_pngs(images, tmp / dx, f"{method}_{dx}")
            rows = manifest_rows([f"{dx}/{f}" for f in files], dx, index[name]["version"], seed + offset, sources)
            frames.append(rows)
        manifest = pd.concat(frames, ignore_index=True)
        manifest.to_csv(tmp / MANIFEST, index=False)
    return manifest


def translate_train_images(path: Path, train: SplitArrays, dx: str, n: int,
                           seed: int) -> tuple[np.ndarray, list[str]]:
    """``n`` distinct train images of the translator's source class, drawn for ``seed`` and translated into
    ``dx`` by the CycleGAN G_AB saved at ``path``, and their image ids (the manifest's ``source``)."""
    translator, saved = load_translator(path)
    source_class = saved["source_class"]
    pool = np.flatnonzero(train.labels == CLASSES.index(source_class))
    if n > len(pool):
        raise DermaganError(f"params: gan.amount x gan.candidates_factor asks for {n} cyclegan images of {dx}, but "
                            f"the prepared train split has only {len(pool)} {source_class} images to translate "
                            "(each is used once)")
    picked = pool[choose_sources(len(pool), n, seed)]
    return translate(translator, train.images[picked]), [str(i) for i in train.image_ids[picked]]
