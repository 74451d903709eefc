"""DCGAN generator and discriminator, unconditional (one GAN per class) or class-conditional.

Generator: latent (default 100) -> ConvTranspose-BatchNorm-ReLU blocks doubling the size from
4x4 to ``image_size`` -> ConvTranspose -> tanh. Conditional: BatchNorm whose scale and shift come
from a class embedding (conditional BN).
Discriminator: strided Conv-LeakyReLU-Dropout blocks halving the size down to 4x4 -> linear
score. Conditional: projection discriminator (score + <embed(y), features>).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dermagan.errors import DermaganError


def _doublings(image_size: int) -> int:
    steps = math.log2(image_size / 4)
    if image_size < 8 or steps != int(steps):
        raise DermaganError(f"GAN image size must be a power of two >= 8, got {image_size}")
    return int(steps)


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm without its own affine; per-class scale and shift from embeddings."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.scale = nn.Embedding(num_classes, channels)
        self.shift = nn.Embedding(num_classes, channels)
        nn.init.ones_(self.scale.weight)
        nn.init.zeros_(self.shift.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.bn(x) * self.scale(y)[:, :, None, None] + self.shift(y)[:, :, None, None]


class GeneratorBlock(nn.Module):
    """ConvTranspose(4, stride 2) -> (conditional) BatchNorm -> ReLU: doubles the size."""

    def __init__(self, c_in: int, c_out: int, num_classes: int | None, first: bool = False):
        super().__init__()
        stride, padding = (1, 0) if first else (2, 1)
        self.conv = nn.ConvTranspose2d(c_in, c_out, 4, stride, padding, bias=False)
        self.norm = ConditionalBatchNorm2d(c_out, num_classes) if num_classes else nn.BatchNorm2d(c_out)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        x = self.conv(x)
        x = self.norm(x, y) if isinstance(self.norm, ConditionalBatchNorm2d) else self.norm(x)
        return self.act(x)


class Generator(nn.Module):
    def __init__(self, image_size: int = 64, latent_dim: int = 100, ngf: int = 64, num_classes: int | None = None):
        super().__init__()
        n_up = _doublings(image_size)
        widths = [ngf * 2 ** min(i, 3) for i in reversed(range(n_up))]  # e.g. 512, 256, 128, 64
        self.latent_dim, self.num_classes, self.image_size = latent_dim, num_classes, image_size
        blocks = [GeneratorBlock(latent_dim, widths[0], num_classes, first=True)]
        blocks += [GeneratorBlock(a, b, num_classes) for a, b in zip(widths[:-1], widths[1:])]
        self.blocks = nn.ModuleList(blocks)
        self.to_rgb = nn.Sequential(nn.ConvTranspose2d(widths[-1], 3, 4, 2, 1), nn.Tanh())

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.num_classes and y is None:
            raise ValueError("a conditional generator needs class labels")
        x = z.view(z.shape[0], self.latent_dim, 1, 1)
        for block in self.blocks:
            x = block(x, y)
        return self.to_rgb(x)


class Discriminator(nn.Module):
    def __init__(self, image_size: int = 64, ndf: int = 64, dropout: float = 0.3, num_classes: int | None = None):
        super().__init__()
        n_down = _doublings(image_size)
        widths = [ndf * 2 ** min(i, 3) for i in range(n_down)]
        layers, c_in = [], 3
        for width in widths:
            layers += [nn.Conv2d(c_in, width, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True), nn.Dropout(dropout)]
            c_in = width
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.score = nn.Linear(c_in * 16, 1)
        self.embed = nn.Embedding(num_classes, c_in * 16) if num_classes else None

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.features(x)
        out = self.score(h).squeeze(1)
        if self.embed is not None:
            out = out + (self.embed(y) * h).sum(dim=1)
        return out


def init_weights(module: nn.Module) -> None:
    """DCGAN initialisation: N(0, 0.02) convs, N(1, 0.02) BatchNorm scales."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d) and module.affine:
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
