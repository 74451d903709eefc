"""Binary tasks: ROC AUC, the threshold set on val for a target specificity, sensitivity and specificity at it,
the minimum detectable difference, and the evaluate and compare stages on a made-up benign/malignant task."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from dermagan.errors import DermaganError
from dermagan.evaluate.compare import BETTER, bootstrap_indices
from dermagan.evaluate.metrics import (
    minimum_detectable_difference,
    resampled_auc,
    roc_auc,
    score_column,
    sensitivity_specificity,
    threshold_at_specificity,
)
from dermagan.evaluate.report import binary_report, evaluation_report, flat_metrics, predictions_frame
from params_util import full_params, make_config

CLASSES = ("benign", "malignant")
POSITIVE = "malignant"


# --- pure functions, by hand -----------------------------------------------------------------

def test_auc_by_hand():
    # positives 0.35 and 0.8 against negatives 0.1 and 0.4: 0.35 > 0.1, 0.35 < 0.4, 0.8 > both -> 3 of 4 pairs
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    assert roc_auc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5  # a tie counts one half
    assert roc_auc(np.array([1, 0, 1]), np.array([0.2, 0.2, 0.9])) == 0.75  # (0.5 + 1) / 2
    assert np.isnan(roc_auc(np.array([1, 1]), np.array([0.2, 0.3])))  # no negative


def test_auc_agrees_with_sklearn_with_ties_and_on_resamples():
    rng = np.random.default_rng(3)
    y = rng.random(120) < 0.35
    score = np.round(rng.random(120) + 0.3 * y, 1)  # rounded: many ties
    assert roc_auc(y, score) == pytest.approx(roc_auc_score(y, score))
    idx = bootstrap_indices(120, 40, seed=2)
    fast = resampled_auc(y, score, idx, chunk=7)  # chunks that do not divide 40
    np.testing.assert_allclose(fast, [roc_auc_score(y[i], score[i]) for i in idx])


def test_sensitivity_and_specificity_at_a_threshold_by_hand():
    y = np.array([0, 0, 0, 0, 1, 1])
    score = np.array([0.1, 0.2, 0.3, 0.6, 0.5, 0.9])
    assert sensitivity_specificity(y, score, 0.5) == (1.0, 0.75)  # called: 0.6, 0.5, 0.9 (score >= threshold)
    assert sensitivity_specificity(y, score, 0.6) == (0.5, 0.75)
    assert sensitivity_specificity(y, score, 0.95) == (0.0, 1.0)
    sens, spec = sensitivity_specificity(np.array([0, 0]), np.array([0.1, 0.7]), 0.5)
    assert np.isnan(sens) and spec == 0.5


def test_threshold_is_the_lowest_that_reaches_the_specificity_on_val():
    y_val = np.array([0, 0, 0, 0, 1, 1])
    score_val = np.array([0.1, 0.2, 0.3, 0.6, 0.5, 0.9])
    # specificity at each distinct score: 0.1 -> 0/4, 0.2 -> 1/4, 0.3 -> 2/4, 0.5 -> 3/4, 0.6 -> 3/4, 0.9 -> 4/4
    assert threshold_at_specificity(y_val, score_val, 0.75) == 0.5
    assert threshold_at_specificity(y_val, score_val, 0.5) == 0.3
    assert threshold_at_specificity(y_val, score_val, 0.76) == 0.9
    assert threshold_at_specificity(y_val, score_val, 0.0) == 0.1
    # the highest score is a negative: only a threshold above it reaches specificity 0.9
    above = threshold_at_specificity(np.array([1, 0]), np.array([0.2, 0.9]), 0.9)
    assert 0.9 < above < 0.9 + 1e-9
    assert sensitivity_specificity(np.array([1, 0]), np.array([0.2, 0.9]), above) == (0.0, 1.0)
    with pytest.raises(ValueError, match="no negative"):
        threshold_at_specificity(np.array([1, 1]), np.array([0.2, 0.9]), 0.9)


def test_minimum_detectable_difference_by_hand():
    # z(0.975) = 1.95996, z(0.8) = 0.84162: 0.05 x 2.80158 = 0.1401
    assert minimum_detectable_difference(0.05, 0.95, 0.8) == pytest.approx(0.05 * (1.95996 + 0.84162), abs=1e-5)
    assert minimum_detectable_difference(0.05, 0.95, 0.8) == pytest.approx(0.1401, abs=1e-4)
    assert minimum_detectable_difference(0.1, 0.9, 0.5) == pytest.approx(0.1 * 1.644854, abs=1e-6)  # z(0.5) = 0
    assert minimum_detectable_difference(0.0, 0.95, 0.8) == 0.0
    assert np.isnan(minimum_detectable_difference(float("nan"), 0.95, 0.8))


def test_binary_report_sets_the_threshold_on_val_and_applies_it_to_test():
    # val: negatives 0.1, 0.2, 0.3, 0.6; positives 0.5, 0.9 -> threshold 0.5 for specificity 0.75
    y_val = np.array([0, 0, 0, 0, 1, 1])
    p_val = np.array([0.1, 0.2, 0.3, 0.6, 0.5, 0.9])
    # test: negatives 0.05, 0.45, 0.55, 0.7 (2 of 4 below 0.5), positives 0.4, 0.5, 0.8 (2 of 3 at or above)
    y_test = np.array([0, 0, 0, 0, 1, 1, 1])
    p_test = np.array([0.05, 0.45, 0.55, 0.7, 0.4, 0.5, 0.8])
    proba = lambda p: np.c_[1 - p, p]  # noqa: E731  (columns: benign, malignant)
    block = binary_report(y_test, proba(p_test), y_val, proba(p_val), CLASSES, POSITIVE, 0.75, n_boot=300,
                          level=0.9, seed=0)
    assert block["threshold"] == 0.5 and block["threshold_from"] == "val" and block["target_specificity"] == 0.75
    assert block["val_specificity"] == 0.75 and block["val_sensitivity"] == 1.0
    assert block["sensitivity"] == pytest.approx(2 / 3) and block["specificity"] == 0.5
    assert block["auc"] == pytest.approx(roc_auc_score(y_test, p_test))
    for key in ("auc", "sensitivity", "specificity"):
        assert block[f"{key}_ci_low"] <= block[key] <= block[f"{key}_ci_high"]
    assert block["n_positive"] == 3 and block["n_negative"] == 4 and block["n_val"] == 6
    # positive class first: the same numbers
    first = binary_report(1 - y_test, proba(p_test)[:, ::-1], 1 - y_val, proba(p_val)[:, ::-1],
                          ("malignant", "benign"), POSITIVE, 0.75, n_boot=300, level=0.9, seed=0)
    assert first == block
    report = evaluation_report(y_test, proba(p_test), CLASSES, 100, 0.9, 0)
    report["binary"] = block
    flat = flat_metrics(report)
    assert flat["test/auc"] == block["auc"] and flat["test/threshold"] == 0.5 and "test/positive" not in flat


# --- the stages on a made-up benign/malignant task ---------------------------------------------

def binary_params(overrides: dict) -> dict:
    """A params override for the two-class task (gan.classes and the STGAN per-class block follow it)."""
    stgan = full_params({})["gan"]["stgan"]
    stgan["per_class"] = {POSITIVE: {"total_images": 8}}
    return {"data": {"classes": list(CLASSES), "positive": POSITIVE},
            "gan": {"classes": [POSITIVE], "stgan": stgan},
            "evaluate": {"bootstrap_samples": 300, "ci_level": 0.95, "seed": 0, "verdict_classes": None},
            **overrides}


def _scores(y: np.ndarray, separation: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(0.5 + separation * (y - 0.5) + rng.normal(0, 0.18, len(y)), 0.001, 0.999)


def _write_binary_run(metrics_dir: Path, predictions_dir: Path, arm: str, seed: int, separation: float) -> None:
    """What the evaluate stage writes for a binary task: metrics (with test.binary), predictions (with p_malignant)."""
    y_val, y_test = np.repeat([0, 1], [60, 40]), np.repeat([0, 1], [90, 60])
    p_val, p_test = _scores(y_val, separation, 100 + seed), _scores(y_test, separation, seed)
    proba_val, proba_test = np.c_[1 - p_val, p_val], np.c_[1 - p_test, p_test]
    test = evaluation_report(y_test, proba_test, CLASSES, 300, 0.95, 0, min_test_count=10)
    test["binary"] = binary_report(y_test, proba_test, y_val, proba_val, CLASSES, POSITIVE, 0.9, 300, 0.95, 0)
    (metrics_dir / f"{arm}-s{seed}.json").write_text(json.dumps({"arm": arm, "seed": seed, "model_version": "1",
                                                                 "test": test}))
    ids = [f"ISIC_{i:07d}" for i in range(len(y_test))]
    predictions_frame(ids, y_test, proba_test, CLASSES, POSITIVE).to_csv(predictions_dir / f"{arm}-s{seed}.csv",
                                                                         index=False)


ARMS = {"effnet": {"extra": None}, "effnet_ros": {"extra": "oversample"}, "effnet_gan": {"extra": "stgan/dedup"}}
SEPARATION = {"effnet": 0.25, "effnet_ros": 0.3, "effnet_gan": 0.6}  # the GAN arm ranks far better


@pytest.fixture
def binary_runs(tmp_path: Path):
    metrics_dir, predictions_dir, histories = tmp_path / "metrics", tmp_path / "predictions", tmp_path / "train"
    for folder in (metrics_dir, predictions_dir, histories):
        folder.mkdir()
    val = {"effnet": 0.7, "effnet_ros": 0.6, "effnet_gan": 0.9}  # effnet_ros is better on test, worse on val
    for arm in ARMS:
        for seed in (0, 1):
            _write_binary_run(metrics_dir, predictions_dir, arm, seed, SEPARATION[arm])
            pd.DataFrame({"epoch": [1, 2], "val_bal_acc": [val[arm] - 0.1, val[arm]]}).to_csv(
                histories / f"{arm}-s{seed}.csv", index=False)
    params = binary_params({"arms": ARMS, "train": {"seeds": [0, 1]}, "mlflow": {"experiment": "test-binary"}})
    return make_config(params), metrics_dir, predictions_dir, histories


def test_binary_compare_judges_auc_and_sensitivity_at_specificity(tracking, tmp_path, binary_runs):
    from dermagan.stages.compare import run_compare

    cfg, metrics_dir, predictions_dir, histories = binary_runs
    assert cfg.verdict_classes == (POSITIVE,)
    out = tmp_path / "out"
    markdown = run_compare(cfg, metrics_dir, out, predictions_dir, histories)
    summary = json.loads((out / "summary.json").read_text(), parse_constant=pytest.fail)
    verdicts = summary["gan_vs_best"]["effnet_gan"]
    assert list(verdicts) == ["bal_acc", "auc", "sens_at_spec", "recall_malignant"]
    assert {v["best_non_gan_arm"] for v in verdicts.values()} == {"effnet"}  # chosen on val, not test
    assert verdicts["auc"]["verdict"] == BETTER and verdicts["auc"]["ci_low"] > 0
    assert all(v["mdd"] > 0 for v in verdicts.values())
    # the verdict's values are the seed means of what evaluate wrote
    docs = {s: json.loads((metrics_dir / f"effnet_gan-s{s}.json").read_text())["test"]["binary"] for s in (0, 1)}
    table = pd.read_csv(out / "gan_vs_best.csv").set_index("metric")
    assert table.loc["auc", "gan_value"] == pytest.approx(np.mean([d["auc"] for d in docs.values()]))
    assert table.loc["sens_at_spec", "gan_value"] == pytest.approx(np.mean([d["sensitivity"] for d in docs.values()]))
    assert summary["arms"]["effnet_gan"]["auc_mean"] == pytest.approx(table.loc["auc", "gan_value"])
    assert summary["binary"] == {"positive": POSITIVE, "target_specificity": 0.9}
    assert summary["test_counts"] == {"benign": 90, "malignant": 60} and summary["bma_excluded"] == {}
    roc = pd.read_csv(out / "roc.csv")
    assert list(roc.columns) == ["arm", "fpr", "tpr"] and set(roc["arm"]) == set(ARMS)
    assert (out / "roc.png").stat().st_size > 0
    assert "positive class `malignant`" in markdown and "sens_at_spec" in markdown

    import mlflow

    logged = mlflow.search_runs(experiment_names=["test-binary"])
    assert logged.loc[0, "metrics.compare/effnet_gan/vs_best/auc/diff"] == pytest.approx(verdicts["auc"]["diff"])


def test_binary_compare_refuses_stale_or_missing_scores(tmp_path, binary_runs):
    from dermagan.stages.compare import run_compare

    cfg, metrics_dir, predictions_dir, histories = binary_runs
    path = metrics_dir / "effnet-s1.json"
    document = json.loads(path.read_text())
    document["test"]["binary"]["auc"] += 0.01
    path.write_text(json.dumps(document))
    with pytest.raises(DermaganError, match="run 'effnet-s1': test AUC from its predictions file"):
        run_compare(cfg, metrics_dir, tmp_path / "out", predictions_dir, histories)
    frame = pd.read_csv(predictions_dir / "effnet_gan-s0.csv").drop(columns=score_column(POSITIVE))
    frame.to_csv(predictions_dir / "effnet_gan-s0.csv", index=False)
    with pytest.raises(DermaganError, match="no 'p_malignant' column"):
        run_compare(cfg, metrics_dir, tmp_path / "out", predictions_dir, histories)


def test_binary_compare_runs_judges_auc(tmp_path):
    from dermagan.stages.compare import run_compare_runs

    old, new = tmp_path / "old", tmp_path / "new"
    for folder, separation in ((old, 0.2), (new, 0.6)):
        (folder / "m").mkdir(parents=True)
        for seed in (0, 1):
            _write_binary_run(folder / "m", folder, "effnet_gan", seed, separation)
    cfg = make_config(binary_params({"train": {"seeds": [0, 1]}}))
    doc = run_compare_runs(cfg, old, new, "effnet_gan")
    assert list(doc["metrics"]) == ["bal_acc", "auc", "recall_malignant"]  # no thresholds here: no sens_at_spec
    assert doc["metrics"]["auc"]["verdict"] == BETTER and doc["metrics"]["auc"]["mdd"] > 0


def test_evaluate_stage_on_a_binary_task(tmp_path, monkeypatch):
    """The stage's wiring (model, splits and MLflow stubbed): val sets the threshold, test is scored."""
    import torch

    from dermagan.data.prepared import SplitArrays
    from dermagan.stages import evaluate as stage

    y_val, y_test = np.repeat([0, 1], [40, 20]), np.repeat([0, 1], [50, 30])
    p = {"val": _scores(y_val, 0.5, 1), "test": _scores(y_test, 0.5, 2)}
    splits = {name: SplitArrays(np.full((len(y), 1, 1, 3), i, np.uint8), y, np.array([f"{name}{k}" for k in y]))
              for i, (name, y) in enumerate((("val", y_val), ("test", y_test)))}

    class Model(torch.nn.Module):
        classes = CLASSES
        temperature = torch.tensor(1.0)

    logged = {}
    monkeypatch.setattr(stage, "load_trained", lambda folder: (Model(), {"version": "7", "run_id": "x"}))
    monkeypatch.setattr(stage, "read_split", lambda folder, name: splits[name])
    monkeypatch.setattr(stage, "predict_proba", lambda model, images, batch, device: np.c_[
        1 - p["val" if images[0, 0, 0, 0] == 0 else "test"], p["val" if images[0, 0, 0, 0] == 0 else "test"]])
    monkeypatch.setattr(stage, "log_test_results", lambda *args: logged.setdefault("report", args[2]))
    monkeypatch.setattr(stage, "tracked_run_id", lambda experiment, info: info["run_id"])
    monkeypatch.setattr(stage, "log_datasets", lambda inputs, run_id: logged.setdefault("datasets", inputs))
    monkeypatch.setattr(stage, "log_model_card", lambda *args: "")
    cfg = make_config(binary_params({"evaluate": {"bootstrap_samples": 200, "specificity": 0.8,
                                                  "verdict_classes": None}}))
    out = {k: tmp_path / v for k, v in {"metrics": "m.json", "plots": "plots", "predictions": "p.csv",
                                        "roc": "roc.csv"}.items()}
    document = stage.run_evaluate(cfg, "effnet", 0, tmp_path, tmp_path, out["metrics"], out["plots"],
                                  out["predictions"], out["roc"])
    block = document["test"]["binary"]
    threshold = threshold_at_specificity(y_val == 1, p["val"], 0.8)
    assert block["threshold"] == threshold and block["val_specificity"] >= 0.8
    assert (block["sensitivity"], block["specificity"]) == sensitivity_specificity(y_test == 1, p["test"], threshold)
    assert block["auc"] == pytest.approx(roc_auc_score(y_test, p["test"]))
    assert json.loads(out["metrics"].read_text())["test"]["binary"] == block and logged["report"]["binary"] == block
    predictions = pd.read_csv(out["predictions"])
    assert list(predictions.columns) == ["image_id", "actual", "predicted", "p_malignant"]
    np.testing.assert_allclose(predictions["p_malignant"], p["test"])
    roc = pd.read_csv(out["roc"])
    assert list(roc.columns) == ["class", "fpr", "tpr"] and set(roc["class"]) == {POSITIVE}
    assert (out["plots"] / "roc.png").is_file()
    assert [(d.dataset.name, d.tags[-1].value) for d in logged["datasets"]] == [("ham10000-test", "test"),
                                                                             ("ham10000-val", "validation")]
