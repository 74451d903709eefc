"""Where MLflow writes, and the facts every run is tagged with."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import mlflow

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the project's sqlite store under ``mlruns/``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def configure(experiment: str) -> str:
    """Point MLflow at the tracking store and experiment; return the experiment id.

    With a sqlite URI MLflow puts artifacts under ``./mlruns/<experiment id>/``.
    """
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    return mlflow.set_experiment(experiment).experiment_id


def git_commit() -> str:
    """The current commit (with ``-dirty`` when the tree has changes), or ``unknown``."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def standard_tags(stage: str, **extra: str) -> dict[str, str]:
    """Tags for every run: stage name and git commit, plus whatever the stage adds."""
    return {"stage": stage, "git_commit": git_commit(), **{k: str(v) for k, v in extra.items()}}


def flatten(params: dict, prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}`` for ``mlflow.log_params``."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat
