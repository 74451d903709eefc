"""Read params.yaml. The library never reads it itself: the CLI passes plain values down."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from dermagan.errors import DermaganError


def load_params(path: Path) -> dict[str, Any]:
    """Load a params file, with an error that names the file when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise DermaganError(f"params file not found: {path}")
    try:
        params = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise DermaganError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(params, dict):
        raise DermaganError(f"{path}: expected a mapping at the top level")
    return params


def section(params: dict[str, Any], *keys: str) -> Any:
    """Return ``params[k1][k2]...`` or raise an error that names the missing key."""
    node: Any = params
    for depth, key in enumerate(keys):
        if not isinstance(node, dict) or key not in node:
            raise DermaganError(f"params: missing key '{'.'.join(keys[: depth + 1])}'")
        node = node[key]
    return node
