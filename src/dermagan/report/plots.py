"""The long-format CSVs behind the top-level DVC plots: every run (or arm) in one chart.

DVC's top-level ``plots:`` cannot loop over params, so instead of one entry per run the report
stage writes one long table per chart and a template (``.dvc/plots/*.json``) colours it by run or
arm; the arms and seeds come from params, never from dvc.yaml.
"""

from __future__ import annotations

import pandas as pd

VAL_BAL_ACC, TEST_RECALL, TEST_ROC = "val_bal_acc.csv", "test_recall.csv", "test_roc.csv"


def val_bal_acc_long(histories: dict[tuple[str, int], pd.DataFrame], run_name) -> pd.DataFrame:
    """Columns epoch, run, arm, seed, val_bal_acc: each run's per-epoch real-val balanced accuracy."""
    frames = [pd.DataFrame({"epoch": h["epoch"].astype(int), "run": run_name(arm, seed), "arm": arm, "seed": seed,
                            "val_bal_acc": h["val_bal_acc"].astype(float).round(4)})
              for (arm, seed), h in histories.items()]
    columns = ["epoch", "run", "arm", "seed", "val_bal_acc"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def validation_scores(histories: dict[tuple[str, int], pd.DataFrame]) -> dict[str, float]:
    """Each arm's best real-val balanced accuracy (its selected epoch), mean over seeds: the compare
    stage's comparator rule (:func:`dermagan.evaluate.compare.validation_scores`)."""
    best: dict[str, list[float]] = {}
    for (arm, _), h in histories.items():
        best.setdefault(arm, []).append(float(h["val_bal_acc"].max()))
    return {arm: sum(v) / len(v) for arm, v in best.items()}


def recall_by_arm(compare: dict, classes: tuple[str, ...]) -> pd.DataFrame:
    """Columns arm, class, recall, recall_std: test recall of every class per arm (mean over seeds)."""
    rows = [{"arm": arm, "class": c, "recall": round(stats[f"recall_{c}_mean"], 4),
             "recall_std": None if stats.get(f"recall_{c}_std") is None else round(stats[f"recall_{c}_std"], 4)}
            for arm, stats in (compare.get("arms") or {}).items() for c in classes
            if stats.get(f"recall_{c}_mean") is not None]
    return pd.DataFrame(rows, columns=["arm", "class", "recall", "recall_std"])


def roc_long(frame: pd.DataFrame) -> pd.DataFrame:
    """A run's ROC CSV as columns class, fpr, tpr (the evaluate stage's long format; older files were
    wide: fpr plus one tpr column per class)."""
    if {"class", "fpr", "tpr"} <= set(frame.columns):
        return frame[["class", "fpr", "tpr"]]
    return frame.melt(id_vars="fpr", var_name="class", value_name="tpr")[["class", "fpr", "tpr"]]


def roc_by_arm(rocs: dict[tuple[str, int], pd.DataFrame], classes: tuple[str, ...]) -> pd.DataFrame:
    """Columns arm, class, fpr, tpr: per arm the one-vs-rest test ROC of each of ``classes``, averaged over
    seeds on the runs' shared FPR grid."""
    columns = ["arm", "class", "fpr", "tpr"]
    frames = [roc_long(frame).assign(arm=arm) for (arm, _), frame in rocs.items()]
    if not frames:
        return pd.DataFrame(columns=columns)
    data = pd.concat(frames, ignore_index=True)
    data = data[data["class"].isin(classes)].assign(fpr=lambda d: d["fpr"].astype(float).round(4))
    mean = data.groupby(["arm", "class", "fpr"], sort=False)["tpr"].mean().round(4).reset_index()
    return mean[columns]
