"""Classic augmentation (flips, rotation, crop, colour jitter), vectorised over the batch.

Each image gets its own random parameters, but the whole batch is transformed with one
``affine_grid``/``grid_sample`` call, so augmentation costs little next to the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    hflip: bool = True
    vflip: bool = True
    rot90: bool = True  # dermoscopy has no canonical orientation: any multiple of 90 degrees
    rotation_degrees: float = 20.0
    crop_scale: tuple[float, float] = (0.8, 1.0)
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1


def _uniform(n: int, low: float, high: float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen, device=device)


def random_affine(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Per-image flip, rotation and random-resized crop (zoom + shift) with reflection padding."""
    n, device = x.shape[0], x.device
    angle = _uniform(n, -1, 1, gen, device) * math.radians(cfg.rotation_degrees)
    if cfg.rot90:
        angle = angle + torch.randint(0, 4, (n,), generator=gen, device=device) * (math.pi / 2)
    zoom = _uniform(n, *cfg.crop_scale, gen, device).sqrt()  # side fraction kept
    shift_room = 1 - zoom
    tx, ty = (_uniform(n, -1, 1, gen, device) * shift_room for _ in range(2))
    sx = torch.where(torch.rand(n, generator=gen, device=device) < 0.5, -1.0, 1.0) if cfg.hflip else torch.ones(n, device=device)
    sy = torch.where(torch.rand(n, generator=gen, device=device) < 0.5, -1.0, 1.0) if cfg.vflip else torch.ones(n, device=device)
    cos, sin = torch.cos(angle) * zoom, torch.sin(angle) * zoom
    theta = torch.stack([
        torch.stack([cos * sx, -sin * sy, tx], dim=1),
        torch.stack([sin * sx, cos * sy, ty], dim=1),
    ], dim=1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def color_jitter(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Per-image brightness, contrast and saturation factors in [1 - s, 1 + s]."""
    n, device = x.shape[0], x.device
    shape = (n, 1, 1, 1)
    bright = _uniform(n, 1 - cfg.brightness, 1 + cfg.brightness, gen, device).view(shape)
    contrast = _uniform(n, 1 - cfg.contrast, 1 + cfg.contrast, gen, device).view(shape)
    saturation = _uniform(n, 1 - cfg.saturation, 1 + cfg.saturation, gen, device).view(shape)
    x = x * bright
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast + mean
    grey = (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    x = (x - grey) * saturation + grey
    return x.clamp(0, 1)


def scaled(cfg: AugmentConfig, strength: float) -> AugmentConfig:
    """``cfg``'s rotation, crop and colour ranges times ``strength`` in [0, 1]; flips and rot90 kept.

    Strength 0 leaves only the orientation changes (flips, 90-degree turns), which lose nothing.
    """
    s = float(strength)
    low = 1 - (1 - cfg.crop_scale[0]) * s
    return replace(cfg, rotation_degrees=cfg.rotation_degrees * s, crop_scale=(low, 1.0),
                   brightness=cfg.brightness * s, contrast=cfg.contrast * s, saturation=cfg.saturation * s)


def classic_augment(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Apply flips/rotation/crop then colour jitter to a float batch in [0, 1]."""
    return color_jitter(random_affine(x, cfg, gen), cfg, gen)
