"""Model factory: shapes, packaged ImageNet weights, normalisation, test-time augmentation, clear errors."""

from pathlib import Path

import matplotlib
import numpy as np
import pytest
import timm
import torch
from PIL import Image

from dermagan.classify.models import BACKBONES, SimpleCNN, create_classifier, dihedral_views
from dermagan.classify.pretrained import (
    PACKAGE_WEIGHTS,
    load_package_weights,
    map_package_weights,
    package_state_dict,
)
from dermagan.config.schema import HAM10000_CLASSES as CLASSES
from dermagan.constants import IMAGENET_MEAN, IMAGENET_STD
from dermagan.data.images import resize_center_crop
from dermagan.errors import DermaganError

LITE_BACKBONES = [f"{prefix}efficientnet_lite{n}" for prefix in ("", "tf_") for n in (0, 1, 2)]
MILITARY_UNIFORM = 652  # ImageNet class of matplotlib's grace_hopper.jpg


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


def test_every_lite_backbone_has_packaged_weights():
    assert sorted(PACKAGE_WEIGHTS) == sorted(LITE_BACKBONES)


@pytest.mark.parametrize("backbone", LITE_BACKBONES)
def test_packaged_weights_load_tensor_for_tensor(backbone):
    torch.manual_seed(0)
    random_model = create_classifier(backbone, CLASSES, 32)
    torch.manual_seed(0)
    pretrained = create_classifier(backbone, CLASSES, 32, pretrained="package")
    source = list(package_state_dict(backbone).values())
    loaded = pretrained.net.state_dict()
    assert len(source) == len(loaded)
    head = [name for name in loaded if name.startswith("classifier.")]
    assert head == ["classifier.weight", "classifier.bias"] and list(loaded)[-2:] == head
    for (name, tensor), expected in zip(list(loaded.items())[:-2], source[:-2], strict=True):
        assert torch.equal(tensor, expected), name  # in order, every tensor but the head
    assert source[-2].shape[0] == 1000 and pretrained.net.classifier.out_features == len(CLASSES)
    torch.testing.assert_close(loaded["classifier.weight"], random_model.net.state_dict()["classifier.weight"])
    assert not torch.equal(loaded["conv_stem.weight"], random_model.net.state_dict()["conv_stem.weight"])


@pytest.fixture(scope="module")
def lite0_tensors() -> tuple[dict, dict]:
    """The packaged lite0 state dict and a fresh timm network's, as mapped by the loader."""
    return package_state_dict("tf_efficientnet_lite0"), timm.create_model("tf_efficientnet_lite0",
                                                                          num_classes=len(CLASSES)).state_dict()


def _reordered(state: dict, i: int, j: int) -> dict:
    items = list(state.items())
    items[i], items[j] = items[j], items[i]
    return dict(items)


def test_matching_state_dict_maps_every_tensor_but_a_resized_head(lite0_tensors):
    source, target = lite0_tensors
    mapped = map_package_weights(source, target, "pkg")
    assert list(mapped) == list(target)[:-2]


@pytest.mark.parametrize("fault,match", [
    ("drop", r"pkg: 295 tensors, but the network has 296; the packaged weights do not map one to one"),
    ("swap_weight_bias", r"pkg: tensor _bn0\.bias \(32,\) does not map onto bn1\.weight \(32,\)"),
    ("swap_shapes", r"pkg: tensor _blocks\.0\._project_conv\.weight \(16, 32, 1, 1\) does not map onto "
                    r"blocks\.0\.0\.conv_dw\.weight \(32, 1, 3, 3\)"),
])
def test_mismatching_state_dict_is_a_clear_error(lite0_tensors, fault, match):
    source, target = lite0_tensors
    names = list(source)
    if fault == "drop":
        source = {k: v for k, v in source.items() if k != "_bn0.running_var"}
    elif fault == "swap_weight_bias":
        source = _reordered(source, names.index("_bn0.weight"), names.index("_bn0.bias"))
    else:  # two conv weights of different shapes trade places
        source = _reordered(source, names.index("_blocks.0._depthwise_conv.weight"),
                            names.index("_blocks.0._project_conv.weight"))
    with pytest.raises(DermaganError, match=match):
        map_package_weights(source, target, "pkg")


