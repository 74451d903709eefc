"""The fidelity stage on tiny made-up real and synthetic sets, logging into a throw-away MLflow store."""

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import textured_image
from params_util import make_config
from dermagan.config import Config
from dermagan.config.schema import HAM10000_CLASSES as CLASSES
from dermagan.data.prepared import SplitArrays, write_split
from dermagan.evaluate.fidelity import FEATURE_SPACE, frechet_distance, frechet_distance_nuclear, safe_fidelity_metrics
from dermagan.stages.fidelity import run_fidelity
from dermagan.tracking.setup import configure

AUGMENTED = ["df", "vasc"]
SIZE = 32


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny batches: on a busy CPU, syncing threads costs far more than the work (1 s vs 0.04 s a batch)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_params() -> Config:
    return make_config({"gan": {"classes": AUGMENTED, "experiment": "gan-test"}, "train": {"device": "cpu"},
                        "fidelity": {"feature_size": 32, "knn_k": 3, "seed": 0, "grid_images": 4,
                                     "nearest_examples": 2,
                                     "cas": {"epochs": 1, "batch_size": 8, "lr": 0.002, "seeds": [0]},
                                     "two_sample": {"folds": 3, "bootstrap_samples": 20}}})


def make_encoder(prepared: Path, out: Path) -> Path:
    """A one-epoch domain encoder on the tiny train split (what the domain_encoder stage writes)."""
    from dermagan.data.prepared import read_split
    from dermagan.fidelity import save_encoder, train_domain_encoder

    train = read_split(prepared, "train")
    model, _ = train_domain_encoder(train.images, train.labels, len(CLASSES), epochs=1, batch_size=8, progress=False)
    save_encoder(model, out / "encoder.pt")
    return out


