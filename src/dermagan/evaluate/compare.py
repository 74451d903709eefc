"""Compare classifier arms over several training seeds, and GAN arms against the best non-GAN arm.

Readers of the evaluate and train stages' per-run files (metrics, test predictions, training
histories), then pure functions: tables from the metrics documents, a paired bootstrap over test
images (one resample matrix shared by every run), markdown, figures and a JSON-safe summary.

The task's classes and the classes whose recall is judged come from the caller (params
``data.classes``, ``evaluate.verdict_classes``). Balanced accuracy leaves out classes with fewer than
``min_test_count`` test images (:func:`dermagan.evaluate.metrics.bma_included`). A binary task
(:class:`BinaryScores`) is also judged on ROC AUC and on sensitivity at the threshold each run set
on val (``sens_at_spec``). Every verdict carries ``mdd``, the minimum difference it could detect.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from sklearn.metrics import roc_curve

from dermagan.config.layout import LAYOUT
from dermagan.errors import DermaganError
from dermagan.evaluate.metrics import (
    bma_excluded,
    bma_excluded_reason,
    bma_included,
    bootstrap_indices,
    mean_recall,
    minimum_detectable_difference,
    resampled_auc,
    roc_auc,
    thresholded,
)
from dermagan.evaluate.plots import roc_table
from dermagan.serialize import json_safe

SETTINGS: tuple[str, ...] = ("backbone", "augment", "class_weight_power", "sampler", "extra")
BINARY_METRICS: tuple[str, ...] = ("auc", "sens_at_spec")  # binary tasks only: need scores (and thresholds)
VERDICT_COLUMNS: tuple[str, ...] = ("gan_arm", "metric", "best_non_gan_arm", "gan_value", "best_value",
                                    "diff", "ci_low", "ci_high", "verdict", "mdd", "n_resamples")
BETTER, WORSE, NO_DIFFERENCE = "better", "worse", "no difference shown"
GAN_COLOUR, REAL_COLOUR = "C3", "C0"
VERDICT_COLOURS = {BETTER: "C2", WORSE: "C3", NO_DIFFERENCE: "C7"}


# --- arms and runs ---------------------------------------------------------------------------

PREDICTION_COLUMNS = ("image_id", "actual", "predicted")
TEST_RULE = "the best non-GAN arm per metric on the test split (no training histories given)"


# --- the per-run files -----------------------------------------------------------------------

def read_metrics(metrics_dir: Path, arms: list[str], seeds: list[int]) -> dict[tuple[str, int], dict]:
    """The evaluate stage's metrics file of every (arm, seed) run, with an error naming a missing one."""
    found = {}
    for arm in arms:
        for seed in seeds:
            path = Path(metrics_dir) / f"{LAYOUT.run_name(arm, seed)}.json"
            if not path.is_file():
                raise DermaganError(f"{path}: metrics of run '{LAYOUT.run_name(arm, seed)}' not found; "
                                    f"run `dvc repro evaluate@{arm}-{seed}`")
            found[(arm, seed)] = json.loads(path.read_text())
    return found


def read_predictions(predictions_dir: Path, arms: list[str], seeds: list[int], classes: tuple[str, ...] | None = None
                     ) -> tuple[np.ndarray, dict[str, dict[int, np.ndarray]]]:
    """True class indices of the test images and every run's predicted indices (arm -> seed -> array).

    ``classes``: the task's ordered labels (params ``data.classes``; the stages pass them); None: the
    sorted class names found in the files. Every run must list the same test images in the same
    order with the same true classes.
    """
    frames = {(arm, seed): _run_predictions(predictions_dir, arm, seed) for arm in arms for seed in seeds}
    reference = next(iter(frames.values()))
    if classes is None:
        classes = tuple(sorted(set().union(*(set(f["actual"]) | set(f["predicted"]) for f in frames.values()))))
    predicted: dict[str, dict[int, np.ndarray]] = {arm: {} for arm in arms}
    for (arm, seed), frame in frames.items():
        path = Path(predictions_dir) / f"{LAYOUT.run_name(arm, seed)}.csv"
        if not (frame["image_id"].equals(reference["image_id"]) and frame["actual"].equals(reference["actual"])):
            raise DermaganError(f"{path}: test images (image_id order or actual class) differ from "
                                f"{Path(predictions_dir) / f'{LAYOUT.run_name(arms[0], seeds[0])}.csv'}; "
                                "a paired comparison needs the same test split in every run")
        predicted[arm][seed] = class_indices(frame["predicted"], path, classes)
    return class_indices(reference["actual"], Path(predictions_dir), classes), predicted


def read_scores(predictions_dir: Path, arms: list[str], seeds: list[int], column: str
                ) -> dict[str, dict[int, np.ndarray]]:
    """Every run's score column (a binary task's ``p_<positive>``) per test image: arm -> seed -> array."""
    scores: dict[str, dict[int, np.ndarray]] = {arm: {} for arm in arms}
    for arm in arms:
        for seed in seeds:
            frame = _run_predictions(predictions_dir, arm, seed)
            if column not in frame.columns:
                raise DermaganError(f"{Path(predictions_dir) / f'{LAYOUT.run_name(arm, seed)}.csv'}: no '{column}' "
                                    f"column (the positive class's score of a binary task); re-run "
                                    f"`dvc repro evaluate@{arm}-{seed}` with data.positive set")
            scores[arm][seed] = frame[column].to_numpy(dtype=float)
    return scores


