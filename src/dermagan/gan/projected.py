"""Projected discriminator (Sauer et al., NeurIPS 2021, "Projected GANs converge faster").

D does not see pixels directly. A frozen ImageNet network (timm ``tf_efficientnet_lite0``, loaded
offline from its PyPI package) turns the image into four feature maps (strides 4, 8, 16, 32);
frozen random 1x1 convs mix channels (CCM) and frozen random 3x3 convs carry deep maps up into
shallower ones (CSM, FPN-like). Only the small spectral-norm discriminators that read each of the
four projected maps are trained. The fixed, rich feature space is what makes training converge in
few images, which suits the rare HAM10000 classes.

Interface shared with :class:`dermagan.gan.fastgan_d.FastGanDiscriminator` (the training loop
relies on it): ``forward(x, y) -> (N, M)`` logits, ``forward_features`` / ``head``,
``barlow_features``, ``aux_loss``, ``freeze_blocks``, ``trainable_parameters``, ``image_size``,
``num_classes``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from dermagan.errors import DermaganError
from dermagan.gan.freeze import FreezeDMixin

BACKBONE = "tf_efficientnet_lite0"
# EfficientNet-Lite0 blocks grouped into the four scales the paper reads:
# blocks[:2] -> 24 ch at /4, blocks[2] -> 40 ch at /8, blocks[3:5] -> 112 ch at /16, blocks[5:7] -> 320 ch at /32.
STAGE_BLOCKS: tuple[tuple[int, int], ...] = ((0, 2), (2, 3), (3, 5), (5, 7))
STAGE_CHANNELS: tuple[int, ...] = (24, 40, 112, 320)
STAGE_STRIDES: tuple[int, ...] = (4, 8, 16, 32)
# Below this map size a per-scale discriminator stops halving (then a conv 4x4 -> one logit).
END_SIZE = 4


def feature_map_sizes(size: int) -> list[int]:
    """Side of the four stage maps for a ``size`` px input: TF "same" padding gives ceil(size / stride)."""
    return [math.ceil(size / stride) for stride in STAGE_STRIDES]


def sn_conv(c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0, bias: bool = False) -> nn.Module:
    """A spectral-norm conv (torch's default init): the Lipschitz control both papers rely on."""
    return spectral_norm(nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=bias))


class FrozenEfficientNetLite0(nn.Module):
    """The stem and blocks of ImageNet EfficientNet-Lite0, frozen: no gradients to its weights, always eval.

    Inputs are images in [-1, 1] (what the TF-ported weights expect, and what GAN images are).
    Gradients still flow through it to the input, so the generator learns through it. Its
    BatchNorm statistics never change: :meth:`train` keeps it in eval mode whatever it is asked.
    """

    def __init__(self):
        super().__init__()
        import timm

        from dermagan.classify.pretrained import load_package_weights

        # The full net is built and loaded so the one-to-one weight check covers every tensor; only
        # the stem and blocks are kept (the head would be dead weight in every checkpoint).
        net = timm.create_model(BACKBONE, pretrained=False)
        load_package_weights(net, BACKBONE)
        self.stem = nn.Sequential(net.conv_stem, net.bn1)
        self.stages = nn.ModuleList(nn.Sequential(*net.blocks[a:b]) for a, b in STAGE_BLOCKS)
        self.channels = STAGE_CHANNELS
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FrozenEfficientNetLite0:
        """Stay in eval mode: the frozen BatchNorm statistics must never be updated."""
        return super().train(False)

    def forward(self, x: torch.Tensor, n_stages: int = 4) -> list[torch.Tensor]:
        """The outputs of the first ``n_stages`` stages (strides 4, 8, 16, 32)."""
        h = self.stem(x)
        out = []
        for stage in self.stages[:n_stages]:
            h = stage(h)
            out.append(h)
        return out


