"""What a person sees in MLflow, in a real sqlite store: experiments open on their runs (experiment kind),
runs list the image sets they used (dataset inputs with content digests), registry versions carry the few
tags a reader needs and the run holds the rest."""

from __future__ import annotations

import re
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest

from dermagan.classify.models import create_classifier
from dermagan.classify.tracking import VERSION_TAGS, log_and_register, log_test_results
from dermagan.data.prepared import SplitArrays
from dermagan.tracking.datasets import (DIGEST_CHARS, dataset_input, dataset_name, log_datasets, split_sha256,
                                        training_inputs)
from dermagan.tracking.setup import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, configure

CLASSES = ("akiec", "df", "nv")
CONTEXT = "mlflow.data.context"


def split(n: int, seed: int = 0, prefix: str = "ISIC_") -> SplitArrays:
    rng = np.random.default_rng(seed)
    return SplitArrays(rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), np.arange(n) % len(CLASSES),
                       np.array([f"{prefix}{i:07d}" for i in range(n)]))


def inputs_of(run_id: str) -> dict[str, dict]:
    """name -> {digest, context, sha256, rows} of a run's dataset inputs."""
    found = {}
    for item in mlflow.MlflowClient().get_run(run_id).inputs.dataset_inputs:
        tags = {t.key: t.value for t in item.tags}
        found[item.dataset.name] = {"digest": item.dataset.digest, "context": tags.get(CONTEXT),
                                    "sha256": tags.get("sha256"), "profile": item.dataset.profile,
                                    "source": item.dataset.source}
    return found


# --- the experiment kind -----------------------------------------------------------------------------------

def test_configure_makes_experiments_of_the_machine_learning_kind(tracking):
    experiment = configure("views-new")
    assert mlflow.MlflowClient().get_experiment(experiment).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    assert EXPERIMENT_KIND == "custom_model_development"


def test_configure_tags_an_existing_experiment_and_keeps_a_kind_already_chosen(tracking):
    client = mlflow.MlflowClient()
    old = client.create_experiment("views-old")  # made before the kind was set (or by plain MLflow)
    assert EXPERIMENT_KIND_TAG not in client.get_experiment(old).tags
    assert configure("views-old") == old
    assert client.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    chosen = client.create_experiment("views-chosen", tags={EXPERIMENT_KIND_TAG: "classification"})
    configure("views-chosen")
    assert client.get_experiment(chosen).tags[EXPERIMENT_KIND_TAG] == "classification"


def test_the_installed_ui_knows_the_kind_and_opens_it_on_runs():
    """The UI bundle names the kind (``CUSTOM_MODEL_DEVELOPMENT="custom_model_development"``) among those it
    offers in its experiment-type selector; a wheel without the bundle skips."""
    build = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    bundles = sorted(build.glob("*.js")) if build.is_dir() else []
    if not bundles:
        pytest.skip("this mlflow has no UI bundle")
    text = next((t for t in (p.read_text(errors="ignore") for p in bundles) if '.GENAI_DEVELOPMENT="' in t), "")
    start = text.find('.GENAI_DEVELOPMENT="')
    kinds = dict(re.findall(r'\.([A-Z_]+)="([a-z_]*)"', text[start:start + 2000])) if start >= 0 else {}
    assert kinds.get("CUSTOM_MODEL_DEVELOPMENT") == EXPERIMENT_KIND and "GENAI_DEVELOPMENT" in kinds


def test_ui_prints_links_that_open_each_experiment_on_its_runs(tracking, tmp_path):
    """MLflow 3.17's UI lands on its GenAI overview until 'Model training' is picked in the browser (checked in
    Chromium); the links `dermagan ui` prints carry workflowType=machine_learning, which opens the runs table."""
    from dermagan.cli import runs_links

    configure("views-test")
    experiment = mlflow.get_experiment_by_name("views-test")
    lines = runs_links(tracking, "http://127.0.0.1:5000", ["views-test", "never-made"])
    assert lines[0] == (f"open http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs"
                        "?workflowType=machine_learning   (views-test)")
    assert len(lines) == 2 and "Model training" in lines[1]  # the missing experiment is left out
    missing = tmp_path / "none" / "mlflow.db"
    assert "no runs yet" in runs_links(f"sqlite:///{missing}", "http://h:1", ["views-test"])[0]
    assert not missing.exists()


# --- datasets ------------------------------------------------------------------------------------------------

def test_digest_follows_the_content():
    base = split(12)
    assert split_sha256(base) == split_sha256(split(12))
    relabelled = SplitArrays(base.images, base.labels[::-1].copy(), base.image_ids)
    renamed = SplitArrays(base.images, base.labels, np.array([f"X{i}" for i in range(12)]))
    pixel = base.images.copy()
    pixel[0, 0, 0, 0] ^= 1
    others = {split_sha256(s) for s in (relabelled, renamed, SplitArrays(pixel, base.labels, base.image_ids))}
    assert len(others) == 3 and split_sha256(base) not in others
    assert dataset_name("HAM10000", "train") == "ham10000-train" and dataset_name("My Clinic", "val") == "my-clinic-val"


