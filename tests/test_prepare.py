"""prepare on tiny made-up data: outputs, and bad input that fails cleanly with nothing left behind."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dermagan.data.prepare import PrepareConfig, prepare_dataset
from dermagan.data.prepared import read_split, read_split_table
from dermagan.errors import DermaganError

CONFIG = PrepareConfig(image_size=16, val_fraction=0.2, test_fraction=0.2, seed=0)


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
    assert sorted(p.name for p in (tmp_path / "eda").iterdir()) == ["age.png", "class_counts.png", "localization.png", "sex.png"]


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
