"""The compare stage: multi-seed tables, the paired bootstrap verdict and the stage end to end."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dermagan.classify.recipe import RECIPE_KEYS
from dermagan.errors import DermaganError
from dermagan.evaluate.compare import (
    BETTER,
    NO_DIFFERENCE,
    arms_table,
    bootstrap_indices,
    bootstrap_recalls,
    gan_vs_best,
    is_gan_arm,
    metric_values,
    runs_table,
    verdict_metrics,
)
from dermagan.evaluate.metrics import classification_metrics, minimum_detectable_difference
from dermagan.stages.compare import run_compare
from params_util import make_config

CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")  # the default task (params.yaml data.classes)
VERDICT_CLASSES = ("akiec", "bcc", "df", "mel", "vasc")      # params.yaml evaluate.verdict_classes
N_CLASSES = len(CLASSES)
# The shared recipe (params.yaml `train` + the tuned file, merged); arms are `extra` plus overrides.
RECIPE = {"backbone": "tf_efficientnet_lite0", "pretrained": "package", "epochs": 6, "batch_size": 64, "lr": 0.002,
          "weight_decay": 0.0001, "lr_schedule": "onecycle", "warmup_epochs": 1.5, "step_size": 3, "gamma": 0.3,
          "patience": 3, "label_smoothing": 0.0, "class_weight_power": 1.0, "sampler": "shuffle", "augment": True,
          "augment_strength": 0.0, "dropout": 0.2, "drop_path": 0.0, "tta": "hflip", "temperature_scaling": True}
ARM_PARAMS = {"effnet": {"extra": None},
              "effnet_dcgan": {"class_weight_power": 0.0, "sampler": "class_balanced", "extra": "dcgan/dedup"}}
ARMS = {arm: {**RECIPE, **settings} for arm, settings in ARM_PARAMS.items()}  # resolved, as run_compare does


def test_gan_arm_needs_method_slash_set():
    assert is_gan_arm({"extra": "cdcgan/dedup"})
    assert not is_gan_arm({"extra": "oversample"})
    assert not is_gan_arm({"extra": None})
    assert not is_gan_arm({})


def test_bootstrap_recalls_equal_a_plain_loop():
    rng = np.random.default_rng(1)
    y_true, y_pred = rng.integers(0, 4, 30), rng.integers(0, 4, 30)
    idx = bootstrap_indices(30, 25, seed=3)
    fast = bootstrap_recalls(y_true, y_pred, idx, 5)  # class 4 never occurs: NaN column
    assert fast.shape == (25, 5)
    for b in range(25):
        for c in range(5):
            rows = [i for i in idx[b] if y_true[i] == c]
            expected = sum(y_pred[i] == c for i in rows) / len(rows) if rows else math.nan
            assert fast[b, c] == pytest.approx(expected, nan_ok=True)


def test_balanced_accuracy_is_mean_recall_over_present_classes():
    recalls = np.array([[0.5, 1.0, np.nan], [0.2, 0.4, 0.6]])
    values = metric_values(recalls, ("a", "b", "c"), ("bal_acc", "recall_b"))
    np.testing.assert_allclose(values, [[0.75, 1.0], [0.4, 0.4]])


def _labels(per_class: int = 40) -> np.ndarray:
    return np.repeat(np.arange(N_CLASSES), per_class)


def _predict(y_true: np.ndarray, miss_rate: dict[int, float], seed: int) -> np.ndarray:
    """Correct predictions except a share ``miss_rate[c]`` of class c, predicted as the next class."""
    rng = np.random.default_rng(seed)
    y_pred = y_true.copy()
    for c, rate in miss_rate.items():
        where = np.flatnonzero(y_true == c)
        missed = rng.choice(where, int(rate * len(where)), replace=False)
        y_pred[missed] = (c + 1) % N_CLASSES
    return y_pred


def test_verdict_better_for_a_planted_gan_gain():
    y_true = _labels()
    df = CLASSES.index("df")
    real = {s: _predict(y_true, {df: 0.8}, seed=s) for s in (0, 1)}
    gan = {s: _predict(y_true, {df: 0.1}, seed=s) for s in (0, 1)}
    verdicts = gan_vs_best(y_true, {"effnet": real, "effnet_dcgan": gan}, ["effnet_dcgan"], CLASSES,
                           n_boot=500, level=0.95, seed=0, verdict_classes=VERDICT_CLASSES).set_index("metric")
    assert verdicts.loc["recall_df", "verdict"] == BETTER
    assert verdicts.loc["recall_df", "diff"] == pytest.approx(0.7)
    assert verdicts.loc["recall_df", "ci_low"] > 0.4
    assert verdicts.loc["recall_mel", "verdict"] == NO_DIFFERENCE  # both perfect on mel
    assert set(verdicts["best_non_gan_arm"]) == {"effnet"}


def test_identical_predictions_show_no_difference():
    y_true = _labels()
    same = {s: _predict(y_true, {0: 0.3, 3: 0.5, 4: 0.2}, seed=s) for s in (0, 1)}
    verdicts = gan_vs_best(y_true, {"cnn": same, "oversample": same, "cnn_gan": same}, ["cnn_gan"], CLASSES,
                           n_boot=200, level=0.95, seed=0, verdict_classes=VERDICT_CLASSES)
    assert len(verdicts) == 6
    assert (verdicts["diff"] == 0).all() and (verdicts["ci_low"] == 0).all() and (verdicts["ci_high"] == 0).all()
    assert (verdicts["verdict"] == NO_DIFFERENCE).all()
    assert (verdicts["mdd"] == 0).all()  # no spread of the difference: identical predictions
    everything = gan_vs_best(y_true, {"cnn": same, "cnn_gan": same}, ["cnn_gan"], CLASSES, n_boot=20, level=0.95,
                             seed=0)  # no verdict classes given: every class's recall
    assert tuple(everything["metric"]) == verdict_metrics(CLASSES) == ("bal_acc", *(f"recall_{c}" for c in CLASSES))


def test_mdd_is_the_power_multiple_of_the_bootstrap_sd_of_the_difference():
    y_true = _labels()
    df = CLASSES.index("df")
    real = {0: _predict(y_true, {df: 0.5}, seed=0)}
    gan = {0: _predict(y_true, {df: 0.3}, seed=1)}
    verdicts = gan_vs_best(y_true, {"effnet": real, "effnet_dcgan": gan}, ["effnet_dcgan"], CLASSES, n_boot=300,
                           level=0.9, seed=4, metrics=("recall_df",), power=0.9)
    idx = bootstrap_indices(len(y_true), 300, seed=4)
    hit = lambda p: np.array([np.mean(p[i][y_true[i] == df] == df) for i in idx])  # noqa: E731
    sd = np.std(hit(gan[0]) - hit(real[0]), ddof=1)
    z = 1.6448536269514722 + 1.2815515655446004  # z(0.95) for two-sided alpha 0.1, z(0.9) for power 0.9
    assert verdicts.loc[0, "mdd"] == pytest.approx(z * sd) == pytest.approx(minimum_detectable_difference(sd, 0.9, 0.9))
    assert verdicts.loc[0, "mdd"] > 0


def test_bal_acc_leaves_out_a_class_with_too_few_test_images():
    y_true = np.repeat(np.arange(N_CLASSES), [5 if c == "df" else 20 for c in CLASSES])  # df: 5 test images
    gan = y_true.copy()
    real = y_true.copy()
    real[y_true == CLASSES.index("df")] = 0  # real misses every df image; both perfect elsewhere
    arms = {"effnet": {0: real}, "effnet_dcgan": {0: gan}}
    kept = gan_vs_best(y_true, arms, ["effnet_dcgan"], CLASSES, 50, 0.95, 0, metrics=("bal_acc", "recall_df"),
                       min_test_count=5).set_index("metric")
    left_out = gan_vs_best(y_true, arms, ["effnet_dcgan"], CLASSES, 50, 0.95, 0, metrics=("bal_acc", "recall_df"),
                           min_test_count=6).set_index("metric")
    assert kept.loc["bal_acc", "best_value"] == pytest.approx(6 / 7)  # df recall 0 among 7 classes
    assert left_out.loc["bal_acc", "best_value"] == pytest.approx(1.0)  # df left out of the mean
    assert left_out.loc["bal_acc", "diff"] == 0 and left_out.loc["bal_acc", "ci_high"] == 0
    assert left_out.loc["recall_df", "diff"] == pytest.approx(1.0)  # still judged on its own


def test_no_gan_arm_gives_an_empty_verdict_table():
    y_true = _labels(5)
    verdicts = gan_vs_best(y_true, {"cnn": {0: y_true}}, [], CLASSES, n_boot=10, level=0.95, seed=0)
    assert verdicts.empty and "verdict" in verdicts.columns


def test_arms_table_aggregates_seeds():
    docs = {(arm, s): {"test": {"bal_acc": b, "macro_f1": b, "macro_auc": None, "accuracy": b,
                                "per_class": {c: {"recall": b} for c in CLASSES}}}
            for arm, s, b in [("effnet", 0, 0.6), ("effnet", 1, 0.7), ("effnet_dcgan", 0, 0.8)]}
    table = arms_table(runs_table(docs, ARMS, CLASSES), CLASSES).set_index("arm")
    assert list(table.index) == ["effnet_dcgan", "effnet"]
    assert table.loc["effnet", "n_seeds"] == 2
    assert table.loc["effnet", "bal_acc_mean"] == pytest.approx(0.65)
    assert table.loc["effnet", "bal_acc_std"] == pytest.approx(np.std([0.6, 0.7], ddof=1))
    assert math.isnan(table.loc["effnet_dcgan", "bal_acc_std"])
    assert bool(table.loc["effnet_dcgan", "gan"]) and not bool(table.loc["effnet", "gan"])


def _write_run(metrics_dir: Path, predictions_dir: Path, arm: str, seed: int, y_pred: np.ndarray) -> None:
    """A metrics file computed from the predictions (as the evaluate stage does) and the predictions CSV."""
    y_true = _labels(10)
    test = classification_metrics(y_true, np.eye(N_CLASSES)[y_pred], CLASSES)
    test["bal_acc_ci_low"], test["bal_acc_ci_high"] = test["bal_acc"] - 0.05, test["bal_acc"] + 0.05
    for values in test["per_class"].values():
        values["recall_ci_low"], values["recall_ci_high"] = max(values["recall"] - 0.1, 0), None
    document = {"arm": arm, "seed": seed, "model_version": "3", "test": test}
    (metrics_dir / f"{arm}-s{seed}.json").write_text(json.dumps(document))
    pd.DataFrame({"image_id": [f"ISIC_{i:07d}" for i in range(len(y_true))],
                  "actual": [CLASSES[i] for i in y_true], "predicted": [CLASSES[i] for i in y_pred]}
                 ).to_csv(predictions_dir / f"{arm}-s{seed}.csv", index=False)


@pytest.fixture
def compare_inputs(tmp_path: Path) -> tuple[dict, Path, Path]:
    """Metrics and predictions of two arms x two seeds, and the params a test changes (see make_config)."""
    assert sorted(RECIPE) == sorted(RECIPE_KEYS)
    metrics_dir, predictions_dir = tmp_path / "metrics", tmp_path / "predictions"
    metrics_dir.mkdir()
    predictions_dir.mkdir()
    y_true = _labels(10)
    for seed in (0, 1):
        _write_run(metrics_dir, predictions_dir, "effnet", seed, _predict(y_true, {3: 0.6, 4: 0.3 - 0.2 * seed}, seed))
        _write_run(metrics_dir, predictions_dir, "effnet_dcgan", seed, _predict(y_true, {3: 0.2, 4: 0.5}, seed))
    params = {"arms": ARM_PARAMS, "train": {**RECIPE, "seeds": [0, 1]},
              "evaluate": {"bootstrap_samples": 200, "ci_level": 0.95, "seed": 0},
              "mlflow": {"experiment": "test-compare"}}
    return params, metrics_dir, predictions_dir


def test_run_compare_end_to_end(tracking, tmp_path, compare_inputs):
    params, metrics_dir, predictions_dir = compare_inputs
    out = tmp_path / "reports" / "compare"
    markdown = run_compare(make_config(params), metrics_dir, out, predictions_dir)
    for name in ("comparison.md", "comparison.png", "gan_vs_best.png", "arms.csv", "runs.csv",
                 "gan_vs_best.csv", "summary.json"):
        assert (out / name).is_file(), name
    assert not (out / "roc.png").exists()  # ROC curves per arm: binary tasks only
    summary = json.loads((out / "summary.json").read_text(), parse_constant=pytest.fail)
    assert set(summary["arms"]) == {"effnet", "effnet_dcgan"}
    assert summary["arms"]["effnet"]["bal_acc_std"] > 0
    assert set(summary["gan_vs_best"]["effnet_dcgan"]) == {"bal_acc", "recall_akiec", "recall_bcc",
                                                           "recall_df", "recall_mel", "recall_vasc"}
    verdicts = summary["gan_vs_best"]["effnet_dcgan"]
    assert verdicts["bal_acc"]["mdd"] > 0 and verdicts["recall_akiec"]["mdd"] == 0  # both arms perfect on akiec
    assert summary["test_counts"] == {c: 10 for c in CLASSES}
    assert summary["bma_excluded"] == {} and summary["bma_excluded_reason"] is None
    assert "mdd" in pd.read_csv(out / "gan_vs_best.csv").columns
    assert "MDD (80% power)" in markdown and "or more, at 80% power" in markdown
    assert "Test images per class: akiec 10" in markdown
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 4
    settings = runs.drop_duplicates("arm").set_index("arm")  # each arm's recipe: shared values + overrides
    assert set(settings["backbone"]) == {"tf_efficientnet_lite0"}
    assert settings.loc["effnet", "class_weight_power"] == 1.0 and settings.loc["effnet", "sampler"] == "shuffle"
    assert settings.loc["effnet_dcgan", "class_weight_power"] == 0.0
    assert settings.loc["effnet_dcgan", "sampler"] == "class_balanced"
    assert "effnet" in markdown and "effnet_dcgan" in markdown and "beyond the 95% CI on" in markdown
    assert (out / "comparison.md").read_text() == markdown

    import mlflow

    runs = mlflow.search_runs(experiment_names=["test-compare"])
    assert list(runs["tags.mlflow.runName"]) == ["compare"]
    logged = runs.loc[0, "metrics.compare/effnet/bal_acc_mean"]
    assert logged == pytest.approx(summary["arms"]["effnet"]["bal_acc_mean"])
    assert runs.loc[0, "metrics.compare/effnet_dcgan/vs_best/bal_acc/mdd"] == pytest.approx(
        summary["gan_vs_best"]["effnet_dcgan"]["bal_acc"]["mdd"])


def test_min_test_count_is_reported_in_the_summary(tracking, tmp_path, compare_inputs):
    params, metrics_dir, predictions_dir = compare_inputs  # 10 test images per class
    params = {**params, "evaluate": {**params["evaluate"], "min_test_count": 11}}
    out = tmp_path / "out"
    markdown = run_compare(make_config(params), metrics_dir, out, predictions_dir)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["bma_excluded"] == {}  # no class reaches 11: every class stays in, and the reason says so
    assert "no class has evaluate.min_test_count = 11" in summary["bma_excluded_reason"]
    assert "no class has evaluate.min_test_count = 11" in markdown


def test_missing_metrics_file_names_it(tmp_path, compare_inputs):
    params, metrics_dir, predictions_dir = compare_inputs
    (metrics_dir / "effnet_dcgan-s1.json").unlink()
    with pytest.raises(DermaganError, match=r"effnet_dcgan-s1\.json.*evaluate@effnet_dcgan-1"):
        run_compare(make_config(params), metrics_dir, tmp_path / "out", predictions_dir)
    assert not (tmp_path / "out").exists()


def test_an_arm_with_an_unknown_key_is_a_clear_error(tmp_path, compare_inputs):
    params, metrics_dir, predictions_dir = compare_inputs
    params = {**params, "arms": {**ARM_PARAMS, "effnet": {"class_weights": True, "extra": None}}}
    with pytest.raises(DermaganError, match=r"arms\.effnet sets unknown key\(s\) \['class_weights'\]"):
        run_compare(make_config(params), metrics_dir, tmp_path / "out", predictions_dir)
    assert not (tmp_path / "out").exists()


def test_test_images_must_match_across_runs(tmp_path, compare_inputs):
    params, metrics_dir, predictions_dir = compare_inputs
    path = predictions_dir / "effnet_dcgan-s0.csv"
    frame = pd.read_csv(path)
    frame.iloc[[0, 1]] = frame.iloc[[1, 0]].to_numpy()
    frame.to_csv(path, index=False)
    with pytest.raises(DermaganError, match="same test split"):
        run_compare(make_config(params), metrics_dir, tmp_path / "out", predictions_dir)


def test_one_seed_and_no_gan_arm(tracking, tmp_path, compare_inputs):
    params, metrics_dir, predictions_dir = compare_inputs
    params = {**params, "arms": {"effnet": ARM_PARAMS["effnet"]}, "train": {**RECIPE, "seeds": [0]}}
    out = tmp_path / "out"
    markdown = run_compare(make_config(params), metrics_dir, out, predictions_dir)
    summary = json.loads((out / "summary.json").read_text(), parse_constant=pytest.fail)
    assert summary["arms"]["effnet"]["bal_acc_std"] is None
    assert summary["gan_vs_best"] == {}
    assert "no GAN arms" in markdown


def test_comparator_is_chosen_on_validation_not_test(tracking, tmp_path, compare_inputs):
    """A second non-GAN arm better on test but worse on val must not become the GAN arms' comparator."""
    params, metrics_dir, predictions_dir = compare_inputs
    y_true = _labels(10)
    for seed in (0, 1):  # effnet_other: much better on test than effnet
        _write_run(metrics_dir, predictions_dir, "effnet_other", seed, _predict(y_true, {}, seed))
    params = {**params, "arms": {**ARM_PARAMS, "effnet_other": {"extra": None}}}
    histories = tmp_path / "train"
    histories.mkdir()
    val = {"effnet": [0.5, 0.7, 0.6], "effnet_other": [0.4, 0.5, 0.45], "effnet_dcgan": [0.9, 0.9, 0.9]}
    for arm, values in val.items():
        for seed in (0, 1):
            pd.DataFrame({"epoch": [1, 2, 3], "val_bal_acc": values}).to_csv(histories / f"{arm}-s{seed}.csv", index=False)
    markdown = run_compare(make_config(params), metrics_dir, tmp_path / "out", predictions_dir, histories)
    verdicts = pd.read_csv(tmp_path / "out" / "gan_vs_best.csv")
    assert set(verdicts["best_non_gan_arm"]) == {"effnet"}
    assert "chosen on validation, not on test" in markdown and "effnet 0.700" in markdown
    # the old rule (no histories) picks effnet_other, the arm that is best on test
    markdown = run_compare(make_config(params), metrics_dir, tmp_path / "out2", predictions_dir)
    assert "effnet_other" in set(pd.read_csv(tmp_path / "out2" / "gan_vs_best.csv")["best_non_gan_arm"])
    assert "on the test split (no training histories given)" in markdown


