"""train-gan -> generate -> dedup stages on tiny made-up data with a real sqlite MLflow registry."""

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from conftest import make_ham_folder
from params_util import make_config
from dermagan.config import Config
from dermagan.config.schema import HAM10000_CLASSES
from dermagan.data.prepare import PrepareConfig, prepare_dataset
from dermagan.gan.runs import GENERATOR_MODEL
from dermagan.stages.dedup import run_dedup
from dermagan.stages.generate import run_generate
from dermagan.stages.train_gan import run_train_gan


def tiny_params() -> Config:
    return make_config({
        "prepare": {"image_size": 16, "min_image_side": 16},
        "train": {"device": "cpu"},
        "gan": {"classes": ["df", "vasc"], "amount": {"mode": "count", "value": 6}, "candidates_factor": 1.0,
                "latent_dim": 8, "ngf": 8, "ndf": 8, "d_dropout": 0.3, "loss": "hinge", "label_smoothing": 0.0,
                "lr_g": 2e-4, "lr_d": 2e-4, "beta1": 0.5, "beta2": 0.999, "batch_size": 4, "total_images": 16,
                "ema_half_life_images": 8,
                "diffaugment": "color,translation,cutout", "snapshot_every_images": 8,
                "checkpoint_every_images": 8, "grid_size": 4, "seed": 0, "generate_seed": 7,
                "experiment": "gan-test"},
        "dedup": {"hash_size": 8, "whash_image_scale": 16, "rule": "any", "thresholds": {"phash": 10, "whash": 10}},
    })


@pytest.fixture
def prepared(tmp_path, tracking) -> Path:
    raw = make_ham_folder(tmp_path / "raw", per_class=10)
    prepare_dataset(raw, tmp_path / "prepared", tmp_path / "eda", PrepareConfig(16, 0.2, 0.2, 0, HAM10000_CLASSES))
    return tmp_path / "prepared"


@pytest.mark.parametrize("method", ["dcgan", "cdcgan"])
def test_train_generate_dedup(prepared, tmp_path, method):
    params = tiny_params()
    results = run_train_gan(params, method, prepared, tmp_path / "gan", tmp_path / "ckpt")
    expected = ["df", "vasc"] if method == "dcgan" else ["conditional"]
    assert sorted(results) == expected and all((tmp_path / "gan" / f"{n}.pt").is_file() for n in expected)
    client = mlflow.MlflowClient()
    versions = client.search_model_versions(f"name='{GENERATOR_MODEL}'")
    assert len(versions) == len(expected) and all(v.tags["method"] == method for v in versions)
    run = client.get_run(results[expected[0]]["run_id"])
    assert "gan/d_loss" in run.data.metrics and run.data.metrics["gan/images_seen"] == 16
    assert not list((tmp_path / "ckpt").rglob("*.pt")), "checkpoints are removed after a finished run"

    manifest = run_generate(params, method, prepared, tmp_path / "gan", tmp_path / "synthetic")
    assert manifest["class"].value_counts().to_dict() == {"df": 6, "vasc": 6}
    again = run_generate(params, method, prepared, tmp_path / "gan", tmp_path / "synthetic2")
    first_png = manifest["file"].iloc[0]
    assert (tmp_path / "synthetic" / first_png).read_bytes() == (tmp_path / "synthetic2" / first_png).read_bytes()
    assert list(again["latent_index"]) == list(manifest["latent_index"])

    report = run_dedup(params, prepared, tmp_path / "synthetic", tmp_path / "dedup", tmp_path / "dedup_report")
    assert sum(report["counts"].values()) == 12 and report["holdout_near"] == 0
    kept = pd.read_csv(tmp_path / "dedup" / "manifest.csv")
    assert len(kept) == report["counts"]["kept"] and (kept["reason"] == "kept").all()
    assert (tmp_path / "dedup_report" / "nearest_train_distance.png").stat().st_size > 0


def test_calibrate_dedup_writes_report(prepared, tmp_path):
    from dermagan.stages.calibrate_dedup import run_calibrate_dedup

    summary = run_calibrate_dedup(tiny_params(), prepared, tmp_path / "calibration", sample=20)
    assert summary["images"] == 70 and summary["same_lesion_pairs"] > 0
    assert 0 <= summary["phash"]["other_lesion_flagged_at_threshold"] <= 1
    table = pd.read_csv(tmp_path / "calibration" / "thresholds.csv")
    assert set(table["kind"]) == {"phash", "whash"} and (tmp_path / "calibration" / "distances.png").is_file()


def test_dedup_drops_translations_near_holdout_but_refuses_sampled_ones(prepared, tmp_path):
    """A translation inherits its real source's near-duplicates among holdout photos: dropped and listed.
    A sampled GAN image near a holdout image means a leak: the stage fails and writes nothing."""
    from PIL import Image

    from dermagan.data.prepared import read_split
    from dermagan.errors import DermaganError

    params = tiny_params()
    val, train = read_split(prepared, "val"), read_split(prepared, "train")
    folder = tmp_path / "synthetic"
    (folder / "df").mkdir(parents=True)
    rows = []
    for i, image in enumerate([val.images[0], train.images[1], train.images[2]]):
        file = f"df/img_{i}.png"
        Image.fromarray(np.ascontiguousarray(np.rot90(image, 2)) if i else image).save(folder / file)
        rows.append({"file": file, "class": "df", "source": f"src_{i}"})
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    with pytest.raises(DermaganError, match="within the dedup threshold of a val/test image"):
        run_dedup(params, prepared, folder, tmp_path / "out_a", tmp_path / "rep_a", "dcgan")
    assert not (tmp_path / "out_a").exists()
    report = run_dedup(params, prepared, folder, tmp_path / "out_b", tmp_path / "rep_b", "cyclegan")
    assert report["counts"]["near_holdout"] >= 1 and {"file": "df/img_0.png", "source": "src_0"} in \
        report["dropped_near_holdout"]
    kept = pd.read_csv(tmp_path / "out_b" / "manifest.csv")
    assert "df/img_0.png" not in set(kept["file"])
