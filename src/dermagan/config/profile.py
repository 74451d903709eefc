"""Params files a profile's DVC project needs of its own (read here: only ``dermagan.config`` reads params)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from dermagan.config.load import read_yaml


def tuned_gan_for(path: Path, classes: list[str]) -> tuple[dict[str, Any] | None, list[str]]:
    """The tuned-GAN file ``path`` completed with an empty (untuned) ``gan.stgan_tuned`` entry for each of
    ``classes`` it lacks, and those classes; ``(None, [])`` when none is missing (or there is no file)."""
    if not Path(path).is_file():
        return None, []
    tuned = read_yaml(path)
    block = (tuned.get("gan") or {}).get("stgan_tuned") or {}
    missing = [c for c in classes if c not in block]
    if not missing:
        return None, []
    tuned = copy.deepcopy(tuned)
    tuned.setdefault("gan", {}).setdefault("stgan_tuned", {}).update({c: {} for c in missing})
    return tuned, missing
