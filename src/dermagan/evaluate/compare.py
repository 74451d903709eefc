"""One table and one figure of every classifier arm, from the evaluate metrics files."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def comparison_table(metrics_by_arm: dict[str, dict], arms: dict[str, dict]) -> pd.DataFrame:
    """One row per arm: settings, test balanced accuracy with CI, macro metrics, per-class recall."""
    rows = []
    for arm, metrics in metrics_by_arm.items():
        test = metrics["test"]
        row = {"arm": arm, **{k: arms[arm].get(k) for k in ("backbone", "pretrained", "augment", "class_weights")},
               "bal_acc": test["bal_acc"], "bal_acc_ci_low": test["bal_acc_ci_low"],
               "bal_acc_ci_high": test["bal_acc_ci_high"], "macro_f1": test["macro_f1"],
               "macro_auc": test["macro_auc"], "accuracy": test["accuracy"]}
        for name, values in test["per_class"].items():
            row[f"recall_{name}"] = values["recall"]
            row[f"recall_{name}_ci_low"] = values["recall_ci_low"]
            row[f"recall_{name}_ci_high"] = values["recall_ci_high"]
        rows.append(row)
    return pd.DataFrame(rows).sort_values("bal_acc", ascending=False, ignore_index=True)


def markdown_table(table: pd.DataFrame, classes: tuple[str, ...]) -> str:
    """Compact markdown: metric [95% CI] per arm, recall per class."""
    header = ["arm", "backbone", "aug", "cw", "bal_acc [95% CI]", "macro F1", "macro AUC", "acc",
              *[f"recall {c}" for c in classes]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, r in table.iterrows():
        cells = [r["arm"], str(r["backbone"]), _yes(r["augment"]), _yes(r["class_weights"]),
                 f"{r['bal_acc']:.3f} [{r['bal_acc_ci_low']:.3f}, {r['bal_acc_ci_high']:.3f}]",
                 f"{r['macro_f1']:.3f}", _fmt(r["macro_auc"]), f"{r['accuracy']:.3f}",
                 *[f"{r[f'recall_{c}']:.2f} [{_fmt(r[f'recall_{c}_ci_low'], 2)}, {_fmt(r[f'recall_{c}_ci_high'], 2)}]"
                   for c in classes]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def comparison_figure(table: pd.DataFrame, classes: tuple[str, ...]) -> plt.Figure:
    """Left: balanced accuracy with 95% CI per arm. Right: per-class recall heatmap."""
    fig, (ax_bal, ax_rec) = plt.subplots(1, 2, figsize=(13, 0.6 * len(table) + 2.5),
                                         gridspec_kw={"width_ratios": [1, 1.4]})
    y = np.arange(len(table))
    err = [table["bal_acc"] - table["bal_acc_ci_low"], table["bal_acc_ci_high"] - table["bal_acc"]]
    ax_bal.errorbar(table["bal_acc"], y, xerr=err, fmt="o", capsize=4)
    ax_bal.set(yticks=y, yticklabels=table["arm"], xlabel="test balanced accuracy (95% bootstrap CI)",
               xlim=(0, 1), title="Real-only test set")
    ax_bal.invert_yaxis()
    ax_bal.grid(axis="x", alpha=0.3)
    recalls = table[[f"recall_{c}" for c in classes]].to_numpy(dtype=float)
    image = ax_rec.imshow(recalls, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for (i, j), value in np.ndenumerate(recalls):
        ax_rec.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8,
                    color="black" if value > 0.6 else "white")
    ax_rec.set(xticks=range(len(classes)), xticklabels=classes, yticks=y, yticklabels=table["arm"],
               title="test recall per class")
    fig.colorbar(image, ax=ax_rec, fraction=0.04)
    fig.tight_layout()
    return fig


def _yes(value) -> str:
    return "yes" if bool(value) else "no"


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None or pd.isna(value) else f"{value:.{digits}f}"