def _run_predictions(predictions_dir: Path, arm: str, seed: int) -> pd.DataFrame:
    return read_prediction_file(Path(predictions_dir) / f"{LAYOUT.run_name(arm, seed)}.csv",
                                f"dvc repro evaluate@{arm}-{seed}")


def read_prediction_file(path: Path, remedy: str) -> pd.DataFrame:
    """One run's test predictions CSV (``image_id``, ``actual``, ``predicted``); ``remedy`` names the fix."""
    if not path.is_file():
        raise DermaganError(f"{path}: test predictions not found; run `{remedy}`")
    frame = pd.read_csv(path, dtype=str)
    missing = [c for c in PREDICTION_COLUMNS if c not in frame.columns]
    if missing:
        raise DermaganError(f"{path}: missing column(s) {missing}; expected {list(PREDICTION_COLUMNS)}")
    return frame.reset_index(drop=True)


def class_indices(names: pd.Series, path: Path, classes: tuple[str, ...]) -> np.ndarray:
    unknown = sorted(set(names) - set(classes))
    if unknown:
        raise DermaganError(f"{path}: unknown class name(s) {unknown}; expected {list(classes)}")
    return names.map({c: i for i, c in enumerate(classes)}).to_numpy(dtype=np.int64)


def check_predictions_match_metrics(runs: pd.DataFrame, y_true: np.ndarray,
                                    predictions: dict[str, dict[int, np.ndarray]],
                                    classes: tuple[str, ...]) -> None:
    """Recall per class from the predictions file must equal the metrics file's (catches stale outputs)."""
    columns = [f"recall_{c}" for c in classes]
    for _, row in runs.iterrows():
        from_predictions = full_set_recalls(y_true, predictions[row["arm"]][row["seed"]], len(classes))
        from_metrics = row[columns].to_numpy(dtype=float)
        if not np.allclose(from_predictions, from_metrics, atol=1e-6, equal_nan=True):
            raise DermaganError(f"run '{row['run']}': recall per class in its predictions file and metrics file "
                                f"disagree; rerun `dvc repro evaluate@{row['arm']}-{row['seed']}`")


def validation_scores(history_dir: Path, arms: list[str], seeds: list[int]) -> dict[str, float]:
    """Each arm's real-val balanced accuracy at its selected epoch (the history's best), mean over seeds."""
    scores = {}
    for arm in arms:
        values = []
        for seed in seeds:
            path = Path(history_dir) / f"{LAYOUT.run_name(arm, seed)}.csv"
            if not path.is_file():
                raise DermaganError(f"{path}: training history of run '{LAYOUT.run_name(arm, seed)}' not found; "
                                    f"run `dvc repro train@{arm}-{seed}`")
            history = pd.read_csv(path)
            if "val_bal_acc" not in history.columns or history.empty:
                raise DermaganError(f"{path}: no 'val_bal_acc' column/rows; is this a training history?")
            values.append(float(history["val_bal_acc"].max()))
        scores[arm] = float(np.mean(values))
    return scores


def validation_comparator(val: dict[str, float]) -> tuple[str, str]:
    """The non-GAN arm with the best mean real-validation balanced accuracy, and the rule sentence."""
    chosen = max(val, key=lambda arm: val[arm])
    ranking = ", ".join(f"{a} {v:.3f}" for a, v in sorted(val.items(), key=lambda kv: -kv[1]))
    return chosen, (f"`{chosen}`, the non-GAN arm with the best mean real-validation balanced accuracy "
                    f"({ranking}); chosen on validation, not on test, for every metric")


@dataclass(frozen=True)
class BinaryScores:
    """What a binary task's verdicts need beyond predicted classes.

    ``positive``: index of the positive class; ``scores``: arm -> seed -> P(positive) per test image;
    ``thresholds``: arm -> seed -> the threshold that run chose on val (None: no ``sens_at_spec``).
    """

    positive: int
    scores: dict[str, dict[int, np.ndarray]]
    thresholds: dict[str, dict[int, float]] | None = None