@pytest.mark.parametrize("backbone,mean,std", [
    *[(f"tf_efficientnet_lite{n}", (0.5,) * 3, (0.5,) * 3) for n in (0, 1, 2)],
    *[(f"efficientnet_lite{n}", IMAGENET_MEAN, IMAGENET_STD) for n in (0, 1, 2)],
    ("mobilenetv2_100", IMAGENET_MEAN, IMAGENET_STD),
    ("simple_cnn", IMAGENET_MEAN, IMAGENET_STD),
])
def test_normalisation_comes_from_the_pretrained_config(backbone, mean, std):
    model = create_classifier(backbone, CLASSES, 32)
    assert model.mean.flatten().tolist() == pytest.approx(mean)
    assert model.std.flatten().tolist() == pytest.approx(std)
    if backbone != "simple_cnn":
        config = timm.data.resolve_model_data_config(model.net)
        assert tuple(config["mean"]) == pytest.approx(mean) and tuple(config["std"]) == pytest.approx(std)


@pytest.fixture(scope="module")
def tta_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_classifier("efficientnet_lite0", CLASSES, 32, tta="flips")


def test_flips_tta_output_is_invariant_to_flips(tta_model):
    tta_model.eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = tta_model(x)
        for flipped in (x.flip(3), x.flip(2), x.flip(2, 3)):
            torch.testing.assert_close(tta_model(flipped), out, atol=1e-5, rtol=1e-5)
        plain = tta_model.net((x - tta_model.mean) / tta_model.std)
        views = dihedral_views((x - tta_model.mean) / tta_model.std, "flips")
        averaged = torch.stack([torch.softmax(tta_model.net(v), dim=1) for v in views]).mean(0)
    assert len(views) == 4
    torch.testing.assert_close(torch.softmax(out, dim=1), averaged)  # log of the mean probability
    assert not torch.allclose(out, plain, atol=1e-4)  # it does average something


def test_tta_divides_by_temperature_and_d4_adds_transposes(tta_model):
    tta_model.eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = tta_model(x)
        tta_model.temperature.fill_(2.0)
        try:
            torch.testing.assert_close(tta_model(x), out / 2)
        finally:
            tta_model.temperature.fill_(1.0)
        tta_model.tta = "d4"
        try:
            torch.testing.assert_close(tta_model(x.transpose(2, 3)), tta_model(x), atol=1e-5, rtol=1e-5)
        finally:
            tta_model.tta = "flips"


def test_training_mode_ignores_tta(tta_model):
    tta_model.train()  # dropout and drop-path are 0, so training mode is deterministic
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        out = tta_model(x)
        plain = tta_model.net((x - tta_model.mean) / tta_model.std)
    torch.testing.assert_close(out, plain)
    tta_model.eval()


def test_unknown_tta_is_a_clear_error():
    with pytest.raises(DermaganError, match="tta must be one of"):
        create_classifier("simple_cnn", CLASSES, 32, tta="rot45")


@pytest.fixture(scope="module")
def grace_hopper() -> Image.Image:
    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    assert path.is_file(), f"matplotlib's sample image is missing: {path}"
    with Image.open(path) as image:
        return image.convert("RGB")


@pytest.mark.parametrize("backbone,size,top_k", [
    ("tf_efficientnet_lite0", 224, 1),
    ("tf_efficientnet_lite1", 240, 2),
    ("tf_efficientnet_lite2", 260, 2),
])
def test_packaged_imagenet_weights_recognise_grace_hopper(grace_hopper, backbone, size, top_k):
    """The packaged weights are real ImageNet weights in the TF-padding network (inputs in [-1, 1])."""
    net = timm.create_model(backbone, num_classes=1000).eval()
    load_package_weights(net, backbone)
    image = np.array(resize_center_crop(grace_hopper, size))
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        proba = torch.softmax(net(x), dim=1)[0]
    top = proba.topk(5)
    shown = [(int(i), round(float(p), 3)) for p, i in zip(top.values, top.indices)]
    assert MILITARY_UNIFORM in top.indices[:top_k].tolist(), f"{backbone} top-5 (class, p): {shown}"


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
