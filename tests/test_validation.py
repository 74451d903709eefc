"""Tests for the Great Expectations data-quality suites (dermagan.validation)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dermagan.config.schema import HAM10000_CLASSES as CLASSES
from dermagan.constants import SPLITS
from dermagan.data.images import find_image, load_image_array
from dermagan.data.prepared import SplitArrays, arrays_for, write_classes, write_split
from dermagan.errors import DermaganError
from dermagan.validation import (
    Thresholds,
    build_frames,
    build_suites,
    class_balance_table,
    class_frame,
    duplicate_frame,
    image_frame,
    lesion_frame,
    validate_frames,
    validate_prepared,
)

SIZE = 16
PER_CLASS = 2
THRESHOLDS = Thresholds(image_size=SIZE, min_pixel_std=1.0, min_class_count=2,
                        min_class_share=0.05, max_class_share=0.5)
REAL_DATA = Path(__file__).resolve().parents[2] / "shared/data/ham10000"


def make_table(classes: tuple[str, ...] = CLASSES) -> pd.DataFrame:
    """len(classes) classes x 3 splits x PER_CLASS images, one lesion per image."""
    rows = []
    for split in SPLITS:
        for dx in classes:
            for k in range(PER_CLASS):
                n = len(rows)
                rows.append({"image_id": f"ISIC_{n:07d}", "lesion_id": f"HAM_{n:07d}", "dx": dx,
                             "split": split, "dx_type": "histo", "age": 50.0, "sex": "male",
                             "localization": "back"})
    return pd.DataFrame(rows)


def textured(rng: np.random.Generator, n: int, height: int, width: int) -> np.ndarray:
    """Random uint8 images with a gradient plus noise (never constant)."""
    ramp = np.linspace(0, 120, width, dtype=np.float64)[None, None, :, None]
    noise = rng.integers(0, 120, (n, height, width, 3))
    return np.clip(ramp + noise, 0, 255).astype(np.uint8)


def write_raw(raw_dir: Path, image_ids, rng: np.random.Generator) -> None:
    """Write one small RGB JPEG per image id under raw_dir/images."""
    images_dir = raw_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    for image_id, pixels in zip(image_ids, textured(rng, len(image_ids), 12, 15)):
        Image.fromarray(pixels, "RGB").save(images_dir / f"{image_id}.jpg", quality=90)


def write_prepared(root: Path) -> tuple[Path, Path]:
    """A tiny prepared folder (splits.csv + npz) and its raw folder; returns (prepared, raw)."""
    rng = np.random.default_rng(1)
    table = make_table()
    prepared, raw = root / "prepared", root / "raw"
    prepared.mkdir(parents=True)
    table.to_csv(prepared / "splits.csv", index=False)
    write_classes(prepared, CLASSES)
    images = textured(rng, len(table), SIZE, SIZE)
    for split in SPLITS:
        write_split(prepared, split, arrays_for(table, images, split, CLASSES))
    write_raw(raw, table["image_id"].tolist(), rng)
    return prepared, raw


@pytest.fixture(scope="module")
def good_frames(tmp_path_factory) -> dict[str, pd.DataFrame]:
    """Frames built by the real frame functions from a small synthetic dataset."""
    rng = np.random.default_rng(0)
    table = make_table()
    raw = tmp_path_factory.mktemp("raw")
    write_raw(raw, table["image_id"].tolist(), rng)
    images = textured(rng, len(table), SIZE, SIZE)
    arrays = {split: arrays_for(table, images, split, CLASSES) for split in SPLITS}
    return build_frames(table, arrays, raw, CLASSES)


def test_good_frames_pass(good_frames):
    report = validate_frames(good_frames, THRESHOLDS, CLASSES, None)
    assert report.success, report.summary_text()
    assert report.failures == []
    assert report.statistics["images"]["evaluated_expectations"] == 12
    assert report.summary_text().startswith("PASSED: 16 of 16")
    json.dumps(report.to_dict())


def test_frame_shapes(good_frames):
    images = good_frames["images"]
    assert len(images) == len(CLASSES) * len(SPLITS) * PER_CLASS
    assert images["raw_decodes"].all() and (images["raw_mode"] == "RGB").all()
    assert (images[["height", "width"]] == SIZE).all().all() and (images["channels"] == 3).all()
    assert images["content_hash"].str.len().eq(40).all()
    assert (good_frames["lesions"]["n_splits"] == 1).all()
    assert len(good_frames["duplicates"]) == len(images)
    classes = good_frames["classes"]
    assert len(classes) == len(CLASSES) * len(SPLITS)
    assert classes.groupby("split")["share"].sum().round(9).eq(1.0).all()


def test_derived_frames_catch_leaks_and_zero_fill(good_frames):
    images = good_frames["images"].copy()
    images.loc[1, "lesion_id"] = images.loc[images["split"] == "test", "lesion_id"].iloc[0]
    images.loc[2, "content_hash"] = images.loc[images["split"] == "val", "content_hash"].iloc[0]
    images = images[~((images["split"] == "val") & (images["dx"] == "df"))]
    assert lesion_frame(images)["n_splits"].max() == 2
    assert duplicate_frame(images)["n_splits"].max() == 2
    classes = class_frame(images, CLASSES).set_index(["split", "dx"])
    assert classes.loc[("val", "df"), "count"] == 0 and classes.loc[("val", "df"), "share"] == 0.0
    assert len(classes) == 21


def test_class_balance_table(good_frames):
    table = class_balance_table(good_frames["classes"])
    assert list(table["dx"]) == list(CLASSES)
    assert list(table.columns[1:4]) == ["count_train", "count_val", "count_test"]
    assert (table["count_train"] == PER_CLASS).all()
    assert np.allclose(table["share_val"], 1 / len(CLASSES))


def set_value(frame: str, column: str, value, row: int = 0):
    """A mutation that sets one cell of one frame."""
    def mutate(frames):
        frames[frame].loc[row, column] = value
    return mutate


def copy_image_id(frames):
    frames["images"].loc[1, "image_id"] = frames["images"].loc[0, "image_id"]


# (frame, mutation, check text that must be the only failure, key of the bad row or None)
CASES = {
    "dx_in_set": ("images", set_value("images", "dx", "melanoma"),
                  "dx in {'akiec', 'bcc', 'bkl', 'df', 'mel', 'nv', 'vasc'}", "ISIC_0000000"),
    "image_id_null": ("images", set_value("images", "image_id", None), "image_id not null", None),
    "lesion_id_null": ("images", set_value("images", "lesion_id", None), "lesion_id not null",
                       "ISIC_0000000"),
    "dx_null": ("images", set_value("images", "dx", None), "dx not null", "ISIC_0000000"),
    "raw_decodes": ("images", set_value("images", "raw_decodes", False), "raw_decodes in {True}",
                    "ISIC_0000000"),
    "raw_mode": ("images", set_value("images", "raw_mode", "L"), "raw_mode in {'RGB'}",
                 "ISIC_0000000"),
    "height": ("images", set_value("images", "height", SIZE + 1), f"height == {SIZE}", "ISIC_0000000"),
    "width": ("images", set_value("images", "width", SIZE - 1), f"width == {SIZE}", "ISIC_0000000"),
    "channels": ("images", set_value("images", "channels", 1), "channels == 3", "ISIC_0000000"),
    "pixel_std_blank": ("images", set_value("images", "pixel_std", 0.0), "pixel_std > 1.0",
                        "ISIC_0000000"),
    "pixel_std_strict": ("images", set_value("images", "pixel_std", 1.0), "pixel_std > 1.0",
                         "ISIC_0000000"),
    "image_id_unique": ("images", copy_image_id, "image_id unique", "ISIC_0000000"),
    "lesion_leak": ("lesions", set_value("lesions", "n_splits", 2), "n_splits == 1", "HAM_0000000"),
    "duplicate_leak": ("duplicates", set_value("duplicates", "n_splits", 2), "n_splits == 1", "HASH"),
    "class_count": ("classes", set_value("classes", "count", 1, row=3), "count >= 2", "train/df"),
    "class_share_high": ("classes", set_value("classes", "share", 0.9, row=3),
                         "0.05 <= share <= 0.5", "train/df"),
    "class_share_low": ("classes", set_value("classes", "share", 0.01, row=3),
                        "0.05 <= share <= 0.5", "train/df"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_expectation_fails_alone(good_frames, case):
    frame, mutate, check, key = CASES[case]
    frames = {name: df.copy() for name, df in good_frames.items()}
    mutate(frames)
    report = validate_frames(frames, THRESHOLDS, CLASSES, None)
    assert not report.success
    assert [(f["frame"], f["check"]) for f in report.failures] == [(frame, check)], report.summary_text()
    failure = report.failures[0]
    assert failure["unexpected_count"] >= 1 and failure["element_count"] == len(frames[frame])
    if key == "HASH":
        key = frames["duplicates"].loc[0, "content_hash"]
    if key is not None:
        assert key in failure["examples"]
    assert f"FAILED {frame}: {check}" in report.summary_text()
    json.dumps(report.to_dict())


def test_summary_text_format(good_frames):
    frames = {name: df.copy() for name, df in good_frames.items()}
    frames["images"].loc[[0, 1], "raw_mode"] = "L"
    text = validate_frames(frames, THRESHOLDS, CLASSES, None).summary_text()
    n = len(frames["images"])
    assert (f"FAILED images: raw_mode in {{'RGB'}} (column raw_mode): 2 of {n} rows, "
            "e.g. ['ISIC_0000000', 'ISIC_0000001']") in text
    assert text.splitlines()[-1] == "FAILED: 15 of 16 expectations passed on 4 frames, 1 failed"


def test_missing_column_is_reported(good_frames):
    frames = {name: df.copy() for name, df in good_frames.items()}
    frames["classes"] = frames["classes"].drop(columns="share")
    report = validate_frames(frames, THRESHOLDS, CLASSES, None)
    assert not report.success
    assert "share" in report.failures[0]["error"]


def test_misaligned_arrays_raise(tmp_path):
    table = make_table()
    images = textured(np.random.default_rng(2), len(table), SIZE, SIZE)
    arrays = {split: arrays_for(table, images, split, CLASSES) for split in SPLITS}
    train = arrays["train"]
    arrays["train"] = SplitArrays(train.images, train.labels, train.image_ids[::-1].copy())
    with pytest.raises(DermaganError, match="out of order"):
        image_frame(table, arrays, tmp_path, CLASSES)


def test_validate_prepared_passes_and_writes_docs(tmp_path):
    prepared, raw = write_prepared(tmp_path)
    docs = tmp_path / "docs"
    report = validate_prepared(prepared, raw, THRESHOLDS, CLASSES, docs)
    assert report.success, report.summary_text()
    index = docs / "index.html"
    assert index.is_file() and report.docs_index == str(index)
    html = index.read_text()
    for frame in ("images", "lesions", "duplicates", "classes"):
        assert f"validations/{frame}/" in html
    assert len(list((docs / "validations").rglob("*.html"))) == 4


def test_validate_prepared_flags_greyscale_raw(tmp_path):
    prepared, raw = write_prepared(tmp_path)
    grey_id = "ISIC_0000005"
    Image.new("L", (15, 12), color=90).save(raw / "images" / f"{grey_id}.jpg")
    report = validate_prepared(prepared, raw, THRESHOLDS, CLASSES, None)
    assert not report.success
    assert [(f["frame"], f["check"], f["examples"]) for f in report.failures] == [
        ("images", "raw_mode in {'RGB'}", [grey_id])]
    assert grey_id in report.summary_text()


def test_suites_take_the_task_labels_from_the_caller(tmp_path):
    """A made-up label set: its labels pass, a HAM10000 label fails the label check (data.classes, not code)."""
    task = ("gamma", "alpha", "beta")  # not sorted: integer labels index this order
    table = make_table(task)
    rng = np.random.default_rng(3)
    write_raw(tmp_path, table["image_id"].tolist(), rng)
    images = textured(rng, len(table), SIZE, SIZE)
    arrays = {split: arrays_for(table, images, split, task) for split in SPLITS}
    frames = build_frames(table, arrays, tmp_path, task)
    limits = Thresholds(image_size=SIZE, min_pixel_std=1.0, min_class_count=2, min_class_share=0.05,
                        max_class_share=0.5)
    report = validate_frames(frames, limits, task, None)
    assert report.success, report.summary_text()
    assert list(class_balance_table(frames["classes"])["dx"]) == list(task)
    frames["images"].loc[0, "dx"] = "nv"
    report = validate_frames(frames, limits, task, None)
    assert [(f["frame"], f["check"], f["examples"]) for f in report.failures] == [
        ("images", "dx in {'alpha', 'beta', 'gamma'}", ["ISIC_0000000"])]
    assert "HAM10000" not in json.dumps(build_suites(limits, task)["images"].to_json_dict())


@pytest.mark.realdata
def test_real_data_first_rows_make_frames():
    metadata = REAL_DATA / "metadata.csv"
    if not metadata.is_file():
        pytest.skip(f"real HAM10000 data not found at {REAL_DATA} (metadata.csv missing)")
    table = pd.read_csv(metadata, dtype=str, nrows=50)
    lesions = {lesion: SPLITS[i % 3] for i, lesion in enumerate(table["lesion_id"].unique())}
    table["split"] = table["lesion_id"].map(lesions)
    images = np.stack([load_image_array(find_image(REAL_DATA / "images", i), SIZE)
                       for i in table["image_id"]])
    arrays = {split: arrays_for(table, images, split, CLASSES) for split in SPLITS}
    frames = build_frames(table, arrays, REAL_DATA, CLASSES)
    assert len(frames["images"]) == 50
    assert frames["images"]["raw_decodes"].all()
    assert (frames["images"]["raw_mode"] == "RGB").all()
    assert (frames["lesions"]["n_splits"] == 1).all()