def make_prepared(root: Path, per_class: int = 5) -> Path:
    """train/val/test splits with ``per_class`` textured images of every class."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for split in ("train", "val", "test"):
        labels = np.repeat(np.arange(len(CLASSES)), per_class)
        images = np.stack([textured_image(rng, SIZE, SIZE) for _ in labels])
        ids = np.array([f"{split}_{i}" for i in range(len(labels))])
        write_split(root, split, SplitArrays(images, labels, ids))
    return root


def make_synthetic(root: Path, method: str, per_class: int = 6, kept: int = 4) -> pd.DataFrame:
    """generated/ and dedup/ folders with PNGs and manifests; returns the dedup decisions table."""
    rng = np.random.default_rng(1)
    rows = []
    for dx in AUGMENTED:
        for i in range(per_class):
            file = f"{dx}/{method}_{dx}_{i:05d}.png"
            reason = "kept" if i < kept else ("memorised_train" if i == kept else "near_duplicate_synthetic")
            rows.append({"file": file, "class": dx, "generator_version": "1", "seed": 7, "latent_index": i,
                         "reason": reason, "nearest_train_phash": int(rng.integers(0, 30)),
                         "nearest_train_whash": int(rng.integers(0, 30))})
            image = Image.fromarray(textured_image(rng, SIZE, SIZE))
            for folder in ("generated", "dedup") if reason == "kept" else ("generated",):
                (root / folder / dx).mkdir(parents=True, exist_ok=True)
                image.save(root / folder / file)
    decisions = pd.DataFrame(rows)
    (root / "dedup").mkdir(exist_ok=True)
    decisions.drop(columns=["reason", "nearest_train_phash", "nearest_train_whash"]).to_csv(
        root / "generated" / "manifest.csv", index=False)
    decisions[decisions["reason"] == "kept"].to_csv(root / "dedup" / "manifest.csv", index=False)
    return decisions


def make_gan_dir(root: Path, method: str, known_runs: bool) -> dict:
    """generators.json whose run ids are real runs in the test store (or made up)."""
    configure("gan-test")
    names = AUGMENTED if method == "dcgan" else ["conditional"]
    index = {}
    for name in names:
        if known_runs:
            with mlflow.start_run(run_name=f"{method}-{name}") as run:
                run_id = run.info.run_id
        else:
            run_id = "0" * 32
        index[name] = {"run_id": run_id, "version": "1", "classes": [name] if method == "dcgan" else AUGMENTED,
                       "images_seen": 16, "wall_seconds": 1.0}
    root.mkdir(parents=True)
    (root / "generators.json").write_text(json.dumps(index))
    return index


def run_stage(tmp_path: Path, method: str, known_runs: bool = True, kept: int = 4) -> tuple[dict, dict]:
    prepared = make_prepared(tmp_path / "prepared")
    decisions = make_synthetic(tmp_path / "synthetic", method, kept=kept)
    (tmp_path / "dedup_report").mkdir()
    decisions.to_csv(tmp_path / "dedup_report" / "decisions.csv", index=False)
    index = make_gan_dir(tmp_path / "gan", method, known_runs)
    encoder = make_encoder(prepared, tmp_path / "encoder")
    document = run_fidelity(tiny_params(), method, prepared, tmp_path / "synthetic", tmp_path / "dedup_report",
                            tmp_path / "gan", tmp_path / "metrics" / "fidelity.json", tmp_path / "plots",
                            domain_encoder=encoder)
    return document, index


@pytest.mark.parametrize("method", ["dcgan", "cdcgan"])
def test_fidelity_stage_writes_metrics_figures_and_logs(tmp_path, tracking, method):
    document, index = run_stage(tmp_path, method)
    text = (tmp_path / "metrics" / "fidelity.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    saved = json.loads(text)
    assert saved == document and saved["method"] == method and saved["feature_space"] == FEATURE_SPACE
    assert sorted(saved["classes"]) == AUGMENTED
    df = saved["classes"]["df"]
    assert df["dedup"]["n_real"] == 5 and df["dedup"]["n_fake"] == 4 and df["generated"]["n_fake"] == 6
    assert df["real_val_reference"]["n_fake"] == 5 and df["dedup"]["knn_k"] == 3
    assert all(np.isfinite(df[s]["fid_effnetlite0"]) for s in ("dedup", "generated", "real_val_reference"))
    assert df["n_kept"] == 4 and df["n_removed_by_reason"] == {"near_duplicate_synthetic": 1, "memorised_train": 1,
                                                          "near_holdout": 0}
    assert df["nearest_train_phash_min"] <= df["nearest_train_phash_p5"] <= df["nearest_train_phash_median"]
    for name in ("real_vs_synthetic.png", "nearest_train_distance.png", "nearest_train_examples.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 0
    # the domain space: FD/KID/k-NN of the kept set and the real-val yardstick, two-sample AUC, memorisation
    assert saved["domain_space"].startswith("domain-cnn")
    assert np.isfinite(df["domain_dedup"]["fd_domain"]) and np.isfinite(df["domain_real_val_reference"]["fd_domain"])
    assert 0 <= df["two_sample"]["auc"] <= 1 and df["two_sample"]["n_real"] == 5
    assert df["memorisation_domain"]["n_synthetic"] == 4 and df["memorisation_domain"]["n_val"] == 5
    assert 0 <= saved["cas"]["cas_synthetic"] <= 1 and saved["cas"]["n_per_class"] == {"df": 4, "vasc": 4}
    domain = pd.read_csv(tmp_path / "plots" / "fidelity_domain.csv")
    assert list(domain["class"]) == AUGMENTED and "fd_domain_yardstick" in domain
    table = pd.read_csv(tmp_path / "plots" / "fidelity.csv")
    assert len(table) == 2 * 3 and set(table["set"]) == {"dedup", "generated", "real_val_reference"}

    client = mlflow.MlflowClient()
    run_id = index["df" if method == "dcgan" else "conditional"]["run_id"]
    metrics = client.get_run(run_id).data.metrics
    infix = "" if method == "dcgan" else "df/"
    for key in ("fidelity/", "fidelity_generated/", "fidelity_reference/"):
        assert f"{key}{infix}fid_effnetlite0" in metrics
    assert metrics[f"fidelity/{infix}n_kept"] == 4
    assert f"fidelity/{infix}fd_domain" in metrics and f"fidelity_reference/{infix}fd_domain" in metrics
    assert f"two_sample/{infix}auc" in metrics and "cas/cas_synthetic" in metrics
    assert sorted(a.path for a in client.list_artifacts(run_id, "fidelity")) == [
        "fidelity/nearest_train_distance.png", "fidelity/nearest_train_examples.png",
        "fidelity/real_vs_synthetic.png"]


def test_fidelity_stage_survives_unknown_run_and_a_tiny_kept_set(tmp_path, tracking, capsys):
    document, _ = run_stage(tmp_path, "dcgan", known_runs=False, kept=1)
    assert "not found" in capsys.readouterr().out
    saved = json.loads((tmp_path / "metrics" / "fidelity.json").read_text())
    assert saved == document and sorted(saved["classes"]) == AUGMENTED
    dedup = saved["classes"]["vasc"]["dedup"]
    assert dedup["n_fake"] == 1 and dedup["fid_effnetlite0"] is None and "at least 2" in dedup["skipped_reason"]
    assert saved["classes"]["vasc"]["generated"]["fid_effnetlite0"] is not None
    assert (tmp_path / "plots" / "real_vs_synthetic.png").is_file()
    assert "skipped_reason" in saved["classes"]["vasc"]["two_sample"]  # 1 kept image: no two-sample test


def test_fidelity_stage_survives_a_class_with_no_kept_images(tmp_path, tracking):
    document, _ = run_stage(tmp_path, "dcgan", kept=0)
    vasc = document["classes"]["vasc"]
    assert vasc["domain_dedup"]["n_fake"] == 0 and vasc["domain_dedup"]["fd_domain"] is None
    assert "skipped_reason" in vasc["two_sample"] and "skipped_reason" in document["cas"]
    assert (tmp_path / "plots" / "nearest_train_examples.png").stat().st_size > 0


def test_fidelity_stage_names_a_missing_domain_encoder(tmp_path, tracking):
    prepared = make_prepared(tmp_path / "prepared")
    decisions = make_synthetic(tmp_path / "synthetic", "dcgan")
    (tmp_path / "dedup_report").mkdir()
    decisions.to_csv(tmp_path / "dedup_report" / "decisions.csv", index=False)
    make_gan_dir(tmp_path / "gan", "dcgan", True)
    with pytest.raises(Exception, match="domain encoder not found: .*encoder.pt"):
        run_fidelity(tiny_params(), "dcgan", prepared, tmp_path / "synthetic", tmp_path / "dedup_report",
                     tmp_path / "gan", tmp_path / "metrics" / "f.json", tmp_path / "plots",
                     domain_encoder=tmp_path / "nowhere")
    assert not (tmp_path / "metrics" / "f.json").exists() and not (tmp_path / "plots").exists()


def test_safe_fidelity_metrics_on_tiny_sets():
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(3, 8)), rng.normal(size=(1, 8))
    skipped = safe_fidelity_metrics(real, fake, k=3)
    assert np.isnan(skipped["fid_effnetlite0"]) and skipped["skipped_reason"] and skipped["n_fake"] == 1
    small = safe_fidelity_metrics(real, rng.normal(size=(2, 8)), k=3)
    assert small["knn_k"] == 1 and small["skipped_reason"] is None and np.isfinite(small["kid_effnetlite0"])


def test_nuclear_frechet_distance_matches_sqrtm():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(60, 12)), rng.normal(0.4, 1.3, size=(40, 12))
    assert frechet_distance_nuclear(a, b) == pytest.approx(frechet_distance(a, b), rel=1e-8)
    assert frechet_distance_nuclear(a, a) == pytest.approx(0, abs=1e-8)
