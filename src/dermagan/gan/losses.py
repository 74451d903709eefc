"""GAN losses on raw discriminator scores: non-saturating and hinge."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dermagan.errors import DermaganError

LOSSES = ("non_saturating", "hinge")


def check_loss(kind: str) -> str:
    if kind not in LOSSES:
        raise DermaganError(f"params: GAN loss must be one of {LOSSES}, got '{kind}'")
    return kind


def discriminator_loss(real: torch.Tensor, fake: torch.Tensor, kind: str, real_label: float = 1.0) -> torch.Tensor:
    """D loss; ``real_label`` < 1 is one-sided label smoothing (non-saturating loss only)."""
    if check_loss(kind) == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    return (F.binary_cross_entropy_with_logits(real, torch.full_like(real, real_label))
            + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))


def generator_loss(fake: torch.Tensor, kind: str) -> torch.Tensor:
    if check_loss(kind) == "hinge":
        return -fake.mean()
    return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
