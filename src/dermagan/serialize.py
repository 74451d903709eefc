"""Values ready for ``json.dumps``: what metrics files and MLflow tables may hold."""

from __future__ import annotations

import math

import numpy as np


def json_safe(value):
    """Copy of ``value`` with numpy scalars as Python ones, NaN/inf floats as None, keys as str."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