def test_compare_runs_pairs_an_arm_with_its_earlier_run(tmp_path):
    from dermagan.stages.compare import run_compare_runs

    y_true = _labels(10)
    old, new = tmp_path / "old", tmp_path / "new"
    for folder in (old, new):
        (folder / "m").mkdir(parents=True)
    for seed in (0, 1):  # the re-trained arm misses far fewer class-3 images than its earlier run
        _write_run(old / "m", old, "effnet_gan", seed, _predict(y_true, {3: 0.9}, seed))
        _write_run(new / "m", new, "effnet_gan", seed, _predict(y_true, {3: 0.0}, seed))
    params = {"train": {"seeds": [0, 1]}, "evaluate": {"bootstrap_samples": 200, "ci_level": 0.95, "seed": 0}}
    doc = run_compare_runs(make_config(params), old, new, "effnet_gan", tmp_path / "verdict.json")
    assert set(doc["metrics"]) == set(verdict_metrics(VERDICT_CLASSES))  # params evaluate.verdict_classes
    df = doc["metrics"][f"recall_{CLASSES[3]}"]
    assert df["diff"] == pytest.approx(0.9) and df["verdict"] == "better" and df["mdd"] > 0
    assert doc["metrics"]["recall_" + CLASSES[4]]["verdict"] == "no difference shown"
    assert json.loads((tmp_path / "verdict.json").read_text())["arm"] == "effnet_gan"
    same = run_compare_runs(make_config(params), old, old, "effnet_gan")
    assert all(r["diff"] == 0 for r in same["metrics"].values())
    for seed in (0, 1):  # other test images (same classes): not a paired comparison
        path = new / f"effnet_gan-s{seed}.csv"
        path.write_text(path.read_text().replace("ISIC_0000000", "ISIC_9"))
    with pytest.raises(DermaganError, match="different test images"):
        run_compare_runs(make_config(params), old, new, "effnet_gan")
