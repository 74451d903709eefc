"""The ensemble stage's report folder: tables, report.md, summary.json and two figures."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from dermagan.config.layout import LAYOUT
from dermagan.ensemble.fit import COMBINERS, VAL_NOTE, EnsembleResult
from dermagan.evaluate.compare import VERDICT_COLOURS
from dermagan.evaluate.plots import save


def write_tables(result: EnsembleResult, folder: Path, predictions_folder: Path) -> None:
    """Per-combiner per-seed test predictions (the evaluate stage's format), the CSV tables and the figures."""
    for (combiner, seed), frame in result.predictions.items():
        frame.to_csv(Path(predictions_folder) / f"{LAYOUT.run_name(f'ensemble_{combiner}', seed)}.csv", index=False)
    threshold = result.document["collapse_threshold"]
    save(weights_figure(result.weights_long, result.arms, result.seeds, threshold), Path(folder) / "weights.png")
    save(ensemble_figure(result.runs, result.members, result.best_arm, result.vs_best, result.settings.ci_level),
         Path(folder) / "ensemble.png")
    result.runs.to_csv(Path(folder) / "runs.csv", index=False)
    result.members.drop(columns="pred").to_csv(Path(folder) / "members.csv", index=False)
    result.summary.to_csv(Path(folder) / "combiners.csv", index=False)
    result.weights_long.to_csv(Path(folder) / "weights.csv", index=False)
    result.vs_best.to_csv(Path(folder) / "vs_best_single.csv", index=False)
    for name, scores in result.external.items():  # external/NAME/: the same tables on each external set
        sub = Path(folder) / "external" / name
        sub.mkdir(parents=True)
        scores.runs.drop(columns=[c for c in scores.runs.columns if c.startswith("w_")]).to_csv(
            sub / "runs.csv", index=False)
        scores.members.drop(columns="pred").to_csv(sub / "members.csv", index=False)
        scores.summary.to_csv(sub / "combiners.csv", index=False)
        scores.vs_best.to_csv(sub / "vs_best_single.csv", index=False)


def write_documents(result: EnsembleResult, folder: Path) -> str:
    """report.md and summary.json (the document, with ``registered`` once set); returns the JSON text."""
    markdown = markdown_report(result.document, result.summary, result.runs, result.vs_best, result.arms,
                               result.seeds, result.settings.bootstrap_samples, result.settings.ci_level)
    for name, scores in result.external.items():
        markdown += external_markdown(name, scores, result.document, result.settings.bootstrap_samples,
                                      result.settings.ci_level)
    (Path(folder) / "report.md").write_text(markdown)
    text = json.dumps(result.document, indent=2, allow_nan=False)
    (Path(folder) / "summary.json").write_text(text)
    return text


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None or pd.isna(value) else f"{value:.{digits}f}"


def _spread(row, metric: str, digits: int = 3) -> str:
    mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
    return _fmt(mean, digits) if pd.isna(std) else f"{_fmt(mean, digits)} ± {_fmt(std, digits)}"


def markdown_report(document, summary_table, runs, vs_best, arms, seeds, n_boot, level) -> str:
    """report.md: what was fitted where, the combiners' test scores, their weights, the paired bootstrap."""
    classes = document["classes"]
    best = document["best_single"]["arm"]
    ranking = ", ".join(f"{a} {v:.3f}" for a, v in sorted(document["best_single"]["val_bal_acc_by_arm"].items(),
                                                         key=lambda kv: -kv[1]))
    lines = ["# Ensembles of the classifier arms", "",
             f"Members: {', '.join(arms)}; one ensemble per seed ({', '.join(map(str, seeds))}) of the arms' "
             f"models of that seed. Weights are fitted on the real val split only ({document['n_val']} images); "
             f"every score below is on the real-only test split ({document['n_test']} images), which chooses nothing.",
             "", "- `bma`: exact Bayesian model averaging, w ∝ exp(Σ log p(y|x)) over val (uniform prior);",
             "- `bma_tempered`: the same with the log-likelihood divided by n_val (per-image likelihood);",
             "- `stacked`: mixture weights maximising the val log-likelihood of Σ w p (EM);",
             "- `average`: 1/M each.", "",
             f"Best single arm, chosen on val (mean val balanced accuracy: {ranking}): `{best}`.", "",
             "## Test scores: mean ± std over seeds", ""]
    header = ["model", "test bal_acc", "val bal_acc*", "collapsed seeds", *[f"recall {c}" for c in classes]]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, r in summary_table.iterrows():
        collapsed = "" if r["kind"] != "ensemble" else f"{int(r['collapsed_seeds'])}/{int(r['n_seeds'])}"
        name = r["model"] if r["kind"] == "ensemble" else f"{r['model']} (best single arm)"
        lines.append("| " + " | ".join([name, _spread(r, "bal_acc"), _spread(r, "val_bal_acc"), collapsed,
                                         *[_spread(r, f"recall_{c}", 2) for c in classes]]) + " |")
    lines += ["", f"\\* ensemble val scores are optimistic: {VAL_NOTE.split(', so')[0]}. Collapsed: the largest "
              f"weight exceeds {document['collapse_threshold']}.", "", "## Weights per seed", ""]
    header = ["combiner", "seed", *arms, "effective members"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, r in runs.iterrows():
        lines.append("| " + " | ".join([r["combiner"], str(r["seed"]), *[_fmt(r[f"w_{a}"]) for a in arms],
                                         _fmt(r["effective_members"], 2)]) + " |")
    lines += ["", f"## Each combiner vs the best single arm (`{best}`)", "",
              f"diff = ensemble − `{best}`, each averaged over the seeds (seed s ensemble vs `{best}` seed s); "
              f"{level:.0%} CI from {n_boot} paired bootstrap resamples of test images (the compare stage's "
              "`gan_vs_best`); \"better\"/\"worse\" only when the whole CI is above/below 0.", ""]
    header = ["combiner", "metric", "ensemble", best, f"diff [{level:.0%} CI]", "verdict"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, r in vs_best.iterrows():
        lines.append("| " + " | ".join([r["combiner"], r["metric"], _fmt(r["ensemble_value"]), _fmt(r["single_value"]),
                                         f"{r['diff']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]",
                                         r["verdict"]]) + " |")
    reg = document.get("registered")
    if reg:
        lines += ["", "## Registered", "",
                  f"`{reg['model_uri']}`: `{reg['combiner']}` on the seed-{reg['seed']} members ({reg['reason']}); "
                  f"test bal_acc {reg['test_bal_acc']:.4f}, val bal_acc {reg['val_bal_acc']:.4f} ({VAL_NOTE})."]
    return "\n".join(lines) + "\n"


def external_markdown(name: str, scores, document: dict, n_boot: int, level: float) -> str:
    """The report section of one external test set: the combiners' and the best single arm's scores, the
    verdicts against that arm; weights and arm are the val-fitted ones (the set chooses nothing)."""
    classes, best = document["classes"], document["best_single"]["arm"]
    counts = ", ".join(f"{c} {n}" for c, n in document["external"][name]["counts"].items())
    lines = ["", f"## External test set `{name}` ({scores.n_images} images)", "",
             "Scored beside, never instead of, the internal test: the same val-fitted weights and the same best "
             f"single arm (`{best}`, chosen on val); this set chooses nothing. Images per class: {counts}; a class "
             "the set lacks has no recall here (n/a).", "",
             "| " + " | ".join(["model", "bal_acc", *[f"recall {c}" for c in classes]]) + " |",
             "|" + "---|" * (2 + len(classes))]
    for _, r in scores.summary.iterrows():
        model = r["model"] if r["kind"] == "ensemble" else f"{r['model']} (best single arm)"
        lines.append("| " + " | ".join([model, _spread(r, "bal_acc"),
                                         *[_spread(r, f"recall_{c}", 2) for c in classes]]) + " |")
    lines += ["", f"diff = ensemble − `{best}` on this set, {level:.0%} CI from {n_boot} paired bootstrap resamples "
              "of its images.", "",
              "| " + " | ".join(["combiner", "metric", "ensemble", best, f"diff [{level:.0%} CI]", "verdict"]) + " |",
              "|" + "---|" * 6]
    for _, r in scores.vs_best.iterrows():
        lines.append("| " + " | ".join([r["combiner"], r["metric"], _fmt(r["ensemble_value"]), _fmt(r["single_value"]),
                                         f"{_signed(r['diff'])} [{_signed(r['ci_low'])}, {_signed(r['ci_high'])}]",
                                         r["verdict"]]) + " |")
    return "\n".join(lines) + "\n"


def _signed(value, digits: int = 3) -> str:
    return "n/a" if value is None or pd.isna(value) else f"{value:+.{digits}f}"


def weights_figure(weights: pd.DataFrame, arms: list[str], seeds: list[int], threshold: float) -> plt.Figure:
    """One panel per combiner: each arm's weight, one bar per seed."""
    fig, axes = plt.subplots(1, len(COMBINERS), figsize=(3.2 * len(COMBINERS), 3.6), sharey=True)
    width = 0.8 / len(seeds)
    x = np.arange(len(arms))
    for ax, combiner in zip(axes, COMBINERS):
        for j, seed in enumerate(seeds):
            values = weights[(weights["combiner"] == combiner) & (weights["seed"] == seed)].set_index("arm")["weight"]
            ax.bar(x + (j - (len(seeds) - 1) / 2) * width, [values[a] for a in arms], width, label=f"seed {seed}")
        ax.axhline(threshold, color="C3", lw=0.8, ls="--")
        ax.set(xticks=x, title=combiner, ylim=(0, 1.05))
        ax.set_xticklabels(arms, rotation=45, ha="right", fontsize=8)
    axes[0].set_ylabel("weight (fitted on val)")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Ensemble weights per seed (dashed: collapse threshold {threshold})")
    fig.tight_layout()
    return fig


def ensemble_figure(runs: pd.DataFrame, members: pd.DataFrame, best_arm: str, vs_best: pd.DataFrame,
                    level: float) -> plt.Figure:
    """Left: test balanced accuracy per seed (dots) and mean, combiners and arms. Right: diff vs best single arm."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    groups = [(c, runs.loc[runs["combiner"] == c, "bal_acc"].to_numpy(), "C2") for c in COMBINERS]
    groups += [(a + (" (best, val)" if a == best_arm else ""), members.loc[members["arm"] == a, "bal_acc"].to_numpy(),
                "C0") for a in members["arm"].unique()]
    for y, (label, values, colour) in enumerate(groups):
        left.scatter(values, np.full(len(values), y), s=18, color=colour, alpha=0.6)
        left.plot(values.mean(), y, "D", color=colour, markeredgecolor="black")
    left.set(yticks=range(len(groups)), yticklabels=[g[0] for g in groups], xlabel="test balanced accuracy",
             title="Ensembles (green) and single arms (blue): seeds and mean")
    left.invert_yaxis()
    left.grid(axis="x", alpha=0.3)
    for i, (_, r) in enumerate(vs_best.iterrows()):
        err = [[max(r["diff"] - r["ci_low"], 0)], [max(r["ci_high"] - r["diff"], 0)]]
        right.errorbar(r["diff"], i, xerr=err, fmt="o", capsize=3, color=VERDICT_COLOURS[r["verdict"]])
    right.axvline(0, color="black", lw=0.8)
    labels = [f"{r['combiner']}: {r['metric']}" for _, r in vs_best.iterrows()]
    right.set(yticks=range(len(vs_best)), yticklabels=labels,
              xlabel=f"ensemble − {best_arm} ({level:.0%} paired bootstrap CI)", title="vs the best single arm")
    right.invert_yaxis()
    right.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig
