"""The GAN trainers' config dataclasses: plain values, no torch, so the typed params config can
build and check them at load time without importing the networks."""

from __future__ import annotations

from dataclasses import dataclass

from dermagan.errors import DermaganError


@dataclass(frozen=True)
class GanConfig:
    image_size: int = 64
    latent_dim: int = 100
    ngf: int = 64
    ndf: int = 64
    d_dropout: float = 0.3
    num_classes: int | None = None  # None: unconditional (one GAN per class); else conditional
    loss: str = "hinge"  # hinge | non_saturating
    label_smoothing: float = 0.0  # one-sided: real target 1 - smoothing (non_saturating only)
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    batch_size: int = 32
    total_images: int = 100_000
    ema_half_life_images: int = 10_000
    diffaugment: str = "color,translation,cutout"
    snapshot_every_images: int = 20_000
    checkpoint_every_images: int = 20_000
    grid_size: int = 16
    seed: int = 0


@dataclass(frozen=True)
class StganConfig:
    image_size: int = 64
    latent_dim: int = 128
    ngf: int = 16
    ndf: int = 32
    discriminator: str = "projected"  # projected | fastgan
    feature_size: int | None = None  # projected D: the feature network sees this size (None = image size)
    num_classes: int | None = None  # None: unconditional; else conditional (conditional BN in G, projection in D)
    loss: str = "hinge"
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.0
    beta2: float = 0.99
    batch_size: int = 32
    total_images: int = 40_000
    ema_half_life_images: int = 5_000
    diffaugment: str = "color,translation,cutout"
    diffaugment_p: float = 1.0  # DiffAugment strength: probability that a D input is augmented
    aux_weight: float = 1.0  # FastGAN D: weight of the reconstruction loss on reals
    freeze_d_blocks: int = 0
    barlow_weight: float = 0.0
    barlow_lambda: float = 0.0051
    snapshot_every_images: int = 5_000
    checkpoint_every_images: int = 5_000
    grid_size: int = 16
    seed: int = 0
    fixed_label: int | None = None  # stage 2 of a conditional stage 1: every sample is this class


@dataclass(frozen=True)
class CycleGanConfig:
    image_size: int = 64
    source_class: str = "nv"  # domain A; domain B is the class the run is trained for
    ngf: int = 16  # the paper's 64, narrowed for CPU budgets (about 12 images/s on 2 cores at 64 px)
    ndf: int = 32
    n_blocks: int = 6
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    batch_size: int = 4
    total_images: int = 2_400  # target-class (domain B) images shown to D_B
    decay_start: float = 0.5  # the learning rate decays linearly to 0 from this share of total_images
    lambda_cycle: float = 10.0
    lambda_identity: float = 0.5  # x lambda_cycle; 0 turns the identity term off
    label_smoothing: float = 0.0  # one-sided: D's real target is 1 - smoothing (G's target stays 1)
    pool_size: int = 50
    snapshot_every_images: int = 400
    checkpoint_every_images: int = 400
    grid_size: int = 8  # source | translated pairs in the sample grid
    seed: int = 0


def check_config(cfg: CycleGanConfig) -> CycleGanConfig:
    """Refuse settings the networks or the schedule cannot use, naming the field."""
    problems = []
    if cfg.image_size < 24 or cfg.image_size % 4:  # G: two stride-2 steps; D: at least a 1x1 patch map
        problems.append(f"image_size must be a multiple of 4 and >= 24, got {cfg.image_size}")
    for name in ("ngf", "ndf", "batch_size", "total_images", "grid_size"):
        if getattr(cfg, name) < 1:
            problems.append(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.n_blocks < 0 or cfg.pool_size < 0:
        problems.append(f"n_blocks and pool_size must be >= 0, got {cfg.n_blocks} and {cfg.pool_size}")
    if not 0 <= cfg.label_smoothing < 1:
        problems.append(f"label_smoothing must be in [0, 1), got {cfg.label_smoothing}")
    if not 0 <= cfg.decay_start <= 1:
        problems.append(f"decay_start must be in [0, 1], got {cfg.decay_start}")
    if not cfg.lr > 0 or cfg.lambda_cycle < 0 or cfg.lambda_identity < 0:
        problems.append(f"need lr > 0, lambda_cycle >= 0 and lambda_identity >= 0, got {cfg.lr}, "
                        f"{cfg.lambda_cycle}, {cfg.lambda_identity}")
    if problems:
        raise DermaganError("params: gan.cyclegan: " + "; ".join(problems))
    return cfg
