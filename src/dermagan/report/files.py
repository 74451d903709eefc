"""Reading the report's inputs (each missing one named with the command that makes it) and writing
the flat summary files."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from dermagan.atomic import atomic_file
from dermagan.errors import DermaganError
from dermagan.outputs import check_identity, file_mark


def read_json(path: Path, remedy: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DermaganError(f"{path}: not found; run `{remedy}`")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DermaganError(f"{path}: not valid JSON ({exc}); run `{remedy}`") from exc


def read_optional_json(path: Path | None) -> dict | None:
    return json.loads(Path(path).read_text()) if path is not None and Path(path).is_file() else None


def per_run(folder: Path, arms: list[str], seeds: list[int], run_name, suffix: str) -> dict[tuple[str, int], Path]:
    return {(arm, seed): Path(folder) / f"{run_name(arm, seed)}{suffix}" for arm in arms for seed in seeds}


def read_run_metrics(folder: Path, arms: list[str], seeds: list[int], run_name) -> dict[tuple[str, int], dict]:
    """The evaluate stage's metrics file of every (arm, seed) run."""
    return {(arm, seed): read_json(path, f"dvc repro evaluate@{arm}-{seed}")
            for (arm, seed), path in per_run(folder, arms, seeds, run_name, ".json").items()}


def read_histories(folder: Path, arms: list[str], seeds: list[int], run_name) -> dict[tuple[str, int], pd.DataFrame]:
    """The train stage's per-epoch history of every (arm, seed) run (columns epoch, val_bal_acc, ...)."""
    found = {}
    for (arm, seed), path in per_run(folder, arms, seeds, run_name, ".csv").items():
        if not path.is_file():
            raise DermaganError(f"{path}: training history not found; run `dvc repro train@{arm}-{seed}`")
        history = pd.read_csv(path)
        if not {"epoch", "val_bal_acc"} <= set(history.columns) or history.empty:
            raise DermaganError(f"{path}: no 'epoch'/'val_bal_acc' columns or rows; is this a training history?")
        found[(arm, seed)] = history
    return found


def read_rocs(folder: Path, arms: list[str], seeds: list[int], run_name) -> dict[tuple[str, int], pd.DataFrame]:
    """The evaluate stage's per-run ROC CSVs that exist (the report's ROC chart leaves out the others)."""
    return {key: pd.read_csv(path) for key, path in per_run(folder, arms, seeds, run_name, ".csv").items()
            if path.is_file()}


def write_summary(folder: Path, rows: dict[str, dict]) -> list[Path]:
    """One small flat JSON per row (``FOLDER/NAME.json``), each written atomically; files of names no longer
    listed are removed only when dermagan wrote them. No marker file: ``dvc metrics show`` would list it."""
    folder = Path(folder)
    check_identity(folder, "the summary folder")
    if folder.exists() and not folder.is_dir():
        raise DermaganError(f"{folder}: is a file, but the summary is a folder; remove it yourself or choose "
                            "another path")
    written = []
    for name, row in rows.items():
        with atomic_file(folder / f"{name}.json") as tmp:
            tmp.write_text(json.dumps(row, indent=1, allow_nan=False) + "\n")
        written.append(folder / f"{name}.json")
    for stale in sorted(folder.glob("*.json")):
        if stale.stem not in rows and not stale.is_symlink() and file_mark(stale):
            stale.unlink()
    return written
