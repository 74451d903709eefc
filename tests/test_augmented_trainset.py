"""Extra training images per arm: parsing, oversampling, synthetic selection, GX validation, training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import make_ham_folder
from dermagan.config.schema import HAM10000_CLASSES as CLASSES
from dermagan.data.prepare import PrepareConfig, prepare_dataset
from dermagan.data.prepared import read_split
from dermagan.data.trainset import parse_extra, read_extras, training_set, with_extras
from dermagan.errors import DermaganError
from dermagan.stages.validate_augmented import run_validate_augmented
from params_util import make_config

SIZE = 16


def params_for(extra):
    return make_config({
        "prepare": {"image_size": SIZE, "min_image_side": SIZE},
        "gan": {"classes": ["df", "vasc"], "amount": {"mode": "count", "value": 3}, "seed": 0},
        # an arm: `extra` plus recipe overrides (validate_augmented reads only `extra`)
        "arms": {"arm": {"backbone": "simple_cnn", "pretrained": None, "augment": False,
                         "class_weight_power": 0.0, "extra": extra}}})


@pytest.fixture
def prepared(tmp_path) -> Path:
    raw = make_ham_folder(tmp_path / "raw", per_class=10)
    prepare_dataset(raw, tmp_path / "prepared", tmp_path / "eda", PrepareConfig(SIZE, 0.2, 0.2, 0, CLASSES))
    return tmp_path / "prepared"


def write_synthetic(folder: Path, per_class: int = 4, seed: int = 0) -> pd.DataFrame:
    """A generate-style folder: <class>/*.png and manifest.csv, 4 random images per class."""
    rng = np.random.default_rng(seed)
    rows = []
    for dx in ("df", "vasc"):
        (folder / dx).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            file = f"{dx}/dcgan_{dx}_{i:05d}.png"
            Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(folder / file)
            rows.append({"file": file, "class": dx, "generator_version": "1", "seed": 7, "latent_index": i})
    manifest = pd.DataFrame(rows)
    manifest.to_csv(folder / "manifest.csv", index=False)
    return manifest


def test_parse_extra_accepts_the_documented_forms_only():
    assert parse_extra(None).kind == "none" and parse_extra("oversample").kind == "oversample"
    source = parse_extra("cdcgan/dedup")
    assert (source.kind, source.method, source.set_name, source.label) == ("synthetic", "cdcgan", "dedup",
                                                                           "cdcgan/dedup")
    with pytest.raises(DermaganError, match="arm extra"):
        parse_extra("dcgan/everything")
    with pytest.raises(DermaganError, match=r"arms\.x\.extra = 'gan/dedup': 'gan' is not a GAN method; methods are \["):
        parse_extra("gan/dedup", "arms.x.extra")  # the method must be one of dermagan.gan.methods.METHODS


def test_synthetic_extras_take_first_n_per_class_and_train_with_them(prepared, tmp_path):
    manifest = write_synthetic(tmp_path / "synthetic" / "dcgan" / "dedup")
    summary = run_validate_augmented(params_for("dcgan/dedup"), "arm", prepared, tmp_path / "synthetic",
                                     tmp_path / "trainset", tmp_path / "report")
    assert summary["success"] and summary["n_extra"] == 6
    extras, spec = read_extras(tmp_path / "trainset")
    expected = manifest.groupby("class").head(3)["file"].tolist()
    assert list(extras.sources) == expected and spec["extra"] == "dcgan/dedup"
    first = np.asarray(Image.open(tmp_path / "synthetic" / "dcgan" / "dedup" / expected[0]))
    assert np.array_equal(extras.images[0], first)
    train = read_split(prepared, "train")
    combined = with_extras(train, extras)
    assert len(combined) == len(train) + 6
    assert np.bincount(combined.labels, minlength=7)[CLASSES.index("df")] == (train.labels == 3).sum() + 3
    assert (tmp_path / "report" / "data_docs" / "index.html").is_file()


def test_oversampling_copies_real_train_images_of_the_class(prepared, tmp_path):
    (tmp_path / "synthetic").mkdir()
    run_validate_augmented(params_for("oversample"), "arm", prepared, tmp_path / "synthetic",
                           tmp_path / "trainset", tmp_path / "report")
    extras, _ = read_extras(tmp_path / "trainset")
    train = read_split(prepared, "train")
    ids = [s.removeprefix("copy:") for s in extras.sources]
    index = {i: k for k, i in enumerate(train.image_ids.astype(str))}
    assert all(np.array_equal(extras.images[j], train.images[index[i]]) for j, i in enumerate(ids))
    assert all(train.labels[index[i]] == extras.labels[j] for j, i in enumerate(ids))
    assert sorted(CLASSES[y] for y in extras.labels) == ["df"] * 3 + ["vasc"] * 3


@pytest.mark.parametrize("fault, check", [
    ("shortfall", "extra >= target_extra"),
    ("holdout_copy", "in_holdout in {False}"),
    ("corrupt", "decodes in {True}"),
    ("wrong_size", "width == 16"),
])
def test_validation_fails_and_writes_no_trainset(prepared, tmp_path, fault, check):
    folder = tmp_path / "synthetic" / "dcgan" / "generated"
    manifest = write_synthetic(folder, per_class=2 if fault == "shortfall" else 4)
    victim = folder / manifest["file"].iloc[0]
    if fault == "holdout_copy":
        Image.fromarray(read_split(prepared, "test").images[0]).save(victim)
    elif fault == "corrupt":
        victim.write_bytes(b"\x89PNG broken")
    elif fault == "wrong_size":
        Image.new("RGB", (SIZE + 1, SIZE)).save(victim)
    with pytest.raises(DermaganError, match="failed validation") as error:
        run_validate_augmented(params_for("dcgan/generated"), "arm", prepared, tmp_path / "synthetic",
                               tmp_path / "trainset", tmp_path / "report")
    assert check in str(error.value)
    assert not (tmp_path / "trainset").exists() and not (tmp_path / "report").exists()
    summary = json.loads((tmp_path / "report-failed" / "summary.json").read_text())
    assert not summary["success"]


def test_training_refuses_a_missing_or_mismatched_trainset(prepared, tmp_path):
    with pytest.raises(DermaganError, match="validate_augmented"):
        training_set("dcgan/dedup", prepared, tmp_path / "nowhere")
    (tmp_path / "synthetic").mkdir()
    run_validate_augmented(params_for("oversample"), "arm", prepared, tmp_path / "synthetic",
                           tmp_path / "trainset", tmp_path / "report")
    with pytest.raises(DermaganError, match="oversample"):
        training_set("dcgan/dedup", prepared, tmp_path / "trainset")
    train, n_extra = training_set(None, prepared, None)
    assert n_extra == 0 and len(train) == len(read_split(prepared, "train"))
