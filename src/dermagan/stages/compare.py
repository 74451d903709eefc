"""The compare stage: every (arm, seed) run in tables, figures, a GAN-vs-best verdict and one MLflow run."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from dermagan.atomic import atomic_dir
from dermagan.constants import CLASSES
from dermagan.errors import DermaganError
from dermagan.evaluate.compare import (
    arms_table,
    comparison_figure,
    full_set_recalls,
    gan_vs_best,
    gan_vs_best_figure,
    is_gan_arm,
    markdown_report,
    mlflow_metrics,
    run_name,
    runs_table,
    summary,
)
from dermagan.evaluate.plots import save
from dermagan.params import section
from dermagan.stages.train import arm_recipe, arm_settings
from dermagan.tracking.setup import configure, standard_tags

PREDICTION_COLUMNS = ("image_id", "actual", "predicted")


def read_metrics(metrics_dir: Path, arms: list[str], seeds: list[int]) -> dict[tuple[str, int], dict]:
    """The evaluate stage's metrics file of every (arm, seed) run, with an error naming a missing one."""
    found = {}
    for arm in arms:
        for seed in seeds:
            path = Path(metrics_dir) / f"{run_name(arm, seed)}.json"
            if not path.is_file():
                raise DermaganError(f"{path}: metrics of run '{run_name(arm, seed)}' not found; "
                                    f"run `dvc repro evaluate@{arm}-{seed}`")
            found[(arm, seed)] = json.loads(path.read_text())
    return found


def read_predictions(predictions_dir: Path, arms: list[str], seeds: list[int]
                     ) -> tuple[np.ndarray, dict[str, dict[int, np.ndarray]]]:
    """True class indices of the test images and every run's predicted indices (arm -> seed -> array).

    Every run must list the same test images in the same order with the same true classes.
    """
    reference: pd.DataFrame | None = None
    predicted: dict[str, dict[int, np.ndarray]] = {arm: {} for arm in arms}
    for arm in arms:
        for seed in seeds:
            path = Path(predictions_dir) / f"{run_name(arm, seed)}.csv"
            frame = _read_prediction_file(path, f"dvc repro evaluate@{arm}-{seed}")
            if reference is None:
                reference = frame
            elif not (frame["image_id"].equals(reference["image_id"]) and frame["actual"].equals(reference["actual"])):
                raise DermaganError(f"{path}: test images (image_id order or actual class) differ from "
                                    f"{Path(predictions_dir) / f'{run_name(arms[0], seeds[0])}.csv'}; "
                                    "a paired comparison needs the same test split in every run")
            predicted[arm][seed] = _class_indices(frame["predicted"], path)
    return _class_indices(reference["actual"], Path(predictions_dir)), predicted


def _read_prediction_file(path: Path, remedy: str) -> pd.DataFrame:
    if not path.is_file():
        raise DermaganError(f"{path}: test predictions not found; run `{remedy}`")
    frame = pd.read_csv(path, dtype=str)
    missing = [c for c in PREDICTION_COLUMNS if c not in frame.columns]
    if missing:
        raise DermaganError(f"{path}: missing column(s) {missing}; expected {list(PREDICTION_COLUMNS)}")
    return frame.reset_index(drop=True)


def _class_indices(names: pd.Series, path: Path) -> np.ndarray:
    unknown = sorted(set(names) - set(CLASSES))
    if unknown:
        raise DermaganError(f"{path}: unknown class name(s) {unknown}; expected {list(CLASSES)}")
    return names.map({c: i for i, c in enumerate(CLASSES)}).to_numpy(dtype=np.int64)


