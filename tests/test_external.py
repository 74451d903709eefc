"""External test sets (params evaluate.external): read through the label map, resized like prepare, refused
when they share an image with train or val, warned about when they overlap test or lack a class."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import make_ham_folder, params_file, textured_image
from dermagan.cli import build_parser, _default_paths, main
from dermagan.config.layout import LAYOUT
from dermagan.config.schema import HAM10000_CLASSES as CLASSES
from dermagan.data.external import (ExternalConfig, check_set_name, external_names, load_external,
                                    prepare_external)
from dermagan.data.prepare import PrepareConfig, prepare_dataset
from dermagan.data.prepared import read_classes, read_split_table
from dermagan.errors import DermaganError

SIZE = 16
BINARY = ("benign", "malignant")
BINARY_MAP = {"akiec": "malignant", "bcc": "malignant", "mel": "malignant",
              "bkl": "benign", "df": "benign", "nv": "benign", "vasc": "benign"}


def prepared_copy(root: Path, classes: tuple[str, ...], label_map: dict | None) -> tuple[Path, Path]:
    raw = make_ham_folder(root / "raw", per_class=6)
    prepared = root / "prepared"
    prepare_dataset(raw, prepared, root / "eda", PrepareConfig(SIZE, 0.2, 0.2, 0, classes, label_map=label_map))
    return raw, prepared


@pytest.fixture(scope="module")
def binary_data(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny HAM10000 folder prepared for a made-up two-label task (benign / malignant via a label map)."""
    return prepared_copy(tmp_path_factory.mktemp("binary"), BINARY, BINARY_MAP)


@pytest.fixture(scope="module")
def ham_data(tmp_path_factory) -> tuple[Path, Path]:
    """The same, prepared with the project's default seven classes (the CLI reads params.yaml's task)."""
    return prepared_copy(tmp_path_factory.mktemp("ham"), CLASSES, None)


