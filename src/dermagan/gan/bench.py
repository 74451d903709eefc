"""GAN step throughput against raw forward+backward, and fidelity against images seen.

``profile_gan_step`` times the real training step of a ``GanTrainer``/``StganTrainer`` (fetch,
DiffAugment, D step with its extra terms, G step, EMA) and the raw forward+backward passes of the
same networks on fixed tensors: G forward for D's fakes, D forward+backward on reals and fakes,
G forward+backward through D. Their ratio says how much of the machine the loop leaves unused,
as long as the step does no extra work: with Barlow Twins (two more D passes on reals) or the
FastGAN D's reconstruction loss, a lower ratio is that extra work, not idle time.

``fidelity_curve`` trains on and, every ``eval_every`` images, scores the EMA generator in a
caller-given feature space (the domain encoder's): the curve of a metric against images seen.
"""

from __future__ import annotations

import time
from pathlib import Path
from collections.abc import Callable

import numpy as np
import torch

from dermagan.gan.generate import sample_images
from dermagan.gan.train import GanTrainer, train_gan


def _seconds(fn: Callable[[], object], steps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def profile_gan_step(trainer: GanTrainer, steps: int = 10, warmup: int = 2) -> dict:
    """Images/s of D steps, G steps and whole steps, against raw fwd+bwd of the same networks.

    Note: the timed steps train the networks (a benchmark copy should be thrown away).
    """
    n = trainer.cfg.batch_size
    reals, y = trainer.fetch_reals()
    d_step = _seconds(lambda: trainer.discriminator_step(reals, y), steps, warmup)
    g_step = _seconds(lambda: trainer.generator_step(y), steps, warmup)
    whole = _seconds(trainer.step, steps, warmup)
    z = trainer.sample_latents(n)
    G, D = trainer.G, trainer.D

    def raw_d() -> None:
        with torch.no_grad():
            fakes = G(z, y)
        (D(reals, y).mean() - D(fakes, y).mean()).backward()

    def raw_g() -> None:
        D(G(z, y), y).mean().backward()

    raw_d_s = _seconds(raw_d, steps, warmup)
    raw_g_s = _seconds(raw_g, steps, warmup)
    trainer.opt_d.zero_grad(set_to_none=True)
    trainer.opt_g.zero_grad(set_to_none=True)
    return {"batch_size": n, "steps": steps, "threads": torch.get_num_threads(),
            "d_step_images_per_s": n / d_step, "g_step_images_per_s": n / g_step,
            "step_images_per_s": n / whole, "raw_d_images_per_s": n / raw_d_s, "raw_g_images_per_s": n / raw_g_s,
            "raw_step_images_per_s": n / (raw_d_s + raw_g_s), "ratio": (raw_d_s + raw_g_s) / whole}


def fidelity_curve(trainer: GanTrainer, score: Callable[[np.ndarray], dict], eval_every: int, n_samples: int,
                   label: int | None = None, seed: int = 0,
                   on_point: Callable[[dict, np.ndarray], None] | None = None) -> list[dict]:
    """Train to ``trainer.cfg.total_images``, scoring ``n_samples`` EMA-generator images every ``eval_every``.

    ``score`` maps uint8 images (N, H, W, 3) to a dict of metrics. Each point also records the
    images seen and the training seconds so far (scoring time excluded). ``on_point`` gets each
    point and its images (e.g. to save a sample grid).
    """
    points, trained = [], 0.0
    while True:
        images = sample_images(trainer.G_ema, n_samples, seed, label)
        point = {"images_seen": trainer.images_seen, "train_seconds": trained, **score(images)}
        points.append(point)
        if on_point:
            on_point(point, images)
        if trainer.images_seen >= trainer.cfg.total_images:
            return points
        start = time.perf_counter()
        train_gan(trainer, stop_after_images=trainer.images_seen + eval_every)
        trained += time.perf_counter() - start


def curve_labels(num_classes: int | None, fixed_label: int | None, n_samples: int) -> int | np.ndarray | None:
    """The labels a fidelity curve samples with: none (unconditional), the fixed class (stage 2 of a
    conditional stage 1), or every class in turn (conditional stage 1, as in its training mixture)."""
    if not num_classes:
        return None
    if fixed_label is not None:
        return fixed_label
    return np.arange(int(n_samples)) % num_classes


def image_grid(images: np.ndarray, columns: int = 8) -> np.ndarray:
    """uint8 (N, H, W, 3) -> one uint8 grid image, ``columns`` wide, 2 px gaps."""
    n, h, w, _ = images.shape
    rows = -(-n // columns)
    grid = np.full((rows * (h + 2), columns * (w + 2), 3), 255, np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[r * (h + 2):r * (h + 2) + h, c * (w + 2):c * (w + 2) + w] = image
    return grid


def bench_grid_dir(out) -> Path:
    """Where ``bench-gan --train-images`` writes the curve's sample grids: beside ``out``, without its suffix."""
    return Path(out).with_suffix("")