def check_predictions_match_metrics(runs: pd.DataFrame, y_true: np.ndarray,
                                    predictions: dict[str, dict[int, np.ndarray]]) -> None:
    """Recall per class from the predictions file must equal the metrics file's (catches stale outputs)."""
    columns = [f"recall_{c}" for c in CLASSES]
    for _, row in runs.iterrows():
        from_predictions = full_set_recalls(y_true, predictions[row["arm"]][row["seed"]], len(CLASSES))
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
            path = Path(history_dir) / f"{run_name(arm, seed)}.csv"
            if not path.is_file():
                raise DermaganError(f"{path}: training history of run '{run_name(arm, seed)}' not found; "
                                    f"run `dvc repro train@{arm}-{seed}`")
            history = pd.read_csv(path)
            if "val_bal_acc" not in history.columns or history.empty:
                raise DermaganError(f"{path}: no 'val_bal_acc' column/rows; is this a training history?")
            values.append(float(history["val_bal_acc"].max()))
        scores[arm] = float(np.mean(values))
    return scores


def run_compare(params: dict, metrics_dir: Path, out_dir: Path, predictions_dir: Path,
                history_dir: Path | None = None) -> str:
    """Write comparison.md/.png, arms/runs/gan_vs_best CSVs, gan_vs_best.png and summary.json; log to MLflow.

    With ``history_dir`` (the train stage's per-epoch histories), the non-GAN arm every GAN arm is
    judged against is the one with the best mean real **validation** balanced accuracy, chosen
    once for all metrics, so the test split chooses nothing. Without it, the comparator is the
    best non-GAN arm per metric on test (the older, test-selected rule; the report says which).
    """
    arms = {arm: {**arm_recipe(params, arm), "extra": arm_settings(params, arm).get("extra")}
            for arm in section(params, "arms")}
    seeds = [int(s) for s in section(params, "train", "seeds")]
    cfg = section(params, "evaluate")
    n_boot, level, boot_seed = int(cfg["bootstrap_samples"]), float(cfg["ci_level"]), int(cfg["seed"])
    runs = runs_table(read_metrics(metrics_dir, list(arms), seeds), arms, CLASSES)
    y_true, predictions = read_predictions(predictions_dir, list(arms), seeds)
    check_predictions_match_metrics(runs, y_true, predictions)
    per_arm = arms_table(runs, CLASSES)
    # GAN-derived arms are judged against the best real-only arm: GAN images (extra) or frozen GAN
    # discriminators as class-expert features (experts)
    gan_arms = [arm for arm, settings in arms.items()
                if is_gan_arm(settings) or arm_settings(params, arm).get("experts")]
    rule = "the best non-GAN arm per metric on the test split (no training histories given)"
    judged = predictions
    if history_dir is not None and gan_arms:
        real = [arm for arm in arms if arm not in gan_arms]
        val = validation_scores(history_dir, real, seeds)
        chosen = max(real, key=lambda arm: val[arm])
        judged = {arm: p for arm, p in predictions.items() if arm == chosen or arm in gan_arms}
        ranking = ", ".join(f"{a} {v:.3f}" for a, v in sorted(val.items(), key=lambda kv: -kv[1]))
        rule = (f"`{chosen}`, the non-GAN arm with the best mean real-validation balanced accuracy "
                f"({ranking}); chosen on validation, not on test, for every metric")
    verdicts = gan_vs_best(y_true, judged, gan_arms, CLASSES, n_boot, level, boot_seed)
    markdown = markdown_report(per_arm, verdicts, CLASSES, seeds, len(y_true), n_boot, level)
    markdown = markdown.replace("## GAN arms vs the best non-GAN arm\n\n",
                                f"## GAN arms vs the best non-GAN arm\n\nComparator: {rule}.\n\n", 1)
    if judged is not predictions:
        markdown = markdown.replace("The best non-GAN arm is picked on this same test set",
                                    "The comparator was picked on validation, not on this test set")
    document = summary(per_arm, verdicts)
    with atomic_dir(Path(out_dir)) as tmp:
        (tmp / "comparison.md").write_text(markdown)
        per_arm.to_csv(tmp / "arms.csv", index=False)
        runs.to_csv(tmp / "runs.csv", index=False)
        verdicts.to_csv(tmp / "gan_vs_best.csv", index=False)
        (tmp / "summary.json").write_text(json.dumps(document, indent=2, allow_nan=False))
        save(comparison_figure(runs, per_arm, CLASSES), tmp / "comparison.png")
        save(gan_vs_best_figure(verdicts, level), tmp / "gan_vs_best.png")
        _log_to_mlflow(params, tmp, per_arm, verdicts, document, seeds)
    return markdown


