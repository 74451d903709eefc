"""Sample PNGs from trained generators, deterministically, with a manifest."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from dermagan.data.prepared import SplitArrays
from dermagan.errors import DermaganError
from dermagan.gan.factory import create_generator

INDEX = "generators.json"


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


def method_counts(gan: dict, real_counts: dict[str, int], method: str | None) -> dict[str, int]:
    """``synthetic_counts`` from the ``gan`` params block, with ``gan.amount_tuned.<method>.<class>``
    (written by ``dermagan tune gan --apply``) replacing the count of a tuned class."""
    amount = gan["amount"]
    counts = synthetic_counts(real_counts, list(gan["classes"]), amount["mode"], float(amount["value"]))
    tuned = ((gan.get("amount_tuned") or {}).get(method) or {}) if method else {}
    for dx, n in tuned.items():
        if dx in counts:
            if not isinstance(n, int) or n < 0:
                raise DermaganError(f"params: gan.amount_tuned.{method}.{dx} must be a count >= 0, got {n!r}")
            counts[dx] = n
    return counts


def read_generator_index(gan_dir: Path) -> dict[str, dict]:
    """Generator name -> index entry (run, registered version, classes, ``path`` of its weights).

    A method's generators are listed in ``gan_dir/generators.json`` (DCGAN) or in one
    ``generators.json`` per sub-folder (STGAN stage 2 writes one folder per class).
    """
    gan_dir = Path(gan_dir)
    files = [gan_dir / INDEX] if (gan_dir / INDEX).exists() else sorted(gan_dir.glob(f"*/{INDEX}"))
    if not files:
        raise DermaganError(f"no {INDEX} in {gan_dir} or its sub-folders: train the generators first")
    index = {}
    for file in files:
        for name, entry in json.loads(file.read_text()).items():
            index[name] = {**entry, "path": str(file.parent / entry.get("file", f"{name}.pt"))}
    return index


def load_generator(path: Path) -> tuple[torch.nn.Module, dict]:
    """Rebuild an EMA generator written by a GAN training stage (DCGAN or FastGAN)."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    cfg = saved["config"]
    g = create_generator(saved.get("generator", "dcgan"), image_size=cfg["image_size"], latent_dim=cfg["latent_dim"],
                         ngf=cfg["ngf"], num_classes=cfg["num_classes"])
    g.load_state_dict(saved["state_dict"])
    return g.eval(), saved


@torch.no_grad()
def sample_images(generator: torch.nn.Module, n: int, seed: int, label: int | np.ndarray | None = None,
                  batch_size: int = 256) -> np.ndarray:
    """``n`` uint8 images (N, H, W, 3), deterministic for ``seed``, on the generator's device.

    ``label``: one class for every image, or one per image (an array of ``n``), or None.
    Latent i depends only on (seed, i); FastGAN's injected noise comes from torch's RNG, seeded
    here (and restored afterwards), so its images also depend on the batch size.
    """
    device = next(generator.parameters()).device
    latents = torch.randn(n, generator.latent_dim, generator=torch.Generator().manual_seed(seed))
    labels = None if label is None else torch.as_tensor(np.broadcast_to(np.asarray(label), (n,)).copy()).long()
    out = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for start in range(0, n, batch_size):
            chunk = latents[start:start + batch_size].to(device)
            y = None if labels is None else labels[start:start + batch_size].to(device)
            x = generator(chunk, y)
            out.append(((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, generator.image_size, generator.image_size, 3), np.uint8)


def write_pngs(images: np.ndarray, folder: Path, prefix: str) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, image in enumerate(images):
        name = f"{prefix}_{i:05d}.png"
        Image.fromarray(image).save(folder / name)
        names.append(name)
    return names


def manifest_rows(files: list[str], dx: str, model_version: str, seed: int,
                  sources: list[str] | None = None) -> pd.DataFrame:
    """Manifest rows of one class; ``sources`` (image-to-image methods): the real image each one was made from."""
    rows = pd.DataFrame({"file": files, "class": dx, "generator_version": model_version, "seed": seed,
                         "latent_index": range(len(files))})
    if sources is not None:
        rows["source"] = list(sources)
    return rows


def candidate_counts(wanted: dict[str, int], factor: float) -> dict[str, int]:
    """``wanted`` images per class times ``factor`` (>= 1, rounded up): spares for dedup to drop."""
    if factor < 1:
        raise DermaganError(f"params: gan.candidates_factor must be >= 1, got {factor}")
    return {dx: math.ceil(n * factor) for dx, n in wanted.items()}


def index_entry(index: dict[str, dict], method: str, dx: str, gan_dir: Path) -> dict:
    """The index entry of the generator that makes class ``dx`` for ``method``."""
    from dermagan.gan.methods import generator_name

    name = generator_name(method, dx)
    if name not in index:
        raise DermaganError(f"no generator '{name}' for class {dx} in {gan_dir} (have {sorted(index)})")
    return index[name]


def make_class_images(method: str, path: Path, dx: str, n: int, seed: int, train: SplitArrays,
                      task_classes: Sequence[str]) -> tuple[np.ndarray, list[str] | None]:
    """``n`` images of class ``dx`` from the generator saved at ``path``, and their sources (translations only).

    A translation method translates distinct real source-class train images; a conditional one
    samples its class label; any other samples its saved label (None, or stage 2's fixed class).
    """
    from dermagan.gan.methods import get_method

    kind = get_method(method)
    if kind.translation:
        return translate_train_images(path, train, dx, n, seed, task_classes, method)
    generator, saved = load_generator(path)
    label = saved["classes"].index(dx) if kind.conditional else saved.get("label")
    return sample_images(generator, n, seed, label), None


def translate_train_images(path: Path, train: SplitArrays, dx: str, n: int, seed: int,
                           task_classes: Sequence[str], method: str = "cyclegan") -> tuple[np.ndarray, list[str]]:
    """``n`` distinct train images of the translator's source class, drawn for ``seed`` and translated into
    ``dx`` by the CycleGAN G_AB saved at ``path``, and their image ids (the manifest's ``source``)."""
    from dermagan.gan.cyclegan import choose_sources, load_translator, translate

    translator, saved = load_translator(path)
    source_class = saved["source_class"]
    pool = np.flatnonzero(train.labels == list(task_classes).index(source_class))
    if n > len(pool):
        raise DermaganError(f"params: gan.amount x gan.candidates_factor asks for {n} {method} images of {dx}, but "
                            f"the prepared train split has only {len(pool)} {source_class} images to translate "
                            "(each is used once)")
    picked = pool[choose_sources(len(pool), n, seed)]
    return translate(translator, train.images[picked]), [str(i) for i in train.image_ids[picked]]
