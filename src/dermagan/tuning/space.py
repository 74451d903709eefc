"""Search spaces declared in params, not in code.

One entry per key, in one of three forms::

    lr: {float: [3.0e-4, 3.0e-3], log: true}   # uniform or log-uniform float
    epochs: {int: [4, 7]}                       # integer range, inclusive (optional step:)
    sampler: {choices: [shuffle, class_balanced]}

``suggest`` asks an Optuna trial for every key and returns plain Python values.
"""

from __future__ import annotations

from typing import Any

import optuna

from dermagan.errors import DermaganError

KINDS = ("float", "int", "choices")


def check_space(space: dict, where: str) -> None:
    """Refuse a malformed search space with an error that names the key."""
    if not isinstance(space, dict) or not space:
        raise DermaganError(f"params: {where} must be a non-empty mapping of key -> range")
    for key, spec in space.items():
        kinds = [k for k in KINDS if isinstance(spec, dict) and k in spec]
        if len(kinds) != 1:
            raise DermaganError(f"params: {where}.{key} must have exactly one of {KINDS}, got {spec!r}")
        value = spec[kinds[0]]
        if kinds[0] == "choices":
            if not isinstance(value, list) or not value:
                raise DermaganError(f"params: {where}.{key}.choices must be a non-empty list")
        elif not (isinstance(value, list) and len(value) == 2 and value[0] <= value[1]):
            raise DermaganError(f"params: {where}.{key}.{kinds[0]} must be [low, high] with low <= high, got {value!r}")


def suggest(trial: optuna.Trial, space: dict) -> dict[str, Any]:
    """One value per key of ``space`` from ``trial``."""
    values = {}
    for key, spec in space.items():
        if "choices" in spec:
            values[key] = trial.suggest_categorical(key, list(spec["choices"]))
        elif "int" in spec:
            low, high = spec["int"]
            values[key] = trial.suggest_int(key, int(low), int(high), step=int(spec.get("step", 1)),
                                            log=bool(spec.get("log", False)))
        else:
            low, high = spec["float"]
            values[key] = trial.suggest_float(key, float(low), float(high), log=bool(spec.get("log", False)))
    return values
