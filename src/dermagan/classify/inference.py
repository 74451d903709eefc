"""Batched inference on uint8 image arrays."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def to_float_batch(images: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW -> float32 in [0, 1]."""
    return images.float().div_(255.0)


@torch.no_grad()
def predict_logits(model: nn.Module, images: np.ndarray, batch_size: int, device: torch.device) -> np.ndarray:
    """The model's outputs for uint8 images (N, H, W, 3); the model is put in eval mode."""
    model.eval()
    tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    out = [model(to_float_batch(chunk).to(device).contiguous(memory_format=torch.channels_last)).float().cpu()
           for chunk in tensor.split(batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, len(model.classes)), dtype=np.float32)


def predict_proba(model: nn.Module, images: np.ndarray, batch_size: int, device: torch.device) -> np.ndarray:
    """Softmax probabilities for uint8 images (N, H, W, 3); the model is put in eval mode."""
    return torch.softmax(torch.from_numpy(predict_logits(model, images, batch_size, device)), dim=1).numpy()
