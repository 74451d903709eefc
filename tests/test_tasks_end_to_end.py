"""The real pipeline (`dvc repro compare ensemble`) on tasks other than the 7 HAM10000 labels, tiny settings.

Two temporary projects with the project's dvc.yaml and shrunk params on a small real subset
(the set-up of test_end_to_end.py):

* a 3-class task with made-up labels (``alpha``, ``beta``, ``gamma``) merged from the 7 HAM10000
  labels by ``data.label_map``, with a real-only, an oversample and a CycleGAN alpha -> gamma arm:
  every output names the task's labels and no HAM10000 label;
* a binary task (``other`` vs ``mel``, ``data.positive: mel``) with two CycleGAN other -> mel
  variants (``gan.cyclegan.variants``): ROC AUC, the val-chosen threshold, verdicts on auc with
  their minimum detectable difference, and long-format ROC CSVs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from conftest import REAL_DATA, REPO
from test_end_to_end import BIN, real_subset, run, shrunk_params

pytestmark = [pytest.mark.slow, pytest.mark.realdata]
HAM10000 = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
CNN = {"backbone": "simple_cnn", "pretrained": None, "augment": False, "class_weight_power": 0.0}
TARGETS = ("compare", "ensemble")


def task_params(data: dict, gan_classes: list[str], source_class: str, arms: dict, methods: list[str],
                variants: dict | None = None, verdict_classes: list[str] | None = None,
                max_class_share: float = 1.0) -> tuple[dict, dict, dict]:
    """test_end_to_end's shrunk params, turned into another task: its labels, GAN classes and arms."""
    params, tuned, _ = shrunk_params()
    params["data"].update(data)
    params["validate"]["max_class_share"] = max_class_share
    params["evaluate"]["verdict_classes"] = verdict_classes
    params["arms"] = arms
    params["ensemble"]["arms"] = None  # every arm
    gan = params["gan"]
    gan.update(methods=methods, dcgan_methods=[], classes=gan_classes)
    # train_stgan@<class> runs whatever the arms are (validate_augmented reads artifacts/gan/stgan): keep it tiny
    gan["stgan"]["per_class"] = {dx: {"total_images": 16} for dx in gan_classes}
    cyclegan = gan["cyclegan"]
    cyclegan["classes"] = list(gan_classes)
    cyclegan["net"]["source_class"] = source_class
    cyclegan["per_class"] = {dx: {"total_images": 8} for dx in gan_classes}
    cyclegan["variants"] = variants or {}
    # every gan.classes class needs its (possibly empty) gan.stgan_tuned entry: train_stgan@<class> lists it
    tuned_gan = {"gan": {"stgan_tuned": {dx: {} for dx in gan_classes}, "amount_tuned": {}}}
    return params, tuned, tuned_gan


