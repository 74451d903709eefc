"""Model cards are generated from the evaluate document and say what the model is not for."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import torch

from dermagan.classify.model_card import render_model_card
from dermagan.classify.models import create_classifier
from dermagan.classify.pyfunc_model import log_classifier
from dermagan.classify.tracking import log_model_card
from dermagan.config.schema import DatasetInfo
from dermagan.data.splits import split_description
from dermagan.tracking.setup import configure

CLASSES = ("akiec", "df", "nv")


def document(external: bool = False) -> dict:
    per_class = {c: {"recall": r, "recall_ci_low": r - 0.1, "recall_ci_high": min(1.0, r + 0.1), "support": n}
                 for c, r, n in zip(CLASSES, (0.5, 0.25, 0.9), (40, 8, 900))}
    test = {"per_class": per_class, "bal_acc": 0.55, "bal_acc_ci_low": 0.48, "bal_acc_ci_high": 0.61,
            "n_images": 948, "ci_level": 0.95, "bma_excluded": ["df"],
            "calibration": {"ece": 0.041, "temperature": 1.32}}
    doc = {"arm": "effnet_ros", "seed": 0, "test": test}
    if external:
        doc["external"] = {"rosendahl": {**test, "n_images": 120}}
    return doc


MODEL = {"registered_model": "dermagan-classifier", "version": "7", "arm": "effnet_ros", "extra": "ros",
         "backbone": "efficientnet_lite0", "tta": "hflip", "image_size": 64, "classes": list(CLASSES), "run_id": "r1"}


def test_card_states_use_licence_results_and_limits():
    dataset = DatasetInfo().model_dump()
    card = render_model_card(document(external=True), MODEL, dataset, split_description("lesion", (), 0.15, 0.15, 42))
    assert "Not a medical device and not for diagnosis" in card
    assert "CC BY-NC 4.0" in card and "non-commercial use only" in card and "10.1038/sdata.2018.161" in card
    assert "lesion-disjoint" in card and "64 x 64" in card and "hflip" in card
    assert "| df | 8 | 25.0% | [15.0%, 35.0%] |" in card
    assert "balanced accuracy (mean recall): 55.0% [48.0%, 61.0%]" in card and "leaves out df" in card
    assert "temperature 1.320" in card and "External set: rosendahl" in card
    assert "skin type" in card and "ros" in card


def test_card_without_the_non_commercial_term_for_other_data():
    dataset = DatasetInfo(name="MyClinic", licence="CC BY 4.0", citation="Us, 2026", non_commercial=False)
    card = render_model_card(document(), MODEL, dataset.model_dump(), split_description("source", ("b",), 0.1, 0.1, 1))
    assert "MyClinic" in card and "non-commercial use only" not in card and "domain shift" in card
    assert "External set" not in card


def test_log_model_card_sets_description_and_artifact(tracking: str, tmp_path: Path):
    """Backbone, TTA and image size come from the version's MLmodel metadata, the extras from the run's tag:
    the version carries no such tags."""
    model = create_classifier("simple_cnn", CLASSES, 32)
    configure("tests")  # not an experiment id an earlier test left active
    with mlflow.start_run() as run:
        mlflow.set_tag("extra", "ros")
        info = log_classifier(model, "simple_cnn", "flips", 32, "card-test", min_side=16)
    client = mlflow.MlflowClient()
    version = info.registered_model_version
    client.set_model_version_tag("card-test", version, "arm", "effnet_ros")
    card = log_model_card({"registered_model": "card-test", "version": version, "run_id": run.info.run_id,
                           "arm": "effnet_ros"}, document(), DatasetInfo().model_dump(), "lesion-disjoint split")
    assert client.get_model_version("card-test", version).description == card
    assert "simple_cnn classifier" in card and "32 x 32" in card and "Test-time augmentation: flips" in card
    assert "Augmentation: ros (arm `effnet_ros`)" in card
    path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="model_card.md",
                                               dst_path=str(tmp_path / "dl"))
    assert Path(path).read_text() == card and "card-test version" in card