class RandomProjection(nn.Module):
    """Frozen random cross-channel (CCM) and cross-scale (CSM) mixing of the four feature maps.

    CCM: a random 1x1 conv per scale to ``widths``. CSM: from the deepest scale upwards, a random
    3x3 conv to the next shallower width, bilinear upsampling x2 and addition to that scale's CCM
    output. Weights are drawn from a ``torch.Generator`` seeded with ``seed`` (Kaiming normal,
    zero bias), so the same seed gives bit-identical projections; nothing here is ever trained.
    """

    def __init__(self, in_channels: tuple[int, ...], widths: tuple[int, ...], seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.ccm = nn.ModuleList(nn.Conv2d(c, w, 1) for c, w in zip(in_channels, widths, strict=True))
        # csm[i] maps scale i + 1 (deeper) onto scale i's width.
        self.csm = nn.ModuleList(nn.Conv2d(widths[i + 1], widths[i], 3, 1, 1) for i in range(len(widths) - 1))
        for conv in [*self.ccm, *self.csm]:
            nn.init.kaiming_normal_(conv.weight, nonlinearity="linear", generator=gen)
            nn.init.zeros_(conv.bias)
        self.widths = widths
        self.requires_grad_(False)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        mixed = [conv(f) for conv, f in zip(self.ccm, feats, strict=True)]
        out = [mixed[-1]]
        for i in reversed(range(len(mixed) - 1)):
            up = F.interpolate(self.csm[i](out[0]), size=mixed[i].shape[-2:], mode="bilinear", align_corners=False)
            out.insert(0, mixed[i] + up)
        return out


class DownBlock(nn.Module):
    """Spectral-norm conv 4x4 stride 2 -> BatchNorm -> LeakyReLU(0.2): the paper's DownBlock (halves the map).

    With ``stride=1`` (conv 3x3, same size) it is the one block of a map already <= 4x4, so every
    per-scale discriminator has at least one trainable block for Freeze-D and Barlow Twins.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 2):
        super().__init__()
        kernel = 4 if stride == 2 else 3
        self.conv = sn_conv(c_in, c_out, kernel, stride, 1)
        self.norm = nn.BatchNorm2d(c_out)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


def _width(size: int, ndf: int) -> int:
    """The paper's width table (x ndf/64): 64 ch at 64 px maps, 128 at 32, 256 at 16, 512 at <= 8."""
    return ndf * min(8, max(1, 64 // size))


class ScaleDiscriminator(nn.Module):
    """The trainable discriminator of one projected scale: DownBlocks to <= 4x4, then a conv to logits.

    Unconditional: SN conv (kernel min(4, map)) -> 1 channel. Conditional (as the paper's
    ``SingleDiscCond``): the conv gives ``cmap_dim`` channels and the logit is their dot product
    with a projected class embedding, divided by sqrt(cmap_dim).
    """

    def __init__(self, c_in: int, size: int, ndf: int, num_classes: int | None, cmap_dim: int):
        super().__init__()
        blocks = []
        while size > END_SIZE:
            blocks.append(DownBlock(c_in, _width(size // 2, ndf)))
            c_in, size = _width(size // 2, ndf), size // 2
        if not blocks:
            blocks.append(DownBlock(c_in, _width(size, ndf), stride=1))
            c_in = _width(size, ndf)
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = c_in
        self.num_classes = num_classes
        self.cmap_dim = cmap_dim
        self.out = sn_conv(c_in, cmap_dim if num_classes else 1, min(4, size))
        if num_classes:
            self.embed = nn.Embedding(num_classes, 128)
            self.embed_proj = nn.Sequential(nn.Linear(128, cmap_dim), nn.LeakyReLU(0.2))

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        out = self.out(self.trunk(x))
        if self.num_classes:
            cmap = self.embed_proj(self.embed(y))[:, :, None, None]
            out = (out * cmap).sum(1, keepdim=True) / math.sqrt(self.cmap_dim)
        return out.flatten(1)


class ProjectedDiscriminator(FreezeDMixin, nn.Module):
    """Projected GAN discriminator: frozen EfficientNet-Lite0 + frozen random projections + 4 small trainable Ds.

    ``feature_size``: the feature network sees the image bilinearly resized to this size (e.g. 128
    for 64 px images gives it larger maps to read); None = the image's own size.
    ``proj_channels``: CCM/CSM widths are proj_channels x (1, 2, 4, 8) for the four scales.
    ``ndf``: width of the per-scale discriminators (64 = the paper's table).
    ``num_classes``: None = unconditional, else projection-conditional heads of ``cmap_dim``.
    ``seed``: seeds the frozen random projections (bit-identical for the same seed).
    ``feature_net``: an already loaded frozen network to share (it is never changed); None loads one.
    Freeze-D (``freeze_blocks``, ``num_blocks``, ``trainable_parameters``): :class:`FreezeDMixin`.
    """

    freeze_d_kind = "projected"

    def __init__(self, image_size: int = 64, ndf: int = 64, num_classes: int | None = None,
                 feature_size: int | None = None, proj_channels: int = 64, cmap_dim: int = 64, seed: int = 0,
                 feature_net: FrozenEfficientNetLite0 | None = None):
        super().__init__()
        _check_int("image_size", image_size, 32)
        if feature_size is not None:
            _check_int("feature_size", feature_size, 32)
        _check_int("ndf", ndf, 1)
        _check_int("proj_channels", proj_channels, 1)
        _check_int("cmap_dim", cmap_dim, 1)
        if num_classes is not None:
            _check_int("num_classes", num_classes, 1)
        self.image_size, self.feature_size, self.num_classes = image_size, feature_size, num_classes
        self.features = feature_net if feature_net is not None else FrozenEfficientNetLite0()
        widths = tuple(proj_channels * 2**i for i in range(len(STAGE_CHANNELS)))
        self.projection = RandomProjection(STAGE_CHANNELS, widths, seed)
        sizes = feature_map_sizes(feature_size or image_size)
        self.map_sizes = sizes
        self.discs = nn.ModuleList(ScaleDiscriminator(w, s, ndf, num_classes, cmap_dim)
                                   for w, s in zip(widths, sizes, strict=True))
        self.keep_frozen(name for name, _ in self.named_parameters() if not name.startswith("discs."))

    def _project(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.feature_size is not None and self.feature_size != x.shape[-1]:
            x = F.interpolate(x, size=(self.feature_size, self.feature_size), mode="bilinear", align_corners=False)
        return self.projection(self.features(x))

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != 3 or tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"expected images (N, 3, {self.image_size}, {self.image_size}), got {tuple(x.shape)}")

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four frozen projected maps the per-scale discriminators read (shallow to deep).

        Without gradients (``torch.no_grad``) unless ``x`` requires them: reals and detached fakes in
        the D step need no graph through the frozen network; G's fakes do.
        """
        self._check_input(x)
        if x.requires_grad and torch.is_grad_enabled():
            return self._project(x)
        with torch.no_grad():
            return self._project(x)

    def head(self, feats: list[torch.Tensor], y: torch.Tensor | None = None) -> torch.Tensor:
        """(N, M) logits of all per-scale discriminators, concatenated."""
        if self.num_classes and y is None:
            raise ValueError("a conditional discriminator needs class labels")
        return torch.cat([disc(f, y) for disc, f in zip(self.discs, feats, strict=True)], dim=1)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Raw logits (N, M), one per position of every scale; the hinge loss is applied outside."""
        return self.head(self.forward_features(x), y)

    def barlow_features(self, x_or_feats: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """(N, d): global-average-pooled output of the last block of every per-scale D, concatenated.

        Differentiable w.r.t. D's trainable blocks (the deepest blocks stay trainable under Freeze-D
        unless all are frozen). Accepts images or the list from :meth:`forward_features`.
        """
        feats = self.forward_features(x_or_feats) if isinstance(x_or_feats, torch.Tensor) else x_or_feats
        return torch.cat([disc.trunk(f).mean((2, 3)) for disc, f in zip(self.discs, feats, strict=True)], dim=1)

    embedding = barlow_features

    def aux_loss(self, x_real: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        """No auxiliary loss for the projected D: a zero scalar (same signature as FastGAN's D)."""
        return x_real.new_zeros(())

    def freeze_d_chains(self) -> list[tuple[str, nn.ModuleList]]:
        """Freeze-D: the DownBlocks of every per-scale D, one chain per scale (heads and class embeddings
        stay trainable; the feature network and projections are fixed anyway)."""
        return [(f"discs.{i}.blocks", disc.blocks) for i, disc in enumerate(self.discs)]


def _check_int(field: str, value: object, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise DermaganError(f"params: {field} must be an integer >= {minimum}, got {value!r}")