def reproduce(root: Path, params: dict, tuned: dict, tuned_gan: dict) -> tuple[Path, dict, str, float]:
    """A DVC project in ``root`` (src, dvc.yaml, the given params, the real subset); `dvc repro compare ensemble`."""
    if not (REAL_DATA / "metadata.csv").is_file():
        pytest.skip(f"real HAM10000 data not found at {REAL_DATA}")
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / params["tuned_params"]).parent.mkdir(parents=True, exist_ok=True)
    (root / params["tuned_params"]).write_text(yaml.safe_dump(tuned, sort_keys=False))
    (root / params["tuned_gan_params"]).write_text(yaml.safe_dump(tuned_gan, sort_keys=False))
    real_subset(REAL_DATA, root / "data")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "GX_ANALYTICS_ENABLED": "False",
           "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlruns' / 'mlflow.db'}",
           # the stages import the copy in root/src (the code DVC hashes), not the editable install's tree,
           # so an edit of the repository's src/ during the run cannot change the code mid-pipeline
           "PYTHONPATH": os.pathsep.join([str(root / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    run(["dvc", "init", "--no-scm", "-q"], root, env)
    start = time.monotonic()
    done = run(["dvc", "repro", *TARGETS], root, env)
    return root, env, done.stdout, time.monotonic() - start


def tokens(text: str) -> set[str]:
    """The lower-case words of ``text`` (split at anything but letters and digits): recall_gamma_mean ->
    {recall, gamma, mean}."""
    return set(re.split(r"[^a-z0-9]+", text.lower())) - {""}


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


# --- 1. three made-up labels merged from the seven HAM10000 ones ------------------------------------------------

THREE = ("alpha", "beta", "gamma")
MERGE = {"nv": "alpha", "bkl": "alpha", "mel": "beta", "bcc": "beta", "akiec": "beta", "df": "gamma",
         "vasc": "gamma"}
THREE_ARMS = {"cnn": {**CNN, "extra": None}, "cnn_ros": {**CNN, "extra": "oversample"},
              "cnn_cyclegan": {**CNN, "extra": "cyclegan/generated"}}  # tiny GANs: dedup may keep too few


@pytest.fixture(scope="module")
def three_class(tmp_path_factory):
    params, tuned, tuned_gan = task_params({"classes": list(THREE), "label_map": MERGE, "positive": None},
                                           ["gamma"], "alpha", THREE_ARMS, ["cyclegan"])
    return reproduce(tmp_path_factory.mktemp("three_class"), params, tuned, tuned_gan)


def test_three_class_prepare_and_validation_use_the_task_labels(three_class):
    root, _, stdout, seconds = three_class
    print(f"three-class `dvc repro {' '.join(TARGETS)}`: {seconds:.0f} s")
    assert read_json(root / "artifacts" / "prepared" / "classes.json")["classes"] == list(THREE)
    splits = pd.read_csv(root / "artifacts" / "prepared" / "splits.csv")
    assert set(splits["dx"]) == set(THREE)
    assert (splits["dx_raw"].map(MERGE) == splits["dx"]).all()  # every raw label merged as label_map says
    for split in ("train", "val", "test"):
        assert set(splits.loc[splits["split"] == split, "dx"]) == set(THREE)
    summary = read_json(root / "reports" / "validation" / "summary.json")
    assert summary["success"] and not summary["failures"]
    assert "PASSED" in stdout
    balance = pd.read_csv(root / "reports" / "validation" / "class_balance.csv")
    assert not tokens(balance.to_csv(index=False)) & set(HAM10000)


def test_three_class_arms_metrics_and_cyclegan_translations(three_class):
    root, _, _, _ = three_class
    for arm in THREE_ARMS:
        doc = read_json(root / "metrics" / "runs" / f"{arm}-s0.json")
        assert set(doc["test"]["per_class"]) == set(THREE)
        assert 0 <= doc["test"]["bal_acc"] <= 1 and "binary" not in doc["test"]
        predictions = pd.read_csv(root / "reports" / "predictions" / f"{arm}-s0.csv")
        assert list(predictions.columns) == ["image_id", "actual", "predicted"]
        assert set(predictions["actual"]) == set(THREE) and set(predictions["predicted"]) <= set(THREE)
        roc = pd.read_csv(root / "reports" / "roc" / f"{arm}-s0.csv")
        assert list(roc.columns) == ["class", "fpr", "tpr"] and set(roc["class"]) <= set(THREE)
    # the CycleGAN arm: alpha (nv + bkl) train images translated into gamma
    manifest = pd.read_csv(root / "artifacts" / "synthetic" / "cyclegan" / "generated" / "manifest.csv")
    assert set(manifest["class"]) == {"gamma"}
    splits = pd.read_csv(root / "artifacts" / "prepared" / "splits.csv").set_index("image_id")
    sources = splits.loc[manifest["source"]]
    assert set(sources["split"]) == {"train"} and set(sources["dx"]) == {"alpha"}
    assert set(sources["dx_raw"]) <= {"nv", "bkl"}
    extra = pd.read_csv(root / "artifacts" / "trainsets" / "cnn_cyclegan" / "extra.csv")
    assert extra["class"].value_counts().to_dict() == {"gamma": 4}
    ros = pd.read_csv(root / "artifacts" / "trainsets" / "cnn_ros" / "extra.csv")
    assert set(ros["class"]) == {"gamma"} and ros["source"].str.startswith("copy:").all()
    saved = torch.load(root / "artifacts" / "gan" / "cyclegan" / "gamma" / "gamma.pt", map_location="cpu",
                       weights_only=True)
    assert saved["source_class"] == "alpha" and saved["classes"] == ["gamma"]


def test_three_class_compare_and_ensemble_name_only_the_task_labels(three_class):
    root, _, _, _ = three_class
    summary = read_json(root / "metrics" / "compare.json")
    assert summary == read_json(root / "reports" / "compare" / "summary.json")
    assert set(summary["arms"]) == set(THREE_ARMS)
    # verdict_classes null on a multi-class task: every class's recall is judged
    assert set(summary["gan_vs_best"]) == {"cnn_cyclegan"}
    judged = summary["gan_vs_best"]["cnn_cyclegan"]
    assert set(judged) == {"bal_acc", *(f"recall_{c}" for c in THREE)}
    assert all("mdd" in v and v["best_non_gan_arm"] in {"cnn", "cnn_ros"} for v in judged.values())
    assert set(summary["test_counts"]) == set(THREE) and "binary" not in summary
    for stats in summary["arms"].values():
        assert {k for k in stats if k.startswith("recall_")} >= {f"recall_{c}_mean" for c in THREE}
    assert not tokens(json.dumps(summary)) & set(HAM10000)
    verdicts = pd.read_csv(root / "reports" / "compare" / "gan_vs_best.csv")
    assert set(verdicts["metric"]) == set(judged)
    ensemble = read_json(root / "metrics" / "ensemble.json")
    assert ensemble["classes"] == list(THREE) and sorted(ensemble["arms"]) == sorted(THREE_ARMS)
    assert ensemble["registered"]["combiner"] in ensemble["combiners"]
    written = sorted((root / "reports" / "ensemble_predictions").glob("ensemble_*-s0.csv"))
    assert written
    for path in written:
        frame = pd.read_csv(path)
        assert set(frame["actual"]) == set(THREE) and set(frame["predicted"]) <= set(THREE)
        assert not tokens(" ".join(frame.columns)) & set(HAM10000)


# --- 2. melanoma vs the rest, two CycleGAN variants --------------------------------------------------------------

BINARY_ARMS = {"cnn": {**CNN, "extra": None}, "cnn_ros": {**CNN, "extra": "oversample"},
               "cnn_cyclegan": {**CNN, "extra": "cyclegan/generated"},
               "cnn_cyclegan_nols": {**CNN, "extra": "cyclegan_nols/generated"}}
GAN_ARMS = ("cnn_cyclegan", "cnn_cyclegan_nols")


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    data = {"classes": ["other", "mel"], "label_map": {dx: "other" for dx in HAM10000 if dx != "mel"},
            "positive": "mel"}
    params, tuned, tuned_gan = task_params(data, ["mel"], "other", BINARY_ARMS, ["cyclegan", "cyclegan_nols"],
                                           variants={"cyclegan_nols": {"label_smoothing": 0.0}},
                                           verdict_classes=["mel"])
    params["gan"]["cyclegan"]["net"]["label_smoothing"] = 0.1
    return reproduce(tmp_path_factory.mktemp("binary"), params, tuned, tuned_gan)


def test_binary_metrics_hold_auc_and_a_threshold_chosen_on_val(binary):
    root, _, stdout, seconds = binary
    print(f"binary `dvc repro {' '.join(TARGETS)}`: {seconds:.0f} s")
    assert read_json(root / "artifacts" / "prepared" / "classes.json")["classes"] == ["other", "mel"]
    assert read_json(root / "reports" / "validation" / "summary.json")["success"] and "PASSED" in stdout
    splits = pd.read_csv(root / "artifacts" / "prepared" / "splits.csv")
    n_val = int((splits["split"] == "val").sum())
    n_test_mel = int(((splits["split"] == "test") & (splits["dx"] == "mel")).sum())
    for arm in BINARY_ARMS:
        test = read_json(root / "metrics" / "runs" / f"{arm}-s0.json")["test"]
        block = test["binary"]
        assert block["positive"] == "mel" and block["n_positive"] == n_test_mel > 0
        assert 0 <= block["auc"] <= 1 and block["auc_ci_low"] <= block["auc_ci_high"]
        assert block["threshold_from"] == "val" and block["n_val"] == n_val
        assert block["target_specificity"] == 0.9
        assert block["val_specificity"] >= block["target_specificity"]  # the threshold was set on val for this
        for key in ("sensitivity", "specificity"):
            assert 0 <= block[key] <= 1 and block[f"{key}_ci_low"] <= block[f"{key}_ci_high"]
        assert block["auc"] == pytest.approx(test["per_class"]["mel"]["auc"])
        predictions = pd.read_csv(root / "reports" / "predictions" / f"{arm}-s0.csv")
        assert list(predictions.columns) == ["image_id", "actual", "predicted", "p_mel"]
        assert predictions["p_mel"].between(0, 1).all()
        # the threshold applied to the test scores gives the reported sensitivity and specificity
        called, is_mel = predictions["p_mel"] >= block["threshold"], predictions["actual"] == "mel"
        assert block["sensitivity"] == pytest.approx(called[is_mel].mean())
        assert block["specificity"] == pytest.approx((~called[~is_mel]).mean())
        roc = pd.read_csv(root / "reports" / "roc" / f"{arm}-s0.csv")
        assert list(roc.columns) == ["class", "fpr", "tpr"] and set(roc["class"]) == {"mel"}
        assert roc["fpr"].between(0, 1).all() and roc["tpr"].between(0, 1).all()


def test_binary_compare_judges_auc_with_its_minimum_detectable_difference(binary):
    root, _, _, _ = binary
    summary = read_json(root / "metrics" / "compare.json")
    assert set(summary["arms"]) == set(BINARY_ARMS)
    assert summary["binary"]["positive"] == "mel" and summary["binary"]["target_specificity"] == 0.9
    assert set(summary["gan_vs_best"]) == set(GAN_ARMS)
    for arm in GAN_ARMS:
        judged = summary["gan_vs_best"][arm]
        assert set(judged) == {"bal_acc", "auc", "sens_at_spec", "recall_mel"}
        auc = judged["auc"]
        assert "mdd" in auc and auc["verdict"] in {"better", "worse", "no difference shown"}
        assert auc["best_non_gan_arm"] in {"cnn", "cnn_ros"}
        assert auc["mdd"] is None or auc["mdd"] >= 0  # 0 when both arms score every resample alike
    for stats in summary["arms"].values():
        assert 0 <= stats["auc_mean"] <= 1
    roc = pd.read_csv(root / "reports" / "compare" / "roc.csv")
    assert list(roc.columns) == ["arm", "fpr", "tpr"] and set(roc["arm"]) == set(BINARY_ARMS)
    assert (root / "reports" / "compare" / "roc.png").stat().st_size > 0
    ensemble = read_json(root / "metrics" / "ensemble.json")
    assert ensemble["classes"] == ["other", "mel"] and sorted(ensemble["arms"]) == sorted(BINARY_ARMS)


def test_binary_cyclegan_variants_train_with_their_own_settings(binary):
    root, _, _, _ = binary
    smoothing = {}
    for method in ("cyclegan", "cyclegan_nols"):
        folder = root / "artifacts" / "gan" / method / "mel"
        index = read_json(folder / "generators.json")
        assert set(index) == {"mel"} and index["mel"]["file"] == "mel.pt"
        saved = torch.load(folder / "mel.pt", map_location="cpu", weights_only=True)
        assert saved["source_class"] == "other" and saved["classes"] == ["mel"]
        smoothing[method] = saved["config"]["label_smoothing"]
        manifest = pd.read_csv(root / "artifacts" / "synthetic" / method / "generated" / "manifest.csv")
        assert set(manifest["class"]) == {"mel"} and len(manifest) > 0
    assert smoothing == {"cyclegan": 0.1, "cyclegan_nols": 0.0}
    for arm, method in zip(GAN_ARMS, ("cyclegan", "cyclegan_nols")):
        extra = pd.read_csv(root / "artifacts" / "trainsets" / arm / "extra.csv")
        assert extra["class"].value_counts().to_dict() == {"mel": 4}
        kept = set(pd.read_csv(root / "artifacts" / "synthetic" / method / "generated" / "manifest.csv")["file"])
        assert set(extra["source"]) <= kept
