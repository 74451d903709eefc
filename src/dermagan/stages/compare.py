"""The compare stage: every (arm, seed) run in tables, figures, a GAN-vs-best verdict and one MLflow run
(and the same tables and verdicts on every external test set, beside the internal test);
and ``compare-runs``: one arm's test predictions against an earlier run of it (or another arm)."""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from dermagan.atomic import atomic_dir, atomic_file
from dermagan.config import Config
from dermagan.config.layout import LAYOUT
from dermagan.errors import DermaganError
from dermagan.evaluate.compare import (
    TEST_RULE,
    BinaryScores,
    arm_roc_table,
    arms_table,
    binary_scores,
    check_predictions_match_metrics,
    class_counts,
    comparison_figure,
    comparison_markdown,
    gan_vs_best,
    gan_vs_best_figure,
    is_gan_arm,
    mlflow_metrics,
    paired_runs_document,
    read_metrics,
    read_prediction_file,
    read_predictions,
    read_scores,
    runs_table,
    summary,
    validation_comparator,
    validation_scores,
)
from dermagan.evaluate.external import external_set_names
from dermagan.evaluate.external_compare import external_mlflow_metrics, score_external_set, write_external_tables
from dermagan.evaluate.metrics import score_column
from dermagan.evaluate.plots import roc_figure, save
from dermagan.serialize import json_safe
from dermagan.tracking.setup import configure, standard_tags

__all__ = ["read_predictions", "run_compare", "run_compare_runs"]  # read_predictions: tests/test_ensemble.py


def run_compare(cfg: Config, metrics_dir: Path, out_dir: Path, predictions_dir: Path,
                history_dir: Path | None = None, summary_json: Path | None = None,
                external_dir: Path | None = None, eval_dir: Path | None = None) -> str:
    """Write comparison.md/.png, arms/runs/gan_vs_best CSVs, gan_vs_best.png and summary.json; log to MLflow.

    Judged: bal_acc (over the classes with at least ``evaluate.min_test_count`` test images) and the
    recall of each of ``cfg.verdict_classes``; a binary task (``data.positive``) also auc and
    sens_at_spec, and writes roc.png and roc.csv (arm, fpr, tpr). Every verdict carries its mdd at
    ``evaluate.power``. With ``history_dir`` (the train stage's per-epoch histories), the non-GAN
    arm every GAN arm is judged against is the one with the best mean real **validation** balanced
    accuracy, chosen once for all metrics, so the test split chooses nothing. Without it, the comparator is the
    best non-GAN arm per metric on test (the older, test-selected rule; the report says which).
    ``summary_json``: also write the summary there (a DVC metrics file outside the report folder).

    ``external_dir`` (``prepare-external``'s folder) names the external test sets; each is reported beside,
    never instead of, the internal test: the same arms table and GAN-vs-best verdicts (with mdd), from the
    runs' ``external.NAME`` metrics and their predictions ``eval_dir/ARM-sSEED/external/NAME.csv``, each
    metric judged against the comparator the internal test was judged against (so the set chooses
    nothing), in ``summary.json`` ``external.NAME``, ``external/NAME/*.csv`` and a section of the report.
    """
    classes, evaluate, positive = cfg.classes, cfg.evaluate, cfg.data.positive
    arms = {arm: {**cfg.recipe(arm), "extra": cfg.arm(arm).extra} for arm in cfg.arms}
    seeds = list(cfg.train.seeds)
    metrics_by_run = read_metrics(metrics_dir, list(arms), seeds)
    runs = runs_table(metrics_by_run, arms, classes)
    y_true, predictions = read_predictions(predictions_dir, list(arms), seeds, classes)
    check_predictions_match_metrics(runs, y_true, predictions, classes)
    binary = (binary_scores(metrics_by_run, predictions_dir, y_true, classes, positive, score_column(positive))
              if positive is not None else None)
    task = {"positive": positive, "target_specificity": evaluate.specificity} if binary is not None else None
    counts = class_counts(y_true, classes, evaluate.min_test_count)
    per_arm = arms_table(runs, classes)
    # GAN-derived arms are judged against the best real-only arm: GAN images (extra) or frozen GAN
    # discriminators as class-expert features (experts)
    gan_arms = [arm for arm, settings in arms.items() if is_gan_arm(settings) or cfg.arm(arm).experts is not None]
    rule, judged = TEST_RULE, predictions
    if history_dir is not None and gan_arms:
        chosen, rule = validation_comparator(validation_scores(history_dir, [a for a in arms if a not in gan_arms],
                                                               seeds))
        judged = {arm: p for arm, p in predictions.items() if arm == chosen or arm in gan_arms}
    verdicts = gan_vs_best(y_true, judged, gan_arms, classes, evaluate.bootstrap_samples, evaluate.ci_level,
                           evaluate.seed, verdict_classes=cfg.verdict_classes, binary=binary,
                           min_test_count=evaluate.min_test_count, power=evaluate.power)
    markdown = comparison_markdown(per_arm, verdicts, classes, seeds, len(y_true), evaluate.bootstrap_samples,
                                   evaluate.ci_level, rule, judged is not predictions, evaluate.power, counts, task)
    document = summary(per_arm, verdicts, counts, task)
    scoring = {"classes": classes, "positive": positive, "specificity": evaluate.specificity,
               "n_boot": evaluate.bootstrap_samples, "level": evaluate.ci_level, "seed": evaluate.seed,
               "min_test_count": evaluate.min_test_count, "power": evaluate.power}
    external = {name: score_external_set(name, eval_dir, metrics_by_run, arms, seeds, gan_arms, verdicts, rule,
                                         **scoring)
                for name in external_set_names(external_dir, evaluate.external, classes)}
    if external:
        markdown += "\n" + "\n".join(result["markdown"] for result in external.values())
        document["external"] = {name: result["summary"] for name, result in external.items()}
    summary_file = atomic_file(Path(summary_json)) if summary_json else nullcontext()
    with atomic_dir(Path(out_dir)) as tmp, summary_file as tmp_sum:
        if tmp_sum is not None:
            tmp_sum.write_text(json.dumps(document, indent=2, allow_nan=False))
        (tmp / "comparison.md").write_text(markdown)
        per_arm.to_csv(tmp / "arms.csv", index=False)
        runs.to_csv(tmp / "runs.csv", index=False)
        verdicts.to_csv(tmp / "gan_vs_best.csv", index=False)
        (tmp / "summary.json").write_text(json.dumps(document, indent=2, allow_nan=False))
        save(comparison_figure(runs, per_arm, classes), tmp / "comparison.png")
        save(gan_vs_best_figure(verdicts, evaluate.ci_level), tmp / "gan_vs_best.png")
        write_external_tables(tmp, external)
        if binary is not None:
            roc = arm_roc_table(y_true, binary, list(arms))
            roc.to_csv(tmp / "roc.csv", index=False, float_format="%.4f")
            aucs = {a: document["arms"][a].get("auc_mean") for a in arms}
            save(roc_figure(roc, aucs, f"Test ROC of {positive} per arm (mean over seeds)", group="arm"),
                 tmp / "roc.png")
        _log_to_mlflow(cfg, tmp, per_arm, verdicts, document, seeds)
    return markdown


