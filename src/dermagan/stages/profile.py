"""The profile command glue: params.yaml + profiles/NAME.yaml -> its own DVC project -> dvc repro."""

from __future__ import annotations

from pathlib import Path

from dermagan.config.layout import LAYOUT
from dermagan.config.load import load_profile
from dermagan.profiles import prepare_workspace, run_dvc, tracking_env

DEFAULT_TARGETS = ("compare", "ensemble")  # what a profile runs: the stages its answer needs, and their inputs


def run_profile(params_path: Path, name: str, targets: list[str], dry_run: bool = False) -> Path:
    """Validate the profile, write its DVC project and (unless ``dry_run``) reproduce ``targets`` there."""
    merged, _ = load_profile(params_path, LAYOUT.profile_file(name))  # validated whole; refuses shared names
    folder = prepare_workspace(Path("."), LAYOUT.profile_dir(name), name, merged, Path("dvc.yaml").read_text())
    if not dry_run:
        run_dvc(["repro", *(targets or DEFAULT_TARGETS)], folder, tracking_env(Path("."), LAYOUT.tracking_db))
    return folder
