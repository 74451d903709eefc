"""Model factory: shapes, packaged ImageNet weights, clear errors."""

import pytest
import torch

from dermagan.classify.models import BACKBONES, SimpleCNN, create_classifier
from dermagan.classify.pretrained import package_state_dict
from dermagan.constants import CLASSES
from dermagan.errors import DermaganError


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_every_backbone_gives_seven_logits(backbone):
    model = create_classifier(backbone, CLASSES, 32).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, len(CLASSES)) and torch.isfinite(out).all()
    assert model.classes == CLASSES and model.image_size == 32


def test_simple_cnn_is_the_classic_three_block_design():
    net = SimpleCNN(7, 64)
    convs = [m.out_channels for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m.out_features for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert convs == [32, 64, 128] and linears == [512, 7]
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in net.modules()) == 1


def test_packaged_weights_load_and_differ_from_random_init():
    torch.manual_seed(0)
    random_model = create_classifier("efficientnet_lite0", CLASSES, 32)
    torch.manual_seed(0)
    pretrained = create_classifier("efficientnet_lite0", CLASSES, 32, pretrained="package")
    source = list(package_state_dict("efficientnet_lite0").values())
    loaded = list(pretrained.net.state_dict().values())
    assert torch.equal(loaded[0], source[0])  # stem conv, tensor for tensor
    assert torch.equal(loaded[-5], source[-5])  # last BatchNorm before the head
    assert not torch.equal(loaded[0], random_model.net.state_dict()["conv_stem.weight"])
    assert pretrained.net.classifier.out_features == len(CLASSES)


def test_no_packaged_weights_for_other_backbones_is_a_clear_error():
    with pytest.raises(DermaganError, match="no packaged ImageNet weights for 'mobilenetv2_100'"):
        create_classifier("mobilenetv2_100", CLASSES, 32, pretrained="package")


def test_hub_weights_offline_fail_loudly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DermaganError, match="could not download pretrained weights"):
        create_classifier("mobilenetv2_100", CLASSES, 32, pretrained="hub")


@pytest.mark.parametrize("kwargs,match", [
    ({"backbone": "resnet9000"}, "unknown backbone"),
    ({"backbone": "simple_cnn", "image_size": 30}, "multiple of 8"),
    ({"backbone": "simple_cnn", "pretrained": "internet"}, "pretrained must be"),
])
def test_bad_settings(kwargs, match):
    args = {"classes": CLASSES, "image_size": 32, **kwargs}
    with pytest.raises(DermaganError, match=match):
        create_classifier(**args)
