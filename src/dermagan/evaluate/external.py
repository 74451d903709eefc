"""External test sets scored beside (never instead of) the internal test split: which sets, where their
per-run predictions go, their MLflow keys (evaluate, compare and ensemble share these).

``prepare-external`` writes each set of params ``evaluate.external`` as ``artifacts/external/NAME.npz``
(:mod:`dermagan.data.external`). :func:`external_set_names`: the prepared folder must hold exactly the
sets params name, for the task's classes. The evaluate stage writes one run's predictions on a set inside
that run's figures folder, ``reports/eval/ARM-sSEED/external/NAME.csv`` (an output evaluate already
declares), where compare reads them (:mod:`dermagan.evaluate.external_compare`).

A class an external set lacks has no recall there: the tables show NaN and its verdicts are
:data:`UNDEFINED`; balanced accuracy averages the classes the set has.
"""

from __future__ import annotations

from pathlib import Path

from dermagan.config.layout import LAYOUT
from dermagan.data.external import external_names, load_external
from dermagan.data.prepared import SplitArrays, check_classes
from dermagan.errors import DermaganError
from dermagan.evaluate.report import flat_metrics

EXTERNAL = "external"  # the metrics documents' key, the sub-folder name and the MLflow prefix
UNDEFINED = "undefined on this set"  # a verdict whose metric the set cannot measure (a class it lacks)


# --- paths ---------------------------------------------------------------------------------------------------

def eval_root() -> Path:
    """The folder holding every run's evaluate figures folder (``reports/eval``), from the Layout."""
    return LAYOUT.eval_plots("ARM", 0).parent


def predictions_file(plots_dir: Path, name: str) -> Path:
    """One run's predictions on external set ``name``: ``<plots_dir>/external/NAME.csv``."""
    return Path(plots_dir) / EXTERNAL / f"{name}.csv"


def run_predictions_file(eval_dir: Path, arm: str, seed: int, name: str) -> Path:
    """``reports/eval/ARM-sSEED/external/NAME.csv`` under ``eval_dir`` (what evaluate wrote)."""
    return predictions_file(Path(eval_dir) / LAYOUT.run_name(arm, seed), name)


# --- the sets ------------------------------------------------------------------------------------------------

def external_set_names(external_dir: Path | None, params_sets: dict, classes: tuple[str, ...]) -> list[str]:
    """The sets to score (sorted): none without ``external_dir``; else exactly params ``evaluate.external``'s.

    A missing folder means no sets when params name none (an ad-hoc run before ``prepare-external``); a
    folder that holds other sets than params name, or was prepared for other classes, is stale: an error.
    """
    if external_dir is None:
        return []
    external_dir, wanted = Path(external_dir), sorted(params_sets or {})
    if not external_dir.is_dir() and not wanted:
        return []
    names = external_names(external_dir)  # names the remedy when the folder is missing
    if names != wanted:
        raise DermaganError(f"{external_dir}: holds external test set(s) {names}, but params evaluate.external "
                            f"names {wanted}; run `dermagan prepare-external` (or `dvc repro prepare_external`)")
    if names:
        check_classes(external_dir, tuple(classes))
    return names


def load_sets(external_dir: Path, names: list[str]) -> dict[str, SplitArrays]:
    return {name: load_external(Path(external_dir), name) for name in names}


def mlflow_external_metrics(name: str, report: dict) -> dict[str, float]:
    """``external/NAME/bal_acc``, ``external/NAME/recall_df``... (the evaluate stage's test/ keys)."""
    return flat_metrics(report, f"{EXTERNAL}/{name}/")