def binary_scores(metrics_by_run: dict[tuple[str, int], dict], predictions_dir: Path, y_true: np.ndarray,
                  classes: tuple[str, ...], positive: str, column: str) -> BinaryScores:
    """Scores (predictions CSV ``column``) and val thresholds (metrics ``test.binary.threshold``) of every
    run; each run's test AUC from its scores must equal its metrics file's (catches stale outputs)."""
    arms = list(dict.fromkeys(arm for arm, _ in metrics_by_run))
    seeds = list(dict.fromkeys(seed for _, seed in metrics_by_run))
    scores = read_scores(predictions_dir, arms, seeds, column)
    k = classes.index(positive)
    thresholds: dict[str, dict[int, float]] = {arm: {} for arm in arms}
    for (arm, seed), document in metrics_by_run.items():
        block = document["test"].get("binary")
        run = LAYOUT.run_name(arm, seed)
        if not block or block.get("threshold") is None:
            raise DermaganError(f"run '{run}': its metrics file has no test.binary block; re-run "
                                f"`dvc repro evaluate@{arm}-{seed}` with data.positive = {positive}")
        if block.get("positive") != positive:
            raise DermaganError(f"run '{run}': evaluated with positive class {block.get('positive')!r}, params say "
                                f"data.positive = {positive!r}; re-run `dvc repro evaluate@{arm}-{seed}`")
        auc, recorded = roc_auc(y_true == k, scores[arm][seed]), block.get("auc")
        if recorded is not None and not math.isclose(auc, recorded, abs_tol=1e-6):
            raise DermaganError(f"run '{run}': test AUC from its predictions file ({auc:.6f}) and metrics file "
                                f"({recorded:.6f}) disagree; rerun `dvc repro evaluate@{arm}-{seed}`")
        thresholds[arm][seed] = float(block["threshold"])
    return BinaryScores(k, scores, thresholds)


def is_gan_arm(settings: dict) -> bool:
    """An arm trains on GAN images iff its ``extra`` is ``"<method>/<set>"`` (e.g. ``dcgan/dedup``)."""
    extra = settings.get("extra")
    return isinstance(extra, str) and "/" in extra


def recall_metrics(classes: tuple[str, ...]) -> list[str]:
    """``recall_<class>`` column names, in class order."""
    return [f"recall_{c}" for c in classes]


def verdict_metrics(verdict_classes: tuple[str, ...], binary: bool = False) -> tuple[str, ...]:
    """The metrics compare judges: ``bal_acc``, then (binary tasks) ``auc`` and ``sens_at_spec``, then
    the recall of each verdict class (params ``evaluate.verdict_classes``)."""
    return ("bal_acc", *(BINARY_METRICS if binary else ()), *recall_metrics(verdict_classes))


# runs-table column <- the metrics file's test.binary key (binary tasks)
BINARY_RUN_COLUMNS = {"auc": "auc", "auc_ci_low": "auc_ci_low", "auc_ci_high": "auc_ci_high",
                      "sens_at_spec": "sensitivity", "sens_at_spec_ci_low": "sensitivity_ci_low",
                      "sens_at_spec_ci_high": "sensitivity_ci_high", "spec_at_threshold": "specificity",
                      "threshold": "threshold"}


def runs_table(metrics_by_run: dict[tuple[str, int], dict], arms: dict[str, dict],
               classes: tuple[str, ...]) -> pd.DataFrame:
    """One row per (arm, seed) run: settings, test bal_acc with CI, macro metrics, recall per class with CI."""
    rows = []
    for (arm, seed), document in metrics_by_run.items():
        test = document["test"]
        row = {"run": LAYOUT.run_name(arm, seed), "arm": arm, "seed": int(seed),
               **{key: arms[arm].get(key) for key in SETTINGS}, "gan": is_gan_arm(arms[arm]),
               "bal_acc": test["bal_acc"], "bal_acc_ci_low": test.get("bal_acc_ci_low"),
               "bal_acc_ci_high": test.get("bal_acc_ci_high"), "macro_f1": test.get("macro_f1"),
               "macro_auc": test.get("macro_auc"), "accuracy": test.get("accuracy")}
        for name in classes:
            values = test["per_class"][name]
            row[f"recall_{name}"] = values["recall"]
            row[f"recall_{name}_ci_low"] = values.get("recall_ci_low")
            row[f"recall_{name}_ci_high"] = values.get("recall_ci_high")
        if test.get("binary"):
            row.update({column: test["binary"].get(key) for column, key in BINARY_RUN_COLUMNS.items()})
        rows.append(row)
    table = pd.DataFrame(rows)
    numeric = [c for c in table.columns if c.startswith(("bal_acc", "macro_", "accuracy", "recall_"))
               or c in BINARY_RUN_COLUMNS]
    table[numeric] = table[numeric].astype(float)
    return table


def arms_table(runs: pd.DataFrame, classes: tuple[str, ...]) -> pd.DataFrame:
    """One row per arm over its seeds: n_seeds and mean/std (ddof=1)/min/max of bal_acc, macro F1, (binary
    tasks) auc and sens_at_spec, and the recalls.

    Sorted by mean balanced accuracy, best first. ``std`` is NaN for an arm with one seed.
    """
    metrics = ["bal_acc", "macro_f1", *[m for m in BINARY_METRICS if m in runs.columns], *recall_metrics(classes)]
    grouped = runs.groupby("arm", sort=False)
    stats = grouped[metrics].agg(["mean", "std", "min", "max"])
    stats.columns = [f"{metric}_{stat}" for metric, stat in stats.columns]
    settings = grouped[[*SETTINGS, "gan"]].first()
    table = pd.concat([settings, grouped.size().rename("n_seeds"), stats], axis=1).reset_index()
    return table.sort_values("bal_acc_mean", ascending=False, ignore_index=True, kind="stable")