def _log_to_mlflow(cfg: Config, folder: Path, per_arm: pd.DataFrame, verdicts: pd.DataFrame,
                   document: dict, seeds: list[int]) -> None:
    """One run named ``compare``: the output folder, the arms and verdict tables, flat metrics."""
    configure(cfg.mlflow.experiment)
    with mlflow.start_run(run_name="compare"):
        mlflow.set_tags(standard_tags("compare", dvc_stage="compare"))
        mlflow.log_params({"seeds": ",".join(map(str, seeds)), "arms": ",".join(per_arm["arm"]),
                           "bootstrap_samples": cfg.evaluate.bootstrap_samples, "ci_level": cfg.evaluate.ci_level})
        mlflow.log_metrics(mlflow_metrics(document))
        for name, entry in document.get("external", {}).items():
            mlflow.log_metrics(external_mlflow_metrics(name, entry))
        mlflow.log_artifacts(str(folder), "comparison")
        mlflow.log_table(per_arm, "arms.json")
        if not verdicts.empty:
            mlflow.log_table(verdicts, "gan_vs_best.json")


def run_compare_runs(cfg: Config, baseline_dir: Path, candidate_dir: Path, arm: str, out_json: Path | None = None,
                     baseline_arm: str | None = None) -> dict:
    """Paired bootstrap of one arm's test predictions against an earlier run of it (or another arm).

    For a change that re-trains an arm in place (e.g. tuned GAN settings applied to ``effnet_stgan``):
    keep the earlier ``reports/predictions/<arm>-s<seed>.csv`` files in ``baseline_dir``, re-run the
    pipeline, and compare ``candidate_dir`` against them on the same test images, pairing seeds. The
    same statistic as the compare stage (seed-averaged metric, percentile CI, verdict).
    """
    seeds, classes, evaluate, positive = list(cfg.train.seeds), cfg.classes, cfg.evaluate, cfg.data.positive
    baseline_arm = baseline_arm or arm
    y_base, base = read_predictions(Path(baseline_dir), [baseline_arm], seeds, classes)
    y_cand, cand = read_predictions(Path(candidate_dir), [arm], seeds, classes)
    first = [read_prediction_file(Path(d) / f"{LAYOUT.run_name(a, seeds[0])}.csv", "dvc repro")["image_id"]
             for d, a in ((baseline_dir, baseline_arm), (candidate_dir, arm))]
    if not (np.array_equal(y_base, y_cand) and first[0].equals(first[1])):
        raise DermaganError(f"{candidate_dir} and {baseline_dir} hold different test images or classes; "
                            "a paired comparison needs the same test split")
    labels = (f"{baseline_arm} (baseline: {baseline_dir})", f"{arm} ({candidate_dir})")
    binary = None  # a binary task: auc from the score columns (no metrics files here, so no sens_at_spec)
    if positive is not None:
        column = score_column(positive)
        binary = BinaryScores(classes.index(positive),
                              {labels[0]: read_scores(Path(baseline_dir), [baseline_arm], seeds, column)[baseline_arm],
                               labels[1]: read_scores(Path(candidate_dir), [arm], seeds, column)[arm]})
    verdicts = gan_vs_best(y_cand, {labels[0]: base[baseline_arm], labels[1]: cand[arm]}, [labels[1]], classes,
                           evaluate.bootstrap_samples, evaluate.ci_level, evaluate.seed,
                           verdict_classes=cfg.verdict_classes, binary=binary,
                           min_test_count=evaluate.min_test_count, power=evaluate.power)
    document = paired_runs_document(verdicts, arm, baseline_arm, baseline_dir, candidate_dir, seeds, len(y_cand),
                                    evaluate.ci_level, evaluate.bootstrap_samples)
    if out_json is not None:
        with atomic_file(Path(out_json)) as tmp:
            tmp.write_text(json.dumps(json_safe(document), indent=2))
    return document
