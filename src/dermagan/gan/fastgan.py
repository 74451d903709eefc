"""FastGAN generator (Liu et al., ICLR 2021, "Towards faster and stabilized GAN training for
high-fidelity few-shot image synthesis"), sized for a CPU.

latent -> ConvTranspose 4x4 -> BatchNorm -> GLU (4x4), then one upsampling block per doubling:
nearest-neighbour x2 -> spectral-norm conv 3x3 -> BatchNorm -> GLU. Every other block (the first,
third, ...) is the "comp" variant with a second conv and noise injection after each conv.
Skip-layer excitation (SLE) lets a low-resolution map (4x4, 8x8, ...) gate the channels of a
high-resolution one (32x32, 64x64, ...), so global layout steers fine texture cheaply.
Class-conditional variant: every BatchNorm takes its scale and shift from a class embedding.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import spectral_norm  # hook-based: a logged generator must pickle

from dermagan.errors import DermaganError
from dermagan.gan.models import ConditionalBatchNorm2d


def sn_conv(c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0, bias: bool = True) -> nn.Module:
    """Conv initialised N(0, 0.02) (as FastGAN), then wrapped in spectral normalisation."""
    conv = nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=bias)
    nn.init.normal_(conv.weight, 0.0, 0.02)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return spectral_norm(conv)


def resolutions(image_size: int) -> list[int]:
    """4, 8, ..., image_size; refuses sizes that are not a power of two >= 16."""
    steps = math.log2(image_size / 4)
    if image_size < 16 or steps != int(steps):
        raise DermaganError(f"FastGAN image size must be a power of two >= 16, got {image_size}")
    return [4 * 2**i for i in range(int(steps) + 1)]


def channel_widths(image_size: int, ngf: int) -> dict[int, int]:
    """FastGAN's width table (x ngf): 16 at 4 px, 8 at 8 px, 4 at 16 px, 2 at 32-64 px, 1 above."""
    factor = {4: 16, 8: 8, 16: 4, 32: 2, 64: 2, 128: 1, 256: 0.5, 512: 0.25, 1024: 0.125}
    return {r: max(8, int(factor[r] * ngf)) for r in resolutions(image_size)}


def sle_pairs(image_size: int) -> list[tuple[int, int]]:
    """(source, target) resolutions: targets >= 32 px in order, gated by 4, 8, 16, ... px maps."""
    targets = [r for r in resolutions(image_size) if r >= 32]
    return [(4 * 2**i, t) for i, t in enumerate(targets)]


class GLU(nn.Module):
    """Gated linear unit over channels: a * sigmoid(b); halves the channel count."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return a * torch.sigmoid(b)


class NoiseInjection(nn.Module):
    """Adds per-pixel Gaussian noise scaled by a learnt weight (starts at 0, as in FastGAN)."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        return x + self.weight * torch.randn(n, 1, h, w, device=x.device, dtype=x.dtype)


class Norm(nn.Module):
    """BatchNorm, or conditional BatchNorm when ``num_classes`` is set."""

    def __init__(self, channels: int, num_classes: int | None):
        super().__init__()
        self.conditional = bool(num_classes)
        self.bn = ConditionalBatchNorm2d(channels, num_classes) if num_classes else nn.BatchNorm2d(channels)
        if not num_classes:
            nn.init.normal_(self.bn.weight, 1.0, 0.02)
            nn.init.zeros_(self.bn.bias)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return self.bn(x, y) if self.conditional else self.bn(x)


class UpBlock(nn.Module):
    """x2 nearest -> SN conv3x3 -> (noise) -> BN -> GLU [-> SN conv3x3 -> noise -> BN -> GLU if comp]."""

    def __init__(self, c_in: int, c_out: int, num_classes: int | None, comp: bool):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.conv1 = sn_conv(c_in, 2 * c_out, 3, 1, 1, bias=False)
        self.norm1 = Norm(2 * c_out, num_classes)
        self.noise1 = NoiseInjection() if comp else None
        self.conv2 = sn_conv(c_out, 2 * c_out, 3, 1, 1, bias=False) if comp else None
        self.norm2 = Norm(2 * c_out, num_classes) if comp else None
        self.noise2 = NoiseInjection() if comp else None
        self.glu = GLU()

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        x = self.conv1(self.up(x))
        if self.noise1 is not None:
            x = self.noise1(x)
        x = self.glu(self.norm1(x, y))
        if self.conv2 is not None:
            x = self.glu(self.norm2(self.noise2(self.conv2(x)), y))
        return x


class SkipLayerExcitation(nn.Module):
    """Channel gates for a high-resolution map computed from a low-resolution one."""

    def __init__(self, c_low: int, c_high: int):
        super().__init__()
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(4), sn_conv(c_low, c_high, 4, 1, 0, bias=False), nn.SiLU(),
                                  sn_conv(c_high, c_high, 1, 1, 0, bias=False), nn.Sigmoid())

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        return high * self.gate(low)


class FastGanGenerator(nn.Module):
    """FastGAN generator: latent (N, latent_dim) [+ labels (N,)] -> images (N, 3, S, S) in [-1, 1]."""

    def __init__(self, image_size: int = 64, latent_dim: int = 128, ngf: int = 32, num_classes: int | None = None):
        super().__init__()
        widths = channel_widths(image_size, ngf)
        self.image_size, self.latent_dim, self.num_classes = image_size, latent_dim, num_classes
        self.res = resolutions(image_size)
        self.init_conv = nn.ConvTranspose2d(latent_dim, 2 * widths[4], 4, 1, 0, bias=False)
        nn.init.normal_(self.init_conv.weight, 0.0, 0.02)
        self.init_norm = Norm(2 * widths[4], num_classes)
        self.glu = GLU()
        self.ups = nn.ModuleDict({str(r): UpBlock(widths[r // 2], widths[r], num_classes, comp=(i % 2 == 0))
                                  for i, r in enumerate(self.res[1:])})
        self.sle = nn.ModuleDict({f"{lo}_{hi}": SkipLayerExcitation(widths[lo], widths[hi])
                                  for lo, hi in sle_pairs(image_size)})
        self.to_rgb = nn.Sequential(sn_conv(widths[image_size], 3, 3, 1, 1), nn.Tanh())

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.num_classes and y is None:
            raise ValueError("a conditional generator needs class labels")
        x = self.glu(self.init_norm(self.init_conv(z.view(len(z), self.latent_dim, 1, 1)), y))
        maps = {4: x}
        for r in self.res[1:]:
            x = self.ups[str(r)](x, y)
            for lo, hi in sle_pairs(self.image_size):
                if hi == r:
                    x = self.sle[f"{lo}_{hi}"](maps[lo], x)
            maps[r] = x
        return self.to_rgb(x)
