"""Pick the compute device: CUDA when present, else CPU."""

import torch


def pick_device(requested: str = "auto") -> torch.device:
    """``auto`` means CUDA if available; ``cpu``/``cuda`` force one."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)
