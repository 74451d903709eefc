"""Where MLflow writes, and the facts every run is tagged with."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

from dermagan.errors import DermaganError

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
# The experiment tag MLflow 3's UI reads to choose an experiment's views. Untagged, it may open an
# experiment on the GenAI overview (traces, token usage); "custom_model_development" ("Machine
# learning" in the UI's type selector, one of the two it offers) opens the runs table.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# URI schemes MLflow 3 has tracking and registry stores for ('' is a plain local path: the file store).
SUPPORTED_SCHEMES = ("", "file", "sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks",
                     "databricks-uc", "uc")
SQLITE_HEADER = b"SQLite format 3\x00"


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the project's sqlite store under ``mlruns/``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def uri_scheme(uri: str) -> str:
    """``sqlite`` for ``sqlite:///x``, ``postgresql`` for ``postgresql+psycopg2://...``, '' for a plain path."""
    if "://" not in uri:
        return "file" if uri.startswith("file:") else ""
    return uri.split("://", 1)[0].split("+", 1)[0].lower()


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (query string dropped), or None (not sqlite, in memory)."""
    if uri_scheme(uri) != "sqlite":
        return None
    rest = uri.split("://", 1)[1]
    if not rest.startswith("/"):  # sqlite:// (in memory) or sqlite://host/... (not a file)
        return None
    path = rest[1:].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


def check_tracking_uri(uri: str) -> str:
    """Refuse a tracking URI MLflow cannot open, quickly and by name; return it unchanged.

    Unknown schemes are refused with the supported list. For a sqlite URI: the database's folder
    must be a folder (it is created when missing), the database path must not be a folder, and an
    existing non-empty file must start with the SQLite header (MLflow would otherwise fail with a
    traceback, or retry for minutes on a folder). Nothing is written.
    """
    scheme = uri_scheme(uri)
    if scheme not in SUPPORTED_SCHEMES:
        shown = ", ".join(f"{s}://" for s in SUPPORTED_SCHEMES if s) + " or a local path"
        raise DermaganError(f"MLflow tracking URI '{uri}' (MLFLOW_TRACKING_URI): unsupported scheme '{scheme}'; "
                            f"use one of {shown} (default: {DEFAULT_TRACKING_URI})")
    path = sqlite_path(uri)
    if path is None:
        return uri
    where = f"MLflow tracking database {path} (tracking URI '{uri}')"
    for parent in reversed((path.parent, *path.parent.parents)):
        if parent.exists() and not parent.is_dir():
            raise DermaganError(f"{where}: {parent} is a file, not a folder; move it away or set "
                                "MLFLOW_TRACKING_URI to a sqlite:/// path in a folder")
    if path.is_dir():
        raise DermaganError(f"{where}: {path} is a folder, not a database file; move it away or point "
                            "MLFLOW_TRACKING_URI at a file")
    if path.exists():
        try:
            with open(path, "rb") as handle:
                head = handle.read(len(SQLITE_HEADER))
        except OSError as exc:
            raise DermaganError(f"{where}: cannot read it: {exc}") from exc
        if head and head != SQLITE_HEADER:
            raise DermaganError(f"{where}: not a SQLite database (its first bytes are {head[:16]!r}); restore "
                                "it from a backup, or move it away to start a new, empty tracking store")
    return uri


def configure(experiment: str) -> str:
    """Point MLflow at the tracking store and experiment; return the experiment id.

    With a sqlite URI MLflow puts artifacts under ``./mlruns/<experiment id>/``. A URI or store
    MLflow cannot open raises DermaganError naming it (see ``check_tracking_uri``). An experiment
    without the ``mlflow.experimentKind`` tag (new, or made before this) gets :data:`EXPERIMENT_KIND`,
    so the UI opens it on its runs; a kind already set (e.g. chosen in the UI) is left as it is.
    """
    from sqlalchemy.exc import SQLAlchemyError

    uri = check_tracking_uri(tracking_uri())
    path = sqlite_path(uri)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DermaganError(f"MLflow tracking database {path}: cannot create its folder: {exc}") from exc
    mlflow.set_tracking_uri(uri)
    try:
        found = mlflow.set_experiment(experiment)
        if EXPERIMENT_KIND_TAG not in found.tags:
            mlflow.MlflowClient().set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return found.experiment_id
    except (SQLAlchemyError, MlflowException) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DermaganError(f"cannot open MLflow tracking store '{uri}' (experiment '{experiment}'): "
                            f"{type(exc).__name__}: {first}") from exc


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
