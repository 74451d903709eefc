"""The compare stage: every arm in one table, one figure and one MLflow run."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow

from dermagan.atomic import atomic_dir
from dermagan.constants import CLASSES
from dermagan.errors import DermaganError
from dermagan.evaluate.compare import comparison_figure, comparison_table, markdown_table
from dermagan.evaluate.plots import save
from dermagan.params import section
from dermagan.tracking.setup import configure, standard_tags


def read_metrics(metrics_dir: Path, arms: list[str]) -> dict[str, dict]:
    """The evaluate stage's metrics file of every arm, with an error naming a missing one."""
    found = {}
    for arm in arms:
        path = Path(metrics_dir) / f"{arm}.json"
        if not path.is_file():
            raise DermaganError(f"{path}: metrics for arm '{arm}' not found; run `dvc repro evaluate@{arm}`")
        found[arm] = json.loads(path.read_text())
    return found


def run_compare(params: dict, metrics_dir: Path, out_dir: Path) -> str:
    """Write comparison.md, comparison.csv and comparison.png; log them to MLflow."""
    arms = section(params, "arms")
    table = comparison_table(read_metrics(metrics_dir, list(arms)), arms)
    markdown = markdown_table(table, CLASSES)
    intro = ("All numbers are on the real-only, lesion-disjoint test split; brackets are "
             f"{params['evaluate']['ci_level']:.0%} bootstrap CIs ({params['evaluate']['bootstrap_samples']} resamples).\n\n")
    with atomic_dir(Path(out_dir)) as tmp:
        table.to_csv(tmp / "comparison.csv", index=False)
        (tmp / "comparison.md").write_text("# Classifier arms on the real-only test split\n\n" + intro + markdown)
        save(comparison_figure(table, CLASSES), tmp / "comparison.png")
        configure(section(params, "mlflow", "experiment"))
        with mlflow.start_run(run_name="compare"):
            mlflow.set_tags(standard_tags("compare", dvc_stage="compare"))
            mlflow.log_artifacts(str(tmp), "comparison")
            mlflow.log_table(table, "comparison.json")
    return markdown
