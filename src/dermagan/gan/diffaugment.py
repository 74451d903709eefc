"""Differentiable augmentation (Zhao et al., 2020) for data-efficient GAN training.

The rule that makes it work: every discriminator input, real or fake, in the D step and the
G step, goes through the same random augmentation family. All ops are differentiable so the
generator gets gradients through them. Inputs are in [-1, 1], shape (N, C, H, W).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from dermagan.errors import DermaganError


def _rand(x: torch.Tensor, gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.rand(x.shape[0], *shape, generator=gen, device="cpu").to(x.device, x.dtype)


def brightness(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return x + (_rand(x, gen, 1, 1, 1) - 0.5)


def saturation(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * (_rand(x, gen, 1, 1, 1) * 2) + mean


def contrast(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_rand(x, gen, 1, 1, 1) + 0.5) + mean


def translation(x: torch.Tensor, gen: torch.Generator, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by up to ``ratio`` of its size, zero padding (integer pixel shifts)."""
    n, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ty = (_rand(x, gen) * (2 * sh + 1)).long().clamp(max=2 * sh) - sh
    tx = (_rand(x, gen) * (2 * sw + 1)).long().clamp(max=2 * sw) - sw
    rows = (torch.arange(h, device=x.device).view(1, h, 1) + ty.view(n, 1, 1)).clamp(-1, h)
    cols = (torch.arange(w, device=x.device).view(1, 1, w) + tx.view(n, 1, 1)).clamp(-1, w)
    padded = F.pad(x, [1, 1, 1, 1])
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    return padded.permute(0, 2, 3, 1)[batch, rows + 1, cols + 1].permute(0, 3, 1, 2)


def cutout(x: torch.Tensor, gen: torch.Generator, ratio: float = 0.5) -> torch.Tensor:
    """Zero one random square of ``ratio`` x size per image."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    top = (_rand(x, gen) * h).long().view(n, 1, 1) - ch // 2
    left = (_rand(x, gen) * w).long().view(n, 1, 1) - cw // 2
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (rows >= top) & (rows < top + ch) & (cols >= left) & (cols < left + cw)
    return x * (~inside).unsqueeze(1).to(x.dtype)


POLICIES: dict[str, list[Callable[[torch.Tensor, torch.Generator], torch.Tensor]]] = {
    "color": [brightness, saturation, contrast],
    "translation": [translation],
    "cutout": [cutout],
}


def parse_policy(policy: str) -> list[str]:
    """``"color,translation,cutout"`` -> names, with an error naming an unknown one."""
    names = [p.strip() for p in policy.split(",") if p.strip()]
    unknown = [p for p in names if p not in POLICIES]
    if unknown:
        raise DermaganError(f"params: unknown DiffAugment policy {unknown}; choose from {sorted(POLICIES)}")
    return names


def diff_augment(x: torch.Tensor, policy: str, gen: torch.Generator, p: float = 1.0) -> torch.Tensor:
    """Apply every op of ``policy`` with fresh per-image random parameters from ``gen``.

    ``p`` is the strength: the probability that an image is augmented at all (ADA's *p*). At
    ``p = 1`` every image is augmented and no extra random numbers are drawn.
    """
    if not 0.0 <= p <= 1.0:
        raise DermaganError(f"params: DiffAugment strength diffaugment_p must be in [0, 1], got {p}")
    keep = None if p >= 1.0 else _rand(x, gen).lt(p).view(-1, 1, 1, 1)
    out = x
    for name in parse_policy(policy):
        for op in POLICIES[name]:
            out = op(out, gen)
    return out if keep is None else torch.where(keep, out, x)
