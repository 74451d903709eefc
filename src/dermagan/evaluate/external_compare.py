"""Compare on the external test sets: the internal test's arms table and GAN-vs-best verdicts, per set.

Per set, from every run's ``external.NAME`` metrics block and its predictions
``reports/eval/ARM-sSEED/external/NAME.csv``: the same runs and arms tables and the same paired bootstrap
as on the internal test, with each metric's comparator fixed beforehand (the non-GAN arm chosen on
validation, or, without training histories, the one the internal test chose), so an external set
chooses nothing. A class the set lacks has no recall there (NaN) and its verdicts are ``UNDEFINED``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from dermagan.config.layout import LAYOUT
from dermagan.errors import DermaganError
from dermagan.evaluate.compare import (
    VERDICT_COLUMNS,
    BinaryScores,
    arms_markdown,
    class_indices,
    full_set_recalls,
    gan_vs_best,
    mlflow_metrics,
    read_prediction_file,
    runs_table,
    summary,
    verdict_markdown,
)
from dermagan.evaluate.external import EXTERNAL, UNDEFINED, run_predictions_file
from dermagan.evaluate.metrics import roc_auc


# --- compare: the per-run files ------------------------------------------------------------------------------

def external_blocks(metrics_by_run: dict[tuple[str, int], dict], name: str) -> dict[tuple[str, int], dict]:
    """Every run's metrics on set ``name``, shaped like a metrics document (``{"test": block}``), so the
    internal readers (:func:`runs_table`) apply; a run evaluated without the set is an error."""
    found = {}
    for (arm, seed), document in metrics_by_run.items():
        block = (document.get(EXTERNAL) or {}).get(name)
        if block is None:
            raise DermaganError(f"run '{LAYOUT.run_name(arm, seed)}': its metrics file has no {EXTERNAL}.{name} "
                                f"block; re-run `dvc repro evaluate@{arm}-{seed}` (external set {name!r} was "
                                "prepared after it was evaluated)")
        found[(arm, seed)] = {"test": block}
    return found


def external_runs_table(blocks: dict[tuple[str, int], dict], arms: dict[str, dict], classes: tuple[str, ...],
                        y_true: np.ndarray) -> pd.DataFrame:
    """:func:`runs_table` of one set, the recall of a class the set lacks (and its CI) set to NaN."""
    runs = runs_table(blocks, arms, classes)
    support = np.bincount(y_true, minlength=len(classes))
    for k, c in enumerate(classes):
        if support[k] == 0:
            runs[[f"recall_{c}", f"recall_{c}_ci_low", f"recall_{c}_ci_high"]] = np.nan
    return runs


def read_external_predictions(eval_dir: Path, name: str, arms: list[str], seeds: list[int],
                              classes: tuple[str, ...], column: str | None = None
                              ) -> tuple[np.ndarray, dict[str, dict[int, np.ndarray]], dict | None]:
    """True classes of set ``name``, every run's predicted classes (arm -> seed -> array) and, with a score
    ``column`` (a binary task's ``p_<positive>``), every run's scores; every run must list the same images."""
    reference, reference_path = None, None
    predicted: dict[str, dict[int, np.ndarray]] = {arm: {} for arm in arms}
    scores: dict[str, dict[int, np.ndarray]] | None = {arm: {} for arm in arms} if column else None
    for arm in arms:
        for seed in seeds:
            path = run_predictions_file(eval_dir, arm, seed, name)
            frame = read_prediction_file(path, f"dvc repro evaluate@{arm}-{seed}")
            if reference is None:
                reference, reference_path = frame, path
            elif not (frame["image_id"].equals(reference["image_id"]) and frame["actual"].equals(reference["actual"])):
                raise DermaganError(f"{path}: images (image_id order or actual class) differ from {reference_path}; "
                                    f"every run must be evaluated on the same external set {name!r}")
            predicted[arm][seed] = class_indices(frame["predicted"], path, classes)
            if column:
                if column not in frame.columns:
                    raise DermaganError(f"{path}: no '{column}' column (the positive class's score of a binary "
                                        f"task); re-run `dvc repro evaluate@{arm}-{seed}` with data.positive set")
                scores[arm][seed] = frame[column].to_numpy(dtype=float)
    return class_indices(reference["actual"], reference_path, classes), predicted, scores


def check_external_predictions(runs: pd.DataFrame, y_true: np.ndarray, predictions: dict[str, dict[int, np.ndarray]],
                               classes: tuple[str, ...], name: str) -> None:
    """Recall per present class from the predictions files must equal the metrics files' (stale outputs)."""
    present = np.bincount(y_true, minlength=len(classes)) > 0
    columns = [f"recall_{c}" for c, keep in zip(classes, present) if keep]
    for _, row in runs.iterrows():
        from_predictions = full_set_recalls(y_true, predictions[row["arm"]][row["seed"]], len(classes))[present]
        if not np.allclose(from_predictions, row[columns].to_numpy(dtype=float), atol=1e-6, equal_nan=True):
            raise DermaganError(f"run '{row['run']}': recall per class on external set {name!r} in its predictions "
                                f"file and metrics file disagree; rerun `dvc repro evaluate@{row['arm']}-{row['seed']}`")


def external_binary_scores(blocks: dict[tuple[str, int], dict], y_true: np.ndarray, scores: dict,
                           classes: tuple[str, ...], positive: str, name: str) -> BinaryScores:
    """Scores and the val thresholds (each run's ``external.NAME.binary.threshold``, set on val as on test);
    each run's AUC on the set from its scores must equal its metrics file's."""
    k = classes.index(positive)
    thresholds: dict[str, dict[int, float]] = {arm: {} for arm in scores}
    for (arm, seed), document in blocks.items():
        block, run = document["test"].get("binary"), LAYOUT.run_name(arm, seed)
        if not block or block.get("threshold") is None or block.get("positive") != positive:
            raise DermaganError(f"run '{run}': its metrics file has no {EXTERNAL}.{name}.binary block for positive "
                                f"class {positive!r}; re-run `dvc repro evaluate@{arm}-{seed}`")
        auc, recorded = roc_auc(y_true == k, scores[arm][seed]), block.get("auc")
        if recorded is not None and not math.isclose(auc, recorded, abs_tol=1e-6):
            raise DermaganError(f"run '{run}': AUC on external set {name!r} from its predictions file ({auc:.6f}) "
                                f"and metrics file ({recorded:.6f}) disagree; rerun `dvc repro evaluate@{arm}-{seed}`")
        thresholds[arm][seed] = float(block["threshold"])
    return BinaryScores(k, scores, thresholds)


# --- compare: verdicts with comparators fixed beforehand -----------------------------------------------------

def comparators(verdicts: pd.DataFrame) -> dict[str, str]:
    """metric -> the non-GAN arm the internal verdicts judged it against (chosen on val, or on internal test)."""
    return {r["metric"]: r["best_non_gan_arm"] for r in verdicts.to_dict("records")}


def fixed_comparator_verdicts(y_true: np.ndarray, predictions: dict[str, dict[int, np.ndarray]], gan_arms: list[str],
                              chosen: dict[str, str], classes: tuple[str, ...], n_boot: int, level: float,
                              seed: int, *, binary: BinaryScores | None = None, min_test_count: int = 0,
                              power: float = 0.8) -> pd.DataFrame:
    """:func:`gan_vs_best` on one external set, each metric judged against ``chosen[metric]`` (never a
    choice made on this set). Rows in the internal verdicts' order; a metric with no defined resample
    (a class the set lacks) gets the verdict :data:`UNDEFINED`."""
    if not chosen:
        return pd.DataFrame(columns=list(VERDICT_COLUMNS))
    by_reference: dict[str, list[str]] = {}
    for metric, reference in chosen.items():
        by_reference.setdefault(reference, []).append(metric)
    judged_gan = [arm for arm in predictions if arm in gan_arms]
    frames = []
    for reference, metrics in by_reference.items():
        judged = {reference: predictions[reference], **{arm: predictions[arm] for arm in judged_gan}}
        frames.append(gan_vs_best(y_true, judged, judged_gan, classes, n_boot, level, seed, tuple(metrics),
                                  binary=binary, min_test_count=min_test_count, power=power))
    verdicts = pd.concat(frames, ignore_index=True)
    order = {metric: i for i, metric in enumerate(chosen)}
    verdicts = verdicts.assign(_arm=verdicts["gan_arm"].map({a: i for i, a in enumerate(judged_gan)}),
                               _metric=verdicts["metric"].map(order))
    verdicts = verdicts.sort_values(["_arm", "_metric"], kind="stable").drop(columns=["_arm", "_metric"])
    verdicts.loc[verdicts["n_resamples"] == 0, "verdict"] = UNDEFINED
    return verdicts.reset_index(drop=True)


# --- compare: report, summary, MLflow ------------------------------------------------------------------------

def external_markdown(name: str, per_arm: pd.DataFrame, verdicts: pd.DataFrame, classes: tuple[str, ...],
                     counts: dict, n_images: int, level: float, power: float | None, rule: str) -> str:
    """The markdown section of one external set: scope, arms table, GAN-vs-best verdicts."""
    scope = (f"## External test set `{name}` ({n_images} images)\n\n"
             "Scored beside, never instead of, the internal test split: the same models, TTA, temperature and "
             "(binary tasks) val threshold; this set chooses nothing. Images per class: "
             + ", ".join(f"{c} {n}" for c, n in counts["test_counts"].items()) + ". "
             + (f"Balanced accuracy: {counts['bma_excluded_reason']}. " if counts.get("bma_excluded_reason") else "")
             + "A class the set lacks has no recall here (n/a).\n\n")
    arms = ("### Arms: mean ± std over seeds (min–max)\n\n"
            + arms_markdown(per_arm, classes).replace("n/a ± n/a (n/a–n/a)", "n/a") + "\n")
    verdict_text = verdict_markdown(verdicts, per_arm, level, power)
    if not verdicts.empty:
        verdict_text = (f"Comparator (fixed before this set was read): {rule}.\n\n" + verdict_text).replace(
            "The best non-GAN arm is picked on this same test set",
            "The comparator was not picked on this external set").replace(
            "resamples of test images", "resamples of this set's images").replace(
            "resampling of test images", "resampling of this set's images")
        undefined = verdicts.loc[verdicts["verdict"] == UNDEFINED, "metric"].unique().tolist()
        if undefined:
            verdict_text += f"Undefined on this set (a class it lacks): {', '.join(undefined)}.\n"
    return scope + arms + "### GAN arms vs the best non-GAN arm\n\n" + verdict_text


def external_summary(per_arm: pd.DataFrame, verdicts: pd.DataFrame, counts: dict, task: dict | None,
                     n_images: int) -> dict:
    """One set's entry of the compare summary's ``external`` block: :func:`summary`'s fields plus ``n_images``."""
    return {"n_images": int(n_images), **summary(per_arm, verdicts, counts, task)}


def external_mlflow_metrics(name: str, document: dict) -> dict[str, float]:
    """``compare/external/NAME/<arm>/bal_acc_mean``, ``compare/external/NAME/<gan arm>/vs_best/...``."""
    return {f"compare/{EXTERNAL}/{name}/" + key.removeprefix("compare/"): value
            for key, value in mlflow_metrics(document).items()}


def score_external_set(name: str, eval_dir: Path | None, metrics_by_run: dict, arms: dict, seeds: list[int],
                       gan_arms: list[str], internal_verdicts: pd.DataFrame, rule: str, *, classes: tuple[str, ...],
                       positive: str | None, specificity: float, n_boot: int, level: float, seed: int,
                       min_test_count: int, power: float) -> dict:
    """One external set's runs and arms tables, verdicts (comparators fixed by the internal verdicts, so the
    set chooses nothing), summary entry and markdown section."""
    from dermagan.evaluate.compare import arms_table, class_counts
    from dermagan.evaluate.metrics import score_column

    if eval_dir is None:
        raise DermaganError(f"external test set {name!r}: compare needs the evaluate figures folders (--eval-dir, "
                            "holding ARM-sSEED/external/NAME.csv)")
    blocks = external_blocks(metrics_by_run, name)
    column = score_column(positive) if positive is not None else None
    y_true, predictions, scores = read_external_predictions(Path(eval_dir), name, list(arms), seeds, classes, column)
    runs = external_runs_table(blocks, arms, classes, y_true)
    check_external_predictions(runs, y_true, predictions, classes, name)
    binary = external_binary_scores(blocks, y_true, scores, classes, positive, name) if positive is not None else None
    task = {"positive": positive, "target_specificity": specificity} if binary is not None else None
    counts = class_counts(y_true, classes, min_test_count)
    per_arm = arms_table(runs, classes)
    verdicts = fixed_comparator_verdicts(y_true, predictions, gan_arms, comparators(internal_verdicts), classes,
                                         n_boot, level, seed, binary=binary, min_test_count=min_test_count, power=power)
    return {"runs": runs, "arms": per_arm, "verdicts": verdicts,
            "summary": external_summary(per_arm, verdicts, counts, task, len(y_true)),
            "markdown": external_markdown(name, per_arm, verdicts, classes, counts, len(y_true), level, power, rule)}


def write_external_tables(folder: Path, external: dict[str, dict]) -> None:
    """``folder/external/NAME/{arms,runs,gan_vs_best}.csv`` for every scored set."""
    for name, result in external.items():
        target = Path(folder) / EXTERNAL / name
        target.mkdir(parents=True)
        result["arms"].to_csv(target / "arms.csv", index=False)
        result["runs"].to_csv(target / "runs.csv", index=False)
        result["verdicts"].to_csv(target / "gan_vs_best.csv", index=False)