# --- paired bootstrap ------------------------------------------------------------------------

def bootstrap_recalls(y_true: np.ndarray, y_pred: np.ndarray, idx: np.ndarray, n_classes: int) -> np.ndarray:
    """Recall of every class on every resample ``idx`` (B, N): array (B, C), NaN where a class is absent.

    Vectorised: recall = bincount of (resample, true class) weighted by correctness / its plain bincount.
    """
    n_boot = idx.shape[0]
    cells = (np.arange(n_boot)[:, None] * n_classes + y_true[idx]).ravel()
    support = np.bincount(cells, minlength=n_boot * n_classes)
    hits = np.bincount(cells, weights=(y_true == y_pred)[idx].ravel(), minlength=n_boot * n_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(support > 0, hits / np.maximum(support, 1), np.nan)
    return recall.reshape(n_boot, n_classes)


def full_set_recalls(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Recall of every class on the whole test set: array (C,)."""
    return bootstrap_recalls(y_true, y_pred, np.arange(len(y_true))[None, :], n_classes)[0]


def metric_values(recalls: np.ndarray, classes: tuple[str, ...], metrics: tuple[str, ...],
                  included: np.ndarray | None = None) -> np.ndarray:
    """Each metric from per-class recalls (..., C) -> (..., M).

    ``bal_acc`` is the mean recall over the classes present and ``included`` (None: all;
    :func:`dermagan.evaluate.metrics.bma_included` leaves out classes with too few test images);
    ``recall_<c>`` is that class's recall.
    """
    columns = []
    for metric in metrics:
        if metric == "bal_acc":
            columns.append(mean_recall(recalls, included))
        else:
            columns.append(recalls[..., classes.index(metric.removeprefix("recall_"))])
    return np.stack(columns, axis=-1)


def run_metric_values(y_true: np.ndarray, y_pred: np.ndarray, idx: np.ndarray, classes: tuple[str, ...],
                      metrics: tuple[str, ...], included: np.ndarray | None = None, score: np.ndarray | None = None,
                      threshold: float | None = None, positive: int | None = None) -> np.ndarray:
    """One run's metrics on every resample ``idx`` (B, N): array (B, M).

    ``auc`` needs ``score`` (P(positive) per test image) and ``positive`` (the class index);
    ``sens_at_spec`` also the run's val ``threshold`` (``score >= threshold`` is called positive).
    """
    values = np.full((idx.shape[0], len(metrics)), np.nan)
    plain = [m for m in metrics if m not in BINARY_METRICS]
    if plain:
        recalls = bootstrap_recalls(y_true, y_pred, idx, len(classes))
        values[:, [metrics.index(m) for m in plain]] = metric_values(recalls, classes, tuple(plain), included)
    if "auc" in metrics:
        values[:, metrics.index("auc")] = resampled_auc(y_true == positive, score, idx)
    if "sens_at_spec" in metrics:
        truth, called = thresholded(y_true == positive, score, threshold)
        values[:, metrics.index("sens_at_spec")] = bootstrap_recalls(truth, called, idx, 2)[:, 1]
    return values


def arm_metrics(y_true: np.ndarray, predictions: dict[int, np.ndarray], idx: np.ndarray,
                classes: tuple[str, ...], metrics: tuple[str, ...], included: np.ndarray | None = None,
                binary: BinaryScores | None = None, arm: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One arm's metrics averaged over its seeds: full test set (M,) and on each resample (B, M).

    ``binary`` (with the arm's name ``arm``): the scores and thresholds behind ``auc``/``sens_at_spec``.
    """
    full = np.arange(len(y_true))[None, :]
    point, resampled = [], []
    for seed, pred in predictions.items():
        extra = {} if binary is None else {
            "score": binary.scores[arm][seed], "positive": binary.positive,
            "threshold": binary.thresholds[arm][seed] if binary.thresholds is not None else None}
        point.append(run_metric_values(y_true, pred, full, classes, metrics, included, **extra)[0])
        resampled.append(run_metric_values(y_true, pred, idx, classes, metrics, included, **extra))
    return np.mean(point, axis=0), np.mean(resampled, axis=0)


def verdict(ci_low: float, ci_high: float) -> str:
    """``better`` if the whole CI is above 0, ``worse`` if below, else ``no difference shown``."""
    if ci_low > 0:
        return BETTER
    if ci_high < 0:
        return WORSE
    return NO_DIFFERENCE


def gan_vs_best(y_true: np.ndarray, predictions: dict[str, dict[int, np.ndarray]], gan_arms: list[str],
                classes: tuple[str, ...], n_boot: int, level: float, seed: int,
                metrics: tuple[str, ...] | None = None, *, verdict_classes: tuple[str, ...] | None = None,
                binary: BinaryScores | None = None, min_test_count: int = 0, power: float = 0.8) -> pd.DataFrame:
    """Paired bootstrap of (GAN arm − best non-GAN arm) for every GAN arm and metric.

    ``predictions`` maps arm -> seed -> predicted class index per test image (same images, same order).
    ``metrics``: None = :func:`verdict_metrics` of ``verdict_classes`` (None: every class), with
    ``auc`` and ``sens_at_spec`` when ``binary`` is given (``sens_at_spec`` only with its thresholds).
    ``bal_acc`` leaves out classes with fewer than ``min_test_count`` test images.
    For each metric the best non-GAN arm is the one with the highest seed-averaged value on the full
    test set. Both arms are averaged over their seeds on the same resamples of test images; the CI is
    the percentile interval of the difference (resamples where it is undefined are dropped), and
    ``mdd`` the minimum difference detectable at ``power`` (two-sided alpha = 1 - ``level``) from the
    bootstrap SD of the difference (:func:`dermagan.evaluate.metrics.minimum_detectable_difference`).
    Empty (with the columns) when there is no GAN arm or no non-GAN arm.
    """
    if metrics is None:
        metrics = verdict_metrics(tuple(verdict_classes if verdict_classes is not None else classes),
                                  binary is not None)
        if binary is not None and binary.thresholds is None:
            metrics = tuple(m for m in metrics if m != "sens_at_spec")
    real_arms = [arm for arm in predictions if arm not in gan_arms]
    gan_arms = [arm for arm in predictions if arm in gan_arms]
    if not real_arms or not gan_arms:
        return pd.DataFrame(columns=list(VERDICT_COLUMNS))
    idx = bootstrap_indices(len(y_true), n_boot, seed)
    included = bma_included(np.bincount(y_true, minlength=len(classes)), min_test_count)
    scored = {arm: arm_metrics(y_true, predictions[arm], idx, classes, metrics, included, binary, arm)
              for arm in predictions}
    tail = (1 - level) / 2 * 100
    real_points = np.array([scored[arm][0] for arm in real_arms])  # (arms, M)
    best_per_metric = np.where(np.isnan(real_points), -np.inf, real_points).argmax(axis=0)
    rows = []
    for arm in gan_arms:
        for m, metric in enumerate(metrics):
            best = real_arms[int(best_per_metric[m])]
            diffs = scored[arm][1][:, m] - scored[best][1][:, m]
            valid = diffs[~np.isnan(diffs)]
            low, high = np.percentile(valid, [tail, 100 - tail]) if valid.size else (np.nan, np.nan)
            sd = float(np.std(valid, ddof=1)) if valid.size > 1 else float("nan")
            rows.append({"gan_arm": arm, "metric": metric, "best_non_gan_arm": best,
                         "gan_value": scored[arm][0][m], "best_value": scored[best][0][m],
                         "diff": scored[arm][0][m] - scored[best][0][m], "ci_low": float(low),
                         "ci_high": float(high), "verdict": verdict(low, high),
                         "mdd": minimum_detectable_difference(sd, level, power), "n_resamples": int(valid.size)})
    return pd.DataFrame(rows, columns=list(VERDICT_COLUMNS))


def class_counts(y_true: np.ndarray, classes: tuple[str, ...], min_test_count: int) -> dict:
    """The summary's ``test_counts`` ({class: test images}), ``bma_excluded`` ({class: count}) and
    ``bma_excluded_reason`` (one line, or None)."""
    support = np.bincount(y_true, minlength=len(classes))
    return {"test_counts": {c: int(n) for c, n in zip(classes, support)},
            "bma_excluded": bma_excluded(support, classes, min_test_count),
            "bma_excluded_reason": bma_excluded_reason(support, classes, min_test_count)}


# --- ROC (binary tasks) ----------------------------------------------------------------------

def arm_roc_table(y_true: np.ndarray, binary: BinaryScores, arms: list[str], grid_size: int = 101) -> pd.DataFrame:
    """Each arm's test ROC curve of the positive class, vertically averaged over its seeds on one FPR grid:
    long format, columns ``arm``, ``fpr``, ``tpr`` (a DVC plot)."""
    positives = y_true == binary.positive
    frames = []
    if not 0 < positives.sum() < len(y_true):
        return pd.DataFrame(columns=["arm", "fpr", "tpr"])
    for arm in arms:
        curves = []
        for seed, score in binary.scores[arm].items():
            fpr, tpr, _ = roc_curve(positives, score)
            curves.append(pd.DataFrame({"seed": seed, "fpr": fpr, "tpr": tpr}))
        table = roc_table(pd.concat(curves, ignore_index=True), grid_size, group="seed")
        mean = table.groupby("fpr", sort=True)["tpr"].mean().reset_index()
        frames.append(mean.assign(arm=arm)[["arm", "fpr", "tpr"]])
    return pd.concat(frames, ignore_index=True)


# --- markdown --------------------------------------------------------------------------------

def markdown_report(arms: pd.DataFrame, verdicts: pd.DataFrame, classes: tuple[str, ...], seeds: list[int],
                    n_test: int, n_boot: int, level: float, power: float | None = None, counts: dict | None = None,
                    binary: dict | None = None) -> str:
    """The whole comparison.md: scope line, arms table, GAN-vs-best table and one sentence per GAN arm.

    ``counts``: :func:`class_counts` (test images per class, what balanced accuracy leaves out);
    ``binary``: ``{"positive": name, "target_specificity": value}`` of a binary task.
    """
    intro = (f"Every number is on the real-only, lesion-disjoint test split ({n_test} images); "
             f"seeds {', '.join(map(str, seeds))} (one training run per arm and seed); CIs are "
             f"{level:.0%} percentile bootstrap intervals over {n_boot} resamples of test images.\n\n")
    if counts is not None:
        intro += ("Test images per class: " + ", ".join(f"{c} {n}" for c, n in counts["test_counts"].items())
                  + ". " + (f"Balanced accuracy (bal_acc): {counts['bma_excluded_reason']}."
                            if counts.get("bma_excluded_reason") else "Balanced accuracy averages every class.")
                  + "\n\n")
    if binary is not None:
        intro += (f"Binary task, positive class `{binary['positive']}`: auc = test ROC AUC of P({binary['positive']}); "
                  f"sens_at_spec = test sensitivity at the threshold each run chose on val (the lowest with val "
                  f"specificity ≥ {binary['target_specificity']:g}). ROC curves per arm (mean over seeds): "
                  "roc.png, roc.csv.\n\n")
    return ("# Classifier arms on the real-only test split\n\n" + intro
            + "## Arms: mean ± std over seeds (min–max)\n\n" + arms_markdown(arms, classes) + "\n"
            + "## GAN arms vs the best non-GAN arm\n\n" + verdict_markdown(verdicts, arms, level, power))


def comparison_markdown(arms: pd.DataFrame, verdicts: pd.DataFrame, classes: tuple[str, ...], seeds: list[int],
                        n_test: int, n_boot: int, level: float, rule: str, on_validation: bool,
                        power: float | None = None, counts: dict | None = None, binary: dict | None = None) -> str:
    """:func:`markdown_report` naming the comparator ``rule``; ``on_validation``: it was picked on validation."""
    markdown = markdown_report(arms, verdicts, classes, seeds, n_test, n_boot, level, power, counts, binary)
    markdown = markdown.replace("## GAN arms vs the best non-GAN arm\n\n",
                                f"## GAN arms vs the best non-GAN arm\n\nComparator: {rule}.\n\n", 1)
    if on_validation:
        markdown = markdown.replace("The best non-GAN arm is picked on this same test set",
                                    "The comparator was picked on validation, not on this test set")
    return markdown


def arms_markdown(arms: pd.DataFrame, classes: tuple[str, ...]) -> str:
    """Arms table: balanced accuracy, (binary tasks) AUC and sensitivity at the val threshold, and recall of
    each class as mean ± std (min–max) over seeds."""
    binary = [m for m in BINARY_METRICS if f"{m}_mean" in arms.columns]
    header = ["arm", "backbone", "aug", "cw power", "sampler", "extra", "seeds", "bal_acc", *binary,
              *[f"recall {c}" for c in classes]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, r in arms.iterrows():
        cells = [r["arm"] + (" (GAN)" if r["gan"] else ""), str(r["backbone"]), _yes(r["augment"]),
                 _fmt(r["class_weight_power"], 2), str(r["sampler"]), _extra(r["extra"]), str(r["n_seeds"]), spread(r, "bal_acc", 3),
                 *[spread(r, m, 3) for m in binary], *[spread(r, f"recall_{c}", 2) for c in classes]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def spread(row: pd.Series, metric: str, digits: int) -> str:
    """``0.712 ± 0.010 (0.700–0.720)``; just the value when there is one seed."""
    mean = _fmt(row[f"{metric}_mean"], digits)
    if row["n_seeds"] < 2:
        return mean
    return (f"{mean} ± {_fmt(row[f'{metric}_std'], digits)} "
            f"({_fmt(row[f'{metric}_min'], digits)}–{_fmt(row[f'{metric}_max'], digits)})")


def verdict_markdown(verdicts: pd.DataFrame, arms: pd.DataFrame, level: float, power: float | None = None) -> str:
    """The GAN-vs-best section: method, table, one plain sentence per GAN arm, caveats. With ``power``, the
    table and sentences give each verdict's minimum detectable difference (``mdd``)."""
    if verdicts.empty:
        missing = "GAN arms" if not arms["gan"].any() else "non-GAN arms"
        return (f"No comparison: there are no {missing} among the arms "
                "(a GAN arm has `extra: <method>/<set>`, e.g. `dcgan/dedup`).\n")
    method = (f"diff = GAN arm − best non-GAN arm for that metric, each averaged over its seeds; the "
              f"{level:.0%} CI comes from the same bootstrap resamples of test images applied to every "
              "run (paired). \"better\"/\"worse\" only when the whole CI is above/below 0.\n\n")
    with_mdd = power is not None and "mdd" in verdicts.columns
    if with_mdd:
        method = method[:-2] + (f" MDD: the minimum difference detectable with {power:.0%} power at two-sided "
                                f"alpha = {1 - level:.0%} in this paired design, (z(1 - alpha/2) + z(power)) × the "
                                "bootstrap SD of the difference; \"no difference shown\" reads \"no difference of "
                                "MDD or more\".\n\n")
    header = ["GAN arm", "metric", "best non-GAN arm", "GAN arm value", "best non-GAN value",
              f"diff [{level:.0%} CI]", "verdict", *([f"MDD ({power:.0%} power)"] if with_mdd else [])]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, r in verdicts.iterrows():
        lines.append("| " + " | ".join([
            r["gan_arm"], r["metric"], r["best_non_gan_arm"], _fmt(r["gan_value"]), _fmt(r["best_value"]),
            f"{_signed(r['diff'])} [{_signed(r['ci_low'])}, {_signed(r['ci_high'])}]", r["verdict"],
            *([_fmt(r["mdd"])] if with_mdd else [])]) + " |")
    sentences = [verdict_sentence(arm, group, level, power if with_mdd else None)
                 for arm, group in verdicts.groupby("gan_arm", sort=False)]
    caveats = ("\nThe CI covers resampling of test images with each arm's seed average held fixed; "
               "seed-to-seed spread is in the arms table above. The best non-GAN arm is picked on this same "
               f"test set, and {len(verdicts)} differences are tested without a multiple-comparison correction.\n")
    return method + "\n".join(lines) + "\n\n" + "\n".join(sentences) + "\n" + caveats


def verdict_sentence(arm: str, rows: pd.DataFrame, level: float, power: float | None = None) -> str:
    """``- effnet_dcgan beats the best non-GAN arm beyond the 95% CI on: none. ...``; with ``power``, each
    "no difference shown" metric says ``(no difference of <mdd> or more, at 80% power)``."""
    def listed(kind: str) -> str:
        chosen = rows[rows["verdict"] == kind]
        if power is not None and kind == NO_DIFFERENCE:
            names = [f"{r['metric']} (no difference of {_fmt(r['mdd'])} or more, at {power:.0%} power)"
                     for _, r in chosen.iterrows()]
        else:
            names = chosen["metric"].tolist()
        return ", ".join(names) if names else "none"

    return (f"- {arm} beats the best non-GAN arm beyond the {level:.0%} CI on: {listed(BETTER)}. "
            f"It is worse beyond the CI on: {listed(WORSE)}. No difference shown on: {listed(NO_DIFFERENCE)}.")


# --- summary ---------------------------------------------------------------------------------

def summary(arms: pd.DataFrame, verdicts: pd.DataFrame, counts: dict | None = None,
            binary: dict | None = None) -> dict:
    """The DVC metrics document: per-arm seed statistics and per GAN arm the verdict of every metric (with
    its ``mdd`` when the verdicts carry one); ``counts`` (:func:`class_counts`) adds ``test_counts``,
    ``bma_excluded`` and ``bma_excluded_reason``; ``binary`` adds the ``binary`` block."""
    stat_columns = [c for c in arms.columns if c.endswith(("_mean", "_std", "_min", "_max"))]
    document = {"arms": {r["arm"]: {"n_seeds": int(r["n_seeds"]), **{c: r[c] for c in stat_columns}}
                         for _, r in arms.iterrows()},
                "gan_vs_best": {}}
    for _, r in verdicts.iterrows():
        document["gan_vs_best"].setdefault(r["gan_arm"], {})[r["metric"]] = {
            "best_non_gan_arm": r["best_non_gan_arm"], "diff": r["diff"], "ci_low": r["ci_low"],
            "ci_high": r["ci_high"], "verdict": r["verdict"], **({"mdd": r["mdd"]} if "mdd" in r else {})}
    if counts is not None:
        document.update(counts)
    if binary is not None:
        document["binary"] = binary
    return json_safe(document)



def paired_runs_document(verdicts: pd.DataFrame, arm: str, baseline_arm: str, baseline_dir: Path,
                         candidate_dir: Path, seeds: list[int], n_test: int, level: float, n_boot: int) -> dict:
    """``compare-runs``' JSON: :func:`gan_vs_best`'s rows of one candidate against one baseline, renamed."""
    verdicts = verdicts.rename(columns={"gan_arm": "candidate", "best_non_gan_arm": "baseline",
                                        "gan_value": "candidate_value", "best_value": "baseline_value"})
    return {"arm": arm, "baseline_arm": baseline_arm, "baseline_dir": str(baseline_dir),
            "candidate_dir": str(candidate_dir), "seeds": seeds, "n_test": int(n_test),
            "ci_level": float(level), "bootstrap_samples": int(n_boot),
            "metrics": {r["metric"]: {k: r[k] for k in ("candidate_value", "baseline_value", "diff", "ci_low",
                                                         "ci_high", "verdict", "mdd") if k in r}
                        for r in verdicts.to_dict("records")}}


def mlflow_metrics(document: dict) -> dict[str, float]:
    """``compare/<arm>/bal_acc_mean``, ``compare/<gan arm>/vs_best/<metric>/diff`` (and ci_low, ci_high,
    mdd)... (None dropped)."""
    flat = {f"compare/{arm}/{key}": float(value) for arm, stats in document["arms"].items()
            for key, value in stats.items() if value is not None}
    for arm, by_metric in document["gan_vs_best"].items():
        for metric, result in by_metric.items():
            for key in ("diff", "ci_low", "ci_high", "mdd"):
                if result.get(key) is not None:
                    flat[f"compare/{arm}/vs_best/{metric}/{key}"] = float(result[key])
    return flat


# --- figures ---------------------------------------------------------------------------------

def comparison_figure(runs: pd.DataFrame, arms: pd.DataFrame, classes: tuple[str, ...]) -> plt.Figure:
    """Left: each seed's balanced accuracy (dots) and the arm mean ± std. Right: mean recall heatmap."""
    fig, (ax_bal, ax_rec) = plt.subplots(1, 2, figsize=(13, 0.6 * len(arms) + 2.5),
                                         gridspec_kw={"width_ratios": [1, 1.4]})
    _seed_panel(ax_bal, runs, arms)
    _recall_heatmap(fig, ax_rec, arms, classes)
    fig.tight_layout()
    return fig


def _seed_panel(ax: plt.Axes, runs: pd.DataFrame, arms: pd.DataFrame) -> None:
    """Per arm: one dot per seed, a diamond at the mean with a ±std bar; GAN arms in their own colour."""
    for y, (_, arm) in enumerate(arms.iterrows()):
        colour = GAN_COLOUR if arm["gan"] else REAL_COLOUR
        values = runs.loc[runs["arm"] == arm["arm"], "bal_acc"].to_numpy()
        jitter = np.linspace(-0.15, 0.15, len(values)) if len(values) > 1 else np.zeros(1)
        ax.scatter(values, y + jitter, s=18, color=colour, alpha=0.6)
        std = arm["bal_acc_std"] if np.isfinite(arm["bal_acc_std"]) else 0.0
        ax.errorbar(arm["bal_acc_mean"], y, xerr=std, fmt="D", color=colour, markeredgecolor="black", capsize=4)
    ax.set(yticks=range(len(arms)), yticklabels=arms["arm"], xlabel="test balanced accuracy",
           title="Real-only test set: seeds (dots), mean ± std")
    _colour_gan_labels(ax, arms)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    ax.legend(handles=[Line2D([], [], marker="o", ls="", color=REAL_COLOUR, label="non-GAN arm"),
                       Line2D([], [], marker="o", ls="", color=GAN_COLOUR, label="GAN arm")],
              fontsize=8, loc="best")


def _recall_heatmap(fig: plt.Figure, ax: plt.Axes, arms: pd.DataFrame, classes: tuple[str, ...]) -> None:
    """Mean-over-seeds recall of every class per arm, value printed in each cell."""
    recalls = arms[[f"recall_{c}_mean" for c in classes]].to_numpy(dtype=float)
    image = ax.imshow(recalls, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for (i, j), value in np.ndenumerate(recalls):
        ax.text(j, i, _fmt(value, 2), ha="center", va="center", fontsize=8,
                color="black" if value > 0.6 else "white")
    ax.set(xticks=range(len(classes)), xticklabels=classes, yticks=range(len(arms)), yticklabels=arms["arm"],
           title="test recall per class (mean over seeds)")
    _colour_gan_labels(ax, arms)
    fig.colorbar(image, ax=ax, fraction=0.04)


def gan_vs_best_figure(verdicts: pd.DataFrame, level: float) -> plt.Figure:
    """Forest plot: diff (GAN arm − best non-GAN arm) with its CI per (GAN arm, metric); line at 0."""
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(verdicts) + 2))
    if verdicts.empty:
        ax.text(0.5, 0.5, "no GAN arm or no non-GAN arm to compare", ha="center", va="center")
        ax.set_axis_off()
        return fig
    y = np.arange(len(verdicts))
    for i, (_, r) in enumerate(verdicts.iterrows()):
        err = [[max(r["diff"] - r["ci_low"], 0)], [max(r["ci_high"] - r["diff"], 0)]]
        ax.errorbar(r["diff"], i, xerr=err, fmt="o", capsize=3, color=VERDICT_COLOURS[r["verdict"]])
    ax.axvline(0, color="black", lw=0.8)
    labels = [f"{r['gan_arm']}: {r['metric']} (vs {r['best_non_gan_arm']})" for _, r in verdicts.iterrows()]
    ax.set(yticks=y, yticklabels=labels, xlabel=f"GAN arm − best non-GAN arm ({level:.0%} paired bootstrap CI)",
           title="GAN arms vs the best non-GAN arm, real-only test set")
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    ax.legend(handles=[Line2D([], [], marker="o", ls="", color=c, label=v) for v, c in VERDICT_COLOURS.items()],
              fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def _colour_gan_labels(ax: plt.Axes, arms: pd.DataFrame) -> None:
    """GAN arms' tick labels in the GAN colour."""
    for label, gan in zip(ax.get_yticklabels(), arms["gan"], strict=True):
        label.set_color(GAN_COLOUR if gan else "black")


def _yes(value) -> str:
    return "yes" if bool(value) else "no"


def _extra(value) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None or pd.isna(value) else f"{value:.{digits}f}"


def _signed(value, digits: int = 3) -> str:
    return "n/a" if value is None or pd.isna(value) else f"{value:+.{digits}f}"