def make_external(folder: Path, rows: list[tuple[str, str]], seed: int = 7, copies: dict | None = None,
                  skip: tuple[str, ...] = ()) -> Path:
    """An external set: metadata.csv (image_id, dx only) + images/; ``copies`` maps an id to a file to copy
    byte for byte; ids in ``skip`` are listed but get no file."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for image_id, _ in rows:
        if image_id in skip:
            continue
        if copies and image_id in copies:
            shutil.copyfile(copies[image_id], folder / "images" / f"{image_id}.jpg")
        else:
            Image.fromarray(textured_image(rng, 40, 50)).save(folder / "images" / f"{image_id}.jpg", quality=90)
    pd.DataFrame(rows, columns=["image_id", "dx"]).to_csv(folder / "metadata.csv", index=False)
    return folder


def split_image(raw: Path, prepared: Path, split: str) -> tuple[str, Path]:
    image_id = read_split_table(prepared).query("split == @split")["image_id"].iloc[0]
    return image_id, raw / "images" / f"{image_id}.jpg"


def binary_config(label_map=BINARY_MAP) -> ExternalConfig:
    return ExternalConfig(image_size=SIZE, classes=BINARY, min_image_side=SIZE, label_map=label_map)


def run_cli(tmp_path: Path, raw: Path, prepared: Path, external: dict, capsys) -> tuple[int, str, str, Path]:
    params = params_file(tmp_path / "cfg", prepare={"image_size": SIZE, "min_image_side": SIZE},
                         data={"label_map": {"MEL": "mel", "NV": "nv"}},
                         evaluate={"external": {k: str(v) for k, v in external.items()}})
    out = tmp_path / "external_out"
    capsys.readouterr()
    rc = main(["prepare-external", "--params", str(params), "--prepared", str(prepared), "--raw", str(raw),
               "--out", str(out)])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err, out


# --- the library ---------------------------------------------------------------------------------------------

def test_clean_set_is_written_and_loads_with_labels_through_the_label_map(binary_data, tmp_path):
    raw, prepared = binary_data
    rows = [("EXT_1", "mel"), ("EXT_2", "nv"), ("EXT_3", "bcc"), ("EXT_4", "df")]
    folder = make_external(tmp_path / "clinic", rows)
    out = tmp_path / "external"
    summary = prepare_external({"clinic": folder}, prepared, raw, out, binary_config())

    assert summary == {"clinic": {"folder": str(folder), "images": 4,
                                  "per_class": {"benign": 2, "malignant": 2}, "warnings": []}}
    assert json.loads((out / "summary.json").read_text()) == summary
    assert read_classes(out) == BINARY
    assert external_names(out) == ["clinic"]
    arrays = load_external(out, "clinic")
    assert arrays.images.shape == (4, SIZE, SIZE, 3) and arrays.images.dtype == np.uint8
    assert arrays.image_ids.tolist() == ["EXT_1", "EXT_2", "EXT_3", "EXT_4"]
    assert [BINARY[i] for i in arrays.labels] == ["malignant", "benign", "malignant", "benign"]


def test_no_sets_writes_an_empty_summary(binary_data, tmp_path):
    raw, prepared = binary_data
    out = tmp_path / "external"
    assert prepare_external({}, prepared, raw, out, binary_config()) == {}
    assert json.loads((out / "summary.json").read_text()) == {}
    assert external_names(out) == []


@pytest.mark.parametrize("split", ["train", "val"])
def test_a_copy_of_a_train_or_val_image_is_refused(binary_data, tmp_path, split):
    raw, prepared = binary_data
    internal_id, source = split_image(raw, prepared, split)
    folder = make_external(tmp_path / "leaky", [("EXT_1", "mel"), ("EXT_COPY", "nv")], copies={"EXT_COPY": source})
    out = tmp_path / "external"
    with pytest.raises(DermaganError, match=f"EXT_COPY = {split} image {internal_id}"):
        prepare_external({"leaky": folder}, prepared, raw, out, binary_config())
    assert not out.exists()  # atomic: nothing half-written


def test_a_copy_of_a_test_image_is_a_warning(binary_data, tmp_path):
    raw, prepared = binary_data
    internal_id, source = split_image(raw, prepared, "test")
    folder = make_external(tmp_path / "overlap", [("EXT_1", "mel"), ("EXT_COPY", "nv")], copies={"EXT_COPY": source})
    summary = prepare_external({"overlap": folder}, prepared, raw, tmp_path / "external", binary_config())
    (warning,) = summary["overlap"]["warnings"]
    assert "internal test" in warning and f"EXT_COPY = test image {internal_id}" in warning


def test_shared_id_with_other_bytes_and_absent_class_are_warnings(binary_data, tmp_path):
    raw, prepared = binary_data
    internal_id, _ = split_image(raw, prepared, "train")
    folder = make_external(tmp_path / "odd", [(internal_id, "nv"), ("EXT_2", "df")])
    summary = prepare_external({"odd": folder}, prepared, raw, tmp_path / "external", binary_config())
    warnings = summary["odd"]["warnings"]
    assert summary["odd"]["per_class"] == {"benign": 2, "malignant": 0}
    assert any(internal_id in w and "different file bytes" in w for w in warnings)
    assert any("['malignant']" in w and "recall is undefined" in w for w in warnings)


def test_missing_images_are_refused_naming_the_set_and_ids(binary_data, tmp_path):
    raw, prepared = binary_data
    folder = make_external(tmp_path / "gappy", [("EXT_1", "mel"), ("EXT_GONE", "nv")], skip=("EXT_GONE",))
    with pytest.raises(DermaganError, match=r"external set 'gappy': 1 image\(s\) .* missing .*EXT_GONE"):
        prepare_external({"gappy": folder}, prepared, raw, tmp_path / "external", binary_config())


def test_unknown_label_is_refused_naming_value_and_row(binary_data, tmp_path):
    raw, prepared = binary_data
    folder = make_external(tmp_path / "odd", [("EXT_1", "mel"), ("EXT_2", "nv"), ("EXT_3", "SCC")])
    with pytest.raises(DermaganError) as info:
        prepare_external({"odd": folder}, prepared, raw, tmp_path / "external", binary_config())
    message = str(info.value)
    assert "external set 'odd'" in message and "'SCC'" in message and "line 4" in message and "EXT_3" in message


@pytest.mark.parametrize("name", ["../escape", "a b", "", "x.npz"])
def test_set_names_must_be_plain_identifiers(binary_data, tmp_path, name):
    raw, prepared = binary_data
    folder = make_external(tmp_path / "ok", [("EXT_1", "mel")])
    with pytest.raises(DermaganError, match="plain identifier"):
        prepare_external({name: folder}, prepared, raw, tmp_path / "external", binary_config())
    assert check_set_name("isic2018_task3-test") == "isic2018_task3-test"


def test_a_set_inside_the_output_folder_is_refused(binary_data, tmp_path):
    raw, prepared = binary_data
    out = tmp_path / "external"
    folder = make_external(out / "inside", [("EXT_1", "mel")])
    with pytest.raises(DermaganError, match="evaluate.external.inside"):
        prepare_external({"inside": folder}, prepared, raw, out, binary_config())
    assert (folder / "metadata.csv").is_file()


# --- the command line ----------------------------------------------------------------------------------------

def test_cli_writes_a_clean_set_through_the_label_map(ham_data, tmp_path, capsys):
    raw, prepared = ham_data
    folder = make_external(tmp_path / "isic", [("EXT_1", "MEL"), ("EXT_2", "NV"), ("EXT_3", "bcc")])
    rc, out_text, err, out = run_cli(tmp_path, raw, prepared, {"isic": folder}, capsys)
    assert rc == 0, err
    assert "isic: 3 images" in out_text
    labels = [CLASSES[i] for i in load_external(out, "isic").labels]
    assert labels == ["mel", "nv", "bcc"]
    assert "recall is undefined" in err  # 4 of the 7 classes are absent: a stated warning
    assert json.loads((out / "summary.json").read_text())["isic"]["warnings"]


def test_cli_refuses_a_train_copy_naming_both_ids(ham_data, tmp_path, capsys):
    raw, prepared = ham_data
    internal_id, source = split_image(raw, prepared, "train")
    folder = make_external(tmp_path / "leaky", [("EXT_1", "MEL"), ("EXT_COPY", "NV")], copies={"EXT_COPY": source})
    rc, _, err, out = run_cli(tmp_path, raw, prepared, {"leaky": folder}, capsys)
    assert rc == 2
    assert "dermagan prepare-external: error:" in err and "EXT_COPY" in err and internal_id in err
    assert not out.exists()


def test_cli_warns_about_a_test_copy(ham_data, tmp_path, capsys):
    raw, prepared = ham_data
    internal_id, source = split_image(raw, prepared, "test")
    folder = make_external(tmp_path / "overlap", [("EXT_1", "MEL"), ("EXT_COPY", "NV")], copies={"EXT_COPY": source})
    rc, _, err, out = run_cli(tmp_path, raw, prepared, {"overlap": folder}, capsys)
    assert rc == 0, err
    assert "warning: overlap:" in err and internal_id in err
    assert any(internal_id in w for w in json.loads((out / "summary.json").read_text())["overlap"]["warnings"])


def test_cli_refuses_an_unknown_label(ham_data, tmp_path, capsys):
    raw, prepared = ham_data
    folder = make_external(tmp_path / "odd", [("EXT_1", "MEL"), ("EXT_2", "melanoma")])
    rc, _, err, out = run_cli(tmp_path, raw, prepared, {"odd": folder}, capsys)
    assert rc == 2 and "'melanoma'" in err and "line 3" in err and "odd" in err
    assert not out.exists()


def test_cli_without_sets_writes_an_empty_summary(ham_data, tmp_path, capsys):
    raw, prepared = ham_data
    rc, out_text, err, out = run_cli(tmp_path, raw, prepared, {}, capsys)
    assert rc == 0, err
    assert json.loads((out / "summary.json").read_text()) == {} and "no external test sets" in out_text


def test_cli_default_output_is_the_layouts():
    args = build_parser().parse_args(["prepare-external"])
    args.config = None
    _default_paths(args)
    assert (args.prepared, args.raw, args.out) == (LAYOUT.prepared, LAYOUT.raw, LAYOUT.external)
    assert LAYOUT.external_set("isic2018") == Path("artifacts/external/isic2018.npz")


def test_images_are_checked_like_prepare_does(binary_data, tmp_path):
    raw, prepared = binary_data
    folder = make_external(tmp_path / "tiny", [("EXT_1", "mel"), ("EXT_SMALL", "nv")])
    Image.fromarray(textured_image(np.random.default_rng(0), 8, 10)).save(folder / "images" / "EXT_SMALL.jpg")
    with pytest.raises(DermaganError, match=r"external set 'tiny': .*EXT_SMALL.jpg \(10x8 px\)"):
        prepare_external({"tiny": folder}, prepared, raw, tmp_path / "external", binary_config())
