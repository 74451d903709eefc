"""prepare on tiny made-up data: outputs, and bad input that fails cleanly with nothing left behind."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dermagan.config.schema import HAM10000_CLASSES
from dermagan.data.prepare import PrepareConfig, prepare_dataset
from dermagan.data.prepared import read_split, read_split_table
from dermagan.errors import DermaganError

CONFIG = PrepareConfig(image_size=16, val_fraction=0.2, test_fraction=0.2, seed=0, classes=HAM10000_CLASSES)


def run(raw: Path, tmp_path: Path):
    return prepare_dataset(raw, tmp_path / "prepared", tmp_path / "eda", CONFIG)


def assert_no_outputs(tmp_path: Path):
    assert not (tmp_path / "prepared").exists() and not (tmp_path / "eda").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folders left behind"


def test_prepare_writes_arrays_table_and_figures(ham_folder, tmp_path):
    summary = run(ham_folder, tmp_path)
    table = read_split_table(tmp_path / "prepared")
    assert table.groupby("lesion_id")["split"].nunique().max() == 1
    total = 0
    for split in ("train", "val", "test"):
        arrays = read_split(tmp_path / "prepared", split)
        assert arrays.images.shape[1:] == (16, 16, 3) and arrays.images.dtype == np.uint8
        assert list(arrays.image_ids) == table.loc[table["split"] == split, "image_id"].tolist()
        assert summary[split]["images"] == len(arrays)
        total += len(arrays)
    assert total == 84
    assert sorted(p.name for p in (tmp_path / "eda").iterdir()) == [".dermagan-output",  # the output marker
                                                                    "age.png", "class_counts.png", "localization.png",
                                                                    "sex.png"]


def test_any_resolution_is_accepted(tmp_path):
    from conftest import make_ham_folder

    raw = make_ham_folder(tmp_path / "big", per_class=6, size=(300, 225))
    run(raw, tmp_path)
    assert read_split(tmp_path / "prepared", "train").images.shape[1:] == (16, 16, 3)


def edit_metadata(raw: Path, change) -> None:
    frame = pd.read_csv(raw / "metadata.csv")
    change(frame)
    frame.to_csv(raw / "metadata.csv", index=False)


def damage(raw: Path, kind: str) -> str:
    """Break the input in one way; return what the error message must contain."""
    first = raw / "images" / "ISIC_0000003.jpg"
    if kind == "missing column":
        edit_metadata(raw, lambda f: f.drop(columns=["lesion_id"], inplace=True))
        return "lesion_id"
    if kind == "unknown dx":
        edit_metadata(raw, lambda f: f.__setitem__("dx", f["dx"].replace({"vasc": "angioma"})))
        return "angioma"
    if kind == "missing image":
        first.unlink()
        return "ISIC_0000003.jpg: image listed in metadata is missing"
    if kind == "corrupt jpeg":
        first.write_bytes(b"not a jpeg at all")
        return "ISIC_0000003.jpg: cannot decode"
    if kind == "truncated jpeg":
        data = first.read_bytes()
        first.write_bytes(data[: len(data) // 2])
        return "ISIC_0000003.jpg: cannot decode"
    if kind == "greyscale":
        Image.open(first).convert("L").save(first)
        return "ISIC_0000003.jpg: image mode is L"
    if kind == "rgba":
        png = first.with_suffix(".png")
        Image.open(first).convert("RGBA").save(png)
        first.unlink()
        return "ISIC_0000003.png: image mode is RGBA"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing column", "unknown dx", "missing image", "corrupt jpeg",
                                  "truncated jpeg", "greyscale", "rgba"])
def test_bad_input_names_the_culprit_and_leaves_nothing(ham_folder, tmp_path, kind):
    expected = damage(ham_folder, kind)
    with pytest.raises(DermaganError, match=expected.replace(".", r"\.")):
        run(ham_folder, tmp_path)
    assert_no_outputs(tmp_path)


def test_failure_keeps_previous_outputs(ham_folder, tmp_path):
    run(ham_folder, tmp_path)
    before = (tmp_path / "prepared" / "splits.csv").read_bytes()
    damage(ham_folder, "corrupt jpeg")
    with pytest.raises(DermaganError):
        run(ham_folder, tmp_path)
    assert (tmp_path / "prepared" / "splits.csv").read_bytes() == before


def test_oversized_image_is_refused_by_name(ham_folder, tmp_path):
    from conftest import oversize_jpeg

    oversize_jpeg(ham_folder / "images" / "ISIC_0000003.jpg")  # header says 20000x20000 px
    with pytest.raises(DermaganError, match=r"ISIC_0000003\.jpg: image is too large .*400,000,000 pixels"):
        run(ham_folder, tmp_path)
    assert_no_outputs(tmp_path)


@pytest.mark.parametrize("content, expected", [("lesion_id,image_id,dx,dx_type,age,sex,localization\n",
                                                 "has a header but no rows"),
                                                ("", "metadata file is empty")])
def test_empty_metadata_is_refused_by_name(ham_folder, tmp_path, content, expected):
    (ham_folder / "metadata.csv").write_text(content)
    with pytest.raises(DermaganError, match=rf"metadata\.csv: .*{expected}"):
        run(ham_folder, tmp_path)
    assert_no_outputs(tmp_path)


def test_too_small_image_is_refused_by_name_and_size(ham_folder, tmp_path):
    tiny = ham_folder / "images" / "ISIC_0000003.jpg"
    Image.open(tiny).resize((8, 6)).save(tiny)
    with pytest.raises(DermaganError, match=r"min_image_side = 32 px: ISIC_0000003\.jpg \(8x6 px\)$"):
        run(ham_folder, tmp_path)
    assert_no_outputs(tmp_path)
    lowered = PrepareConfig(image_size=16, val_fraction=0.2, test_fraction=0.2, seed=0, classes=HAM10000_CLASSES,
                            min_image_side=6)
    prepare_dataset(ham_folder, tmp_path / "prepared", tmp_path / "eda", lowered)  # the threshold is a param
    assert len(read_split_table(tmp_path / "prepared")) == 84


def test_non_numeric_age_names_line_and_image(ham_folder, tmp_path):
    frame = pd.read_csv(ham_folder / "metadata.csv", dtype={"age": object})
    frame.loc[5, "age"], frame.loc[9, "age"] = "eighty", None  # an empty age is allowed (HAM10000 has them)
    frame.to_csv(ham_folder / "metadata.csv", index=False)
    with pytest.raises(DermaganError, match=r"metadata\.csv: column 'age' is not a number on 1 row\(s\) "
                                            r"\(line 7: image_id 'ISIC_0000005' has age 'eighty'\)"):
        run(ham_folder, tmp_path)
    assert_no_outputs(tmp_path)


def test_empty_age_is_accepted_and_ages_are_float(ham_folder):
    from dermagan.data.metadata import read_metadata

    edit_metadata(ham_folder, lambda f: f.loc.__setitem__((9, "age"), None))
    frame = read_metadata(ham_folder / "metadata.csv", HAM10000_CLASSES)
    assert frame["age"].dtype == float and frame["age"].isna().sum() == 1


def test_max_lesions_per_class_prepares_a_lesion_grouped_subset(ham_folder, tmp_path):
    from dataclasses import replace

    summary = prepare_dataset(ham_folder, tmp_path / "prepared", tmp_path / "eda",
                              replace(CONFIG, max_lesions_per_class=5))
    table = read_split_table(tmp_path / "prepared")
    assert table.drop_duplicates("lesion_id")["dx"].value_counts().max() <= 5
    assert table.groupby("lesion_id")["split"].nunique().max() == 1
    assert sum(summary[s]["images"] for s in ("train", "val", "test")) == len(table) < 84
