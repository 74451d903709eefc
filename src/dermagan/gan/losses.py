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


def barlow_twins_loss(a: torch.Tensor, b: torch.Tensor, lambd: float = 0.0051) -> torch.Tensor:
    """Barlow Twins redundancy reduction (Zbontar et al., 2021) between two views' features (N, d).

    Each feature is standardised over the batch (biased variance, as BatchNorm does), the d x d
    cross-correlation C = a^T b / N is pulled towards the identity: sum_i (1 - C_ii)^2 +
    lambd * sum_{i != j} C_ij^2, divided by d so that its weight in D's loss does not depend on D's
    width. It is 0 when both views give the same decorrelated features.
    """
    if a.shape != b.shape or a.dim() != 2 or len(a) < 2:
        raise ValueError(f"Barlow Twins needs two (N >= 2, d) feature batches of one shape, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    n = len(a)
    a = (a - a.mean(0)) / a.std(0, unbiased=False).clamp_min(1e-6)
    b = (b - b.mean(0)) / b.std(0, unbiased=False).clamp_min(1e-6)
    c = a.T @ b / n
    diag = torch.diagonal(c)
    off = c - torch.diag_embed(diag)
    return ((1 - diag).pow(2).sum() + lambd * off.pow(2).sum()) / a.shape[1]
