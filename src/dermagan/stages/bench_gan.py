"""``dermagan bench-gan``: STGAN step throughput, and domain-space fidelity against images seen.

Not a pipeline stage: it measures. The throughput part times the real training step against the
raw forward+backward passes of the same networks. With ``train_images`` it also trains a fresh
network and scores its EMA generator every ``eval_every`` images in the domain space (the encoder
of the domain_encoder stage) against the real train images, beside the real-val-vs-train yardstick.
This is how the discriminators were compared and how a bar out of reach shows its curve.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dermagan.atomic import atomic_dir, atomic_file
from dermagan.config import Config
from dermagan.config.layout import LAYOUT
from dermagan.data.prepared import read_split
from dermagan.device import pick_device
from dermagan.errors import DermaganError
from dermagan.fidelity import domain_fidelity, encode, load_encoder
from dermagan.gan.artifacts import BASE_FILE
from dermagan.gan.bench import bench_grid_dir, curve_labels, fidelity_curve, image_grid, profile_gan_step
from dermagan.gan.stgan import StganTrainer, stage_one_state
from dermagan.serialize import json_safe


def run_bench_gan(cfg: Config, prepared: Path, *, stage: int = 1, dx: str | None = None,
                  discriminator: str | None = None, feature_size: int | None = None, steps: int = 10,
                  train_images: int = 0, eval_every: int = 4000, n_samples: int = 1000,
                  domain_encoder: Path = LAYOUT.domain_encoder, out: Path | None = None,
                  base: Path | None = None) -> dict:
    """Throughput (always) and, with ``train_images`` > 0, the fidelity curve of a training run.

    The curve's run starts fresh, or (stage 2 with ``base``) from stage 1's weights in
    ``base/base.pt``, exactly as the train_stgan stage does.
    """
    if stage == 2:
        dx = dx or cfg.gan.classes[0]
    stgan = cfg.stgan_config(f"stage{stage}", dx if stage == 2 else None)
    overrides = {k: v for k, v in {"discriminator": discriminator, "feature_size": feature_size}.items() if v}
    stgan = replace(stgan, **overrides)
    device = pick_device(cfg.train.device)
    train, val = read_split(Path(prepared), "train"), read_split(Path(prepared), "val")
    mask = np.ones(len(train), bool) if stage == 1 else train.labels == cfg.classes.index(dx)
    images = torch.from_numpy(train.images[mask]).permute(0, 3, 1, 2)
    labels = torch.from_numpy(train.labels[mask]).long()
    result = {"stage": stage, "class": dx, "discriminator": stgan.discriminator, "config": asdict(stgan),
              "throughput": profile_gan_step(StganTrainer(stgan, images, labels, device), steps)}
    grids: dict[str, np.ndarray] = {}
    if train_images > 0:
        if eval_every <= 0:
            raise DermaganError(f"--eval-every must be positive, got {eval_every}")
        encoder_path = Path(domain_encoder) / "encoder.pt"
        if not encoder_path.exists():
            raise DermaganError(f"domain encoder not found: {encoder_path} (dvc repro domain_encoder)")
        encoder = load_encoder(encoder_path, device)
        real = encode(encoder, train.images[mask], device=device)
        val_mask = np.ones(len(val), bool) if stage == 1 else val.labels == cfg.classes.index(dx)
        result["yardstick"] = domain_fidelity(real, encode(encoder, val.images[val_mask], device=device))
        init = stage_one_state(Path(base) / BASE_FILE) if (base and stage == 2) else None
        trainer = StganTrainer(replace(stgan, total_images=int(train_images)), images, labels, device, init=init)
        result["initialised_from"] = str(Path(base) / BASE_FILE) if init else "fresh"

        def score(fake: np.ndarray) -> dict:
            return domain_fidelity(real, encode(encoder, fake, device=device))

        def show(point: dict, fake: np.ndarray) -> None:
            grids[f"samples_{point['images_seen']:07d}.png"] = image_grid(fake[:64])
            print(f"  {point['images_seen']:6d} images: domain FD {point['fd_domain']:.2f} "
                  f"(yardstick {result['yardstick']['fd_domain']:.2f}), k-NN recall "
                  f"{point['knn_recall_domain']:.2f}", flush=True)

        label = curve_labels(stgan.num_classes, stgan.fixed_label, n_samples)
        result["curve"] = fidelity_curve(trainer, score, int(eval_every), int(n_samples), label, on_point=show)
    if out:  # the JSON, and beside it (OUT without its suffix) the curve's sample grids, written at the end
        grid_folder = atomic_dir(bench_grid_dir(out)) if grids else nullcontext()
        with atomic_file(Path(out)) as tmp, grid_folder as tmp_grids:
            tmp.write_text(json.dumps(json_safe(result), indent=2))
            for name, grid in grids.items():
                Image.fromarray(grid).save(tmp_grids / name)
    return result

