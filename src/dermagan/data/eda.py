"""Exploratory figures of the prepared split table."""

from __future__ import annotations

from pathlib import Path


import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from dermagan.constants import SPLITS  # noqa: E402


def plot_class_counts(table: pd.DataFrame, path: Path, classes: tuple[str, ...]) -> None:
    """Grouped bars of images per task label (``classes``, in order) and split, log scale so rare classes stay
    visible."""
    counts = table.groupby(["dx", "split"]).size().unstack(fill_value=0)
    counts = counts.reindex(index=list(classes), columns=list(SPLITS), fill_value=0)
    ax = counts.plot.bar(figsize=(8, 4.5), logy=True, rot=0)
    ax.set(xlabel="diagnosis (dx)", ylabel="images (log scale)", title="Images per class and split")
    for container in ax.containers:
        ax.bar_label(container, fontsize=7)
    _save(ax.figure, path)


def plot_age(table: pd.DataFrame, path: Path) -> None:
    """Age histogram per split (missing ages are dropped and counted in the title)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for split in SPLITS:
        ages = table.loc[table["split"] == split, "age"].dropna()
        ax.hist(ages, bins=range(0, 95, 5), alpha=0.5, density=True, label=split)
    missing = int(table["age"].isna().sum())
    ax.set(xlabel="age (years)", ylabel="density", title=f"Age by split ({missing} missing)")
    ax.legend()
    _save(fig, path)


def plot_category_by_class(table: pd.DataFrame, column: str, path: Path, classes: tuple[str, ...]) -> None:
    """Stacked share of a categorical column (sex, localization) within each task label of ``classes``."""
    shares = pd.crosstab(table["dx"], table[column].fillna("unknown"), normalize="index")
    shares = shares.reindex(index=list(classes))
    ax = shares.plot.barh(stacked=True, figsize=(9, 4.5), colormap="tab20")
    ax.set(xlabel="share of images", ylabel="dx", title=f"{column} within each class")
    ax.legend(bbox_to_anchor=(1.01, 1), loc="upper left", fontsize=7)
    _save(ax.figure, path)


def write_eda_figures(table: pd.DataFrame, directory: Path, classes: tuple[str, ...]) -> list[Path]:
    """Write every EDA figure into ``directory`` and return their paths (``classes``: the task labels, in the
    order the figures list them)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / n for n in ("class_counts.png", "age.png", "sex.png", "localization.png")]
    plot_class_counts(table, paths[0], classes)
    plot_age(table, paths[1])
    plot_category_by_class(table, "sex", paths[2], classes)
    plot_category_by_class(table, "localization", paths[3], classes)
    return paths


def _save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
