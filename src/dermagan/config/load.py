"""Read params.yaml and the tuned-params files it names, once, into a typed :class:`Config`.

The library never reads params itself: the CLI calls :func:`load_config` at each stage's entry and
passes the ``Config`` (or plain values from it) down.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from dermagan.errors import DermaganError


TUNED_KEY = "tuned_params"  # params.yaml names the classifier's tuned-params file under this key
# tuning target -> the params.yaml key naming the file its `--apply` writes
TUNED_KEYS = {"classifier": TUNED_KEY, "gan": "tuned_gan_params"}


def load_config(path: Path) -> "Config":
    """params.yaml + its tuned files, merged and validated (errors name the file, key and value)."""
    from dermagan.config.schema import build_config

    return build_config(load_params(path), source=str(path))


def load_params(path: Path, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load params.yaml and the tuned-params files it names (``tuned_params:``, ``tuned_gan_params:``), merged.

    A tuned file's blocks (e.g. ``train``, ``gan``) are merged into the same blocks of params.yaml;
    a key set in two places is an error, so a tuned value is only ever in one place. The merged
    dict gets ``tuned.keys`` (the dotted keys that came from tuned files), ``tuned.file`` (the
    classifier's) and ``tuned.study``. ``params`` stands in for the file's contents (a profile's merge);
    tuned files are still found beside ``path``.
    """
    params = read_yaml(path) if params is None else params
    merged, info = params, {}
    for target, key in TUNED_KEYS.items():
        tuned_file = params.get(key)
        if not tuned_file:
            continue
        tuned_path = Path(path).parent / tuned_file
        if not tuned_path.is_file():
            raise DermaganError(f"{path}: {key} names {tuned_file}, which does not exist; run "
                                f"`dermagan tune {target} --apply` or remove the key")
        tuned = read_yaml(tuned_path)
        merged, keys = merge_tuned(merged, {k: v for k, v in tuned.items() if k != "study"}, tuned_path, path)
        if target == "classifier":
            info.update({"file": str(tuned_file), "study": tuned.get("study", {})})
        else:
            info.setdefault("files", {})[target] = str(tuned_file)
        info["keys"] = info.get("keys", []) + keys
    if info:
        merged["tuned"] = {"file": None, "keys": [], "study": {}, **info}
    return merged


REPLACED = ("arms",)  # top-level blocks a profile replaces rather than merges


def merge_params(base: dict[str, Any], overlay: dict[str, Any], top: bool = True) -> dict[str, Any]:
    """``base`` with ``overlay`` merged in: mappings key by key, everything else (and ``arms``) replaced."""
    merged = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and not (top and key in REPLACED):
            merged[key] = merge_params(merged[key], value, top=False)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_profile(params_path: Path, profile_path: Path) -> tuple[dict[str, Any], "Config"]:
    """A profile's merged params (``params.yaml`` + the overlay, tuned files not merged in) and its Config."""
    from dermagan.config.schema import build_config

    profile_path = Path(profile_path)
    if not profile_path.is_file():
        names = sorted(p.stem for p in profile_path.parent.glob("*.yaml"))
        raise DermaganError(f"{profile_path}: no such profile; profiles are {names or 'none'} (a profile is a "
                            "YAML file of the params.yaml keys it changes)")
    default = read_yaml(params_path)
    merged = merge_params(default, read_yaml(profile_path))
    config = build_config(load_params(params_path, merged), source=f"{params_path} + {profile_path}")
    for key in ("mlflow.experiment", "gan.experiment", "mlflow.registered_model", "gan.registered_model"):
        block, _, leaf = key.partition(".")
        value = (merged.get(block) or {}).get(leaf)
        if value == (default.get(block) or {}).get(leaf):
            raise DermaganError(f"{profile_path}: set {key} to the profile's own name (it is '{value}', as in "
                                f"{params_path}), so its runs do not mix with the default's")
    return merged, config


def merge_tuned(params: dict, tuned: dict, tuned_path: Path, params_path: Path) -> tuple[dict, list[str]]:
    """``params`` with every block of ``tuned`` merged in; refuses a key present in both."""
    merged, keys = dict(params), []
    for block, values in tuned.items():
        if not isinstance(values, dict):
            raise DermaganError(f"{tuned_path}: top-level '{block}' must be a mapping of tuned values")
        target = dict(merged.get(block) or {})
        both = sorted(set(target) & set(values))
        if both:
            raise DermaganError(f"{block}.{both[0]} is set in both {params_path} and {tuned_path}; a tuned key "
                                f"lives only in the tuned file: delete it from {params_path} (all: {both})")
        target.update(values)
        merged[block] = target
        keys += [f"{block}.{k}" for k in values]
    return merged, keys


def read_yaml(path: Path) -> dict[str, Any]:
    """Load one YAML mapping, with an error that names the file when it is missing or malformed."""
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
