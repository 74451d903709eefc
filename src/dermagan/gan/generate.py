"""Sample PNGs from trained generators, deterministically, with a manifest."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from dermagan.errors import DermaganError
from dermagan.gan.models import Generator


def synthetic_counts(real_counts: dict[str, int], classes: list[str], mode: str, value: float) -> dict[str, int]:
    """How many synthetic images each augmented class gets.

    ``count``: ``value`` images per class. ``share``: top each class up to ``value`` x the real
    train split size (never negative).
    """
    total = sum(real_counts.values())
    if mode == "count":
        return {c: int(value) for c in classes}
    if mode == "share":
        if not 0 < value < 1:
            raise DermaganError(f"params: gan.amount.value must be in (0, 1) for mode share, got {value}")
        return {c: max(0, math.ceil(value * total) - real_counts.get(c, 0)) for c in classes}
    raise DermaganError(f"params: gan.amount.mode must be 'count' or 'share', got '{mode}'")


def load_generator(path: Path) -> tuple[Generator, dict]:
    """Rebuild the EMA generator written by the train_gan stage."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    cfg = saved["config"]
    g = Generator(cfg["image_size"], cfg["latent_dim"], cfg["ngf"], cfg["num_classes"])
    g.load_state_dict(saved["state_dict"])
    return g.eval(), saved


@torch.no_grad()
def sample_images(generator: Generator, n: int, seed: int, label: int | None = None,
                  batch_size: int = 256) -> np.ndarray:
    """``n`` uint8 images (N, H, W, 3); latent i depends only on (seed, i), not on batching."""
    latents = torch.randn(n, generator.latent_dim, generator=torch.Generator().manual_seed(seed))
    out = []
    for chunk in latents.split(batch_size):
        y = None if label is None else torch.full((len(chunk),), label, dtype=torch.long)
        x = generator(chunk, y)
        out.append(((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out) if out else np.zeros((0, generator.image_size, generator.image_size, 3), np.uint8)


def write_pngs(images: np.ndarray, folder: Path, prefix: str) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, image in enumerate(images):
        name = f"{prefix}_{i:05d}.png"
        Image.fromarray(image).save(folder / name)
        names.append(name)
    return names


def manifest_rows(files: list[str], dx: str, model_version: str, seed: int) -> pd.DataFrame:
    return pd.DataFrame({"file": files, "class": dx, "generator_version": model_version, "seed": seed,
                         "latent_index": range(len(files))})