def test_train_run_lists_train_extras_and_val_with_digests(tracking):
    configure("views-datasets")
    real, extras, val = split(20), split(5, seed=1, prefix="stgan/"), split(8, seed=2)
    train = SplitArrays(np.concatenate([real.images, extras.images]), np.concatenate([real.labels, extras.labels]),
                        np.concatenate([real.image_ids, extras.image_ids]))
    with mlflow.start_run() as run:
        inputs = training_inputs("HAM10000", CLASSES, train, 5, "stgan/dedup", val, "artifacts/prepared",
                                 "artifacts/trainsets/x")
        log_datasets(inputs)
        log_datasets(inputs)  # a resumed run logs them again: no duplicates
    found = inputs_of(run.info.run_id)
    assert set(found) == {"ham10000-train", "extra-stgan/dedup", "ham10000-val"}
    assert [found[n]["context"] for n in ("ham10000-train", "extra-stgan/dedup", "ham10000-val")] == [
        "training", "training", "validation"]
    assert found["ham10000-train"]["sha256"] == split_sha256(real)
    assert found["ham10000-train"]["digest"] == split_sha256(real)[:DIGEST_CHARS]
    assert found["extra-stgan/dedup"]["sha256"] == split_sha256(extras)
    assert found["ham10000-val"]["digest"] == split_sha256(val)[:DIGEST_CHARS]
    assert '"num_rows": 20' in found["ham10000-train"]["profile"] and "prepared/train.npz" in found[
        "ham10000-train"]["source"]
    assert len(mlflow.MlflowClient().get_run(run.info.run_id).inputs.dataset_inputs) == 3
    without = training_inputs("HAM10000", CLASSES, real, 0, "none", val, "p", None)
    assert [i.dataset.name for i in without] == ["ham10000-train", "ham10000-val"]


def test_datasets_logged_through_the_client_leave_a_finished_run_as_it_was(tracking):
    configure("views-client")
    with mlflow.start_run() as run:
        pass
    before = mlflow.MlflowClient().get_run(run.info.run_id).info
    time.sleep(0.01)
    log_datasets([dataset_input("ham10000-test", split(6), CLASSES, "p/test.npz", "test"),
                  dataset_input("clinic", split(4, 3), CLASSES, "e/clinic.npz", "external")], run.info.run_id)
    after = mlflow.MlflowClient().get_run(run.info.run_id).info
    assert (after.status, after.end_time) == (before.status, before.end_time) == ("FINISHED", before.end_time)
    assert {n: d["context"] for n, d in inputs_of(run.info.run_id).items()} == {"ham10000-test": "test",
                                                                               "clinic": "external"}


# --- registry version tags -----------------------------------------------------------------------------------

RECIPE = {"backbone": "simple_cnn", "tta": "hflip", "augment": True, "class_weight_power": 0.5,
          "sampler": "shuffle", "pretrained": None}


def report() -> dict:
    per_class = {c: {"recall": r, "support": 10} for c, r in zip(CLASSES, (0.5, 0.25, 0.9))}
    return {"bal_acc": 0.55, "bal_acc_ci_low": 0.48, "bal_acc_ci_high": 0.61, "macro_f1": 0.5, "n_images": 30,
            "per_class": per_class, "calibration": {"ece": 0.04, "temperature": 1.3},
            "binary": {"auc": 0.8, "threshold": 0.3}}


def test_version_keeps_what_a_reader_needs_and_the_run_the_rest(tracking, tmp_path):
    experiment = "views-registry"
    configure(experiment)
    model = create_classifier("simple_cnn", CLASSES, 16, tta="hflip")
    model.temperature.fill_(1.3)
    with mlflow.start_run() as run:
        registered = log_and_register(model, "views-classifier", "effnet_gan", 3, "stgan/dedup", 1000, RECIPE, 16,
                                      0.61234, min_side=16)
    client = mlflow.MlflowClient()
    version = client.get_model_version("views-classifier", registered["version"])
    assert set(version.tags) == set(VERSION_TAGS)
    assert version.tags == {"arm": "effnet_gan", "seed": "3", "val_bal_acc": "0.6123",
                            "trained_on": "real train + 1000 extra (stgan/dedup)"}
    assert client.get_run(run.info.run_id).data.tags["temperature"] == "1.3000"
    plots = tmp_path / "plots"
    plots.mkdir()
    log_test_results(experiment, {**registered, "run_id": run.info.run_id}, report(), plots, {})
    tags = client.get_model_version("views-classifier", registered["version"]).tags
    assert set(tags) == {*VERSION_TAGS, "test_bal_acc", "test_bal_acc_ci"}
    assert tags["test_bal_acc"] == "0.5500" and tags["test_bal_acc_ci"] == "[0.4800, 0.6100]"
    metrics = client.get_run(run.info.run_id).data.metrics  # what left the version is on the run
    assert metrics["test/recall_df"] == 0.25 and metrics["test/macro_f1"] == 0.5 and metrics["test/ece"] == 0.04
    assert metrics["test/auc"] == 0.8
