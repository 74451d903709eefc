"""A test's params completed from the repository's params.yaml, so a test states only what it changes.

``make_config({"prepare": {"image_size": 16}, "arms": {...}})``: every block of params.yaml (with the
classifier's tuned values merged into ``train``), each block given here updated key by key, except
``arms``, which is replaced whole (a test's arms are the only arms). The tuned-params file names are
left out (their values stay merged in), so the result is self-contained: it may be written to any
folder as a params.yaml. A test's ``gan.stgan`` or ``gan.amount`` replaces the tuned values that go
with it (``gan.stgan_tuned``, ``gan.amount_tuned``), so its ``gan`` block means what it says.
"""

from __future__ import annotations

import copy
from pathlib import Path

from dermagan.config import Config, build_config, load_params

REPO = Path(__file__).resolve().parents[1]
REPLACED = ("arms",)


def full_params(overrides: dict) -> dict:
    base = load_params(REPO / "params.yaml")
    params = {k: copy.deepcopy(v) for k, v in base.items() if k not in ("tuned_params", "tuned_gan_params", "tuned")}
    for block, values in overrides.items():
        if block not in REPLACED and isinstance(values, dict) and isinstance(params.get(block), dict):
            params[block] = {**params[block], **copy.deepcopy(values)}
        else:
            params[block] = copy.deepcopy(values)
    for key, tuned in (("stgan", "stgan_tuned"), ("amount", "amount_tuned")):
        if key in overrides.get("gan", {}):
            params["gan"].pop(tuned, None)
    return params


def make_config(overrides: dict) -> Config:
    return build_config(full_params(overrides))