def _log_to_mlflow(params: dict, folder: Path, per_arm: pd.DataFrame, verdicts: pd.DataFrame,
                   document: dict, seeds: list[int]) -> None:
    """One run named ``compare``: the output folder, the arms and verdict tables, flat metrics."""
    configure(section(params, "mlflow", "experiment"))
    with mlflow.start_run(run_name="compare"):
        mlflow.set_tags(standard_tags("compare", dvc_stage="compare"))
        mlflow.log_params({"seeds": ",".join(map(str, seeds)), "arms": ",".join(per_arm["arm"]),
                           "bootstrap_samples": params["evaluate"]["bootstrap_samples"],
                           "ci_level": params["evaluate"]["ci_level"]})
        mlflow.log_metrics(mlflow_metrics(document))
        mlflow.log_artifacts(str(folder), "comparison")
        mlflow.log_table(per_arm, "arms.json")
        if not verdicts.empty:
            mlflow.log_table(verdicts, "gan_vs_best.json")


def run_compare_runs(params: dict, baseline_dir: Path, candidate_dir: Path, arm: str, out_json: Path | None = None,
                     baseline_arm: str | None = None) -> dict:
    """Paired bootstrap of one arm's test predictions against an earlier run of it (or another arm).

    For a change that re-trains an arm in place (e.g. tuned GAN settings applied to ``effnet_stgan``):
    keep the earlier ``reports/predictions/<arm>-s<seed>.csv`` files in ``baseline_dir``, re-run the
    pipeline, and compare ``candidate_dir`` against them on the same test images, pairing seeds. The
    same statistic as the compare stage (seed-averaged metric, percentile CI, verdict).
    """
    seeds = [int(s) for s in section(params, "train", "seeds")]
    baseline_arm = baseline_arm or arm
    y_base, base = read_predictions(Path(baseline_dir), [baseline_arm], seeds)
    y_cand, cand = read_predictions(Path(candidate_dir), [arm], seeds)
    first = [_read_prediction_file(Path(d) / f"{run_name(a, seeds[0])}.csv", "dvc repro")["image_id"]
             for d, a in ((baseline_dir, baseline_arm), (candidate_dir, arm))]
    if not (np.array_equal(y_base, y_cand) and first[0].equals(first[1])):
        raise DermaganError(f"{candidate_dir} and {baseline_dir} hold different test images or classes; "
                            "a paired comparison needs the same test split")
    cfg = section(params, "evaluate")
    labels = (f"{baseline_arm} (baseline: {baseline_dir})", f"{arm} ({candidate_dir})")
    verdicts = gan_vs_best(y_cand, {labels[0]: base[baseline_arm], labels[1]: cand[arm]}, [labels[1]], CLASSES,
                           int(cfg["bootstrap_samples"]), float(cfg["ci_level"]), int(cfg["seed"]))
    verdicts = verdicts.rename(columns={"gan_arm": "candidate", "best_non_gan_arm": "baseline",
                                        "gan_value": "candidate_value", "best_value": "baseline_value"})
    document = {"arm": arm, "baseline_arm": baseline_arm, "baseline_dir": str(baseline_dir),
                "candidate_dir": str(candidate_dir), "seeds": seeds, "n_test": int(len(y_cand)),
                "ci_level": float(cfg["ci_level"]), "bootstrap_samples": int(cfg["bootstrap_samples"]),
                "metrics": {r["metric"]: {k: r[k] for k in ("candidate_value", "baseline_value", "diff", "ci_low",
                                                             "ci_high", "verdict")}
                            for r in verdicts.to_dict("records")}}
    if out_json is not None:
        from dermagan.atomic import atomic_file
        from dermagan.serialize import json_safe

        with atomic_file(Path(out_json)) as tmp:
            tmp.write_text(json.dumps(json_safe(document), indent=2))
    return document
