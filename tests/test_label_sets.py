"""Label sets from params: the label map merges, renames and drops classes; prepare stores its class
names; the source split keeps lesions whole and sends every image of the test sources to test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import make_ham_folder
from dermagan.config.schema import HAM10000_CLASSES
from dermagan.data.metadata import read_metadata, read_sources
from dermagan.data.prepare import PrepareConfig, prepare_dataset
from dermagan.data.prepared import check_classes, read_classes, read_split, read_split_table
from dermagan.data.splits import source_split
from dermagan.errors import DermaganError
from params_util import make_config


def test_label_map_merges_renames_and_drops(ham_folder: Path):
    label_map = {"akiec": "malignant", "bcc": "malignant", "mel": "malignant", "nv": "benign", "bkl": "benign",
                 "df": None, "vasc": None}
    frame = read_metadata(ham_folder / "metadata.csv", ("benign", "malignant"), label_map)
    raw = pd.read_csv(ham_folder / "metadata.csv")
    assert set(frame["dx"]) == {"benign", "malignant"}
    assert len(frame) == int((~raw["dx"].isin(["df", "vasc"])).sum())          # df and vasc rows dropped
    assert (frame.loc[frame["dx_raw"] == "bcc", "dx"] == "malignant").all()   # merged
    assert (frame["dx_raw"].isin(["akiec", "bcc", "mel"]) == (frame["dx"] == "malignant")).all()


def test_unmapped_raw_label_is_refused_by_value_and_row(ham_folder: Path):
    with pytest.raises(DermaganError) as err:
        read_metadata(ham_folder / "metadata.csv", ("benign", "malignant"), {"nv": "benign", "mel": "malignant"})
    text = str(err.value)
    assert "metadata.csv" in text and "'akiec'" in text and "line 2" in text and "data.label_map" in text


def test_label_map_onto_an_unknown_class_is_refused_at_load():
    with pytest.raises(DermaganError, match="data.label_map maps onto"):
        make_config({"data": {"classes": ["a", "b"], "label_map": {"nv": "c"}, "positive": None, "sources": None}})


def test_gan_classes_must_be_task_labels():
    with pytest.raises(DermaganError, match="not task labels"):
        make_config({"data": {"classes": ["alpha", "beta", "gamma"], "label_map": {}, "positive": None,
                              "sources": None}})  # gan.classes [akiec, df, vasc] are not among them


def test_positive_class_needs_a_binary_task():
    with pytest.raises(DermaganError, match="binary task"):
        make_config({"data": {"classes": list(HAM10000_CLASSES), "label_map": {}, "positive": "mel",
                              "sources": None}})


def made_up_config(raw: Path) -> PrepareConfig:
    label_map = {"akiec": "zeta", "bcc": "zeta", "mel": "zeta", "nv": "ypsilon", "bkl": "ypsilon", "df": "xi",
                 "vasc": None}
    return PrepareConfig(image_size=16, val_fraction=0.2, test_fraction=0.2, seed=0, classes=("xi", "ypsilon", "zeta"),
                         min_image_side=8, label_map=label_map)


def test_prepare_stores_its_class_names_and_decodes_by_them(tmp_path: Path):
    raw = make_ham_folder(tmp_path / "raw", per_class=10)
    summary = prepare_dataset(raw, tmp_path / "prepared", tmp_path / "eda", made_up_config(raw))
    assert read_classes(tmp_path / "prepared") == ("xi", "ypsilon", "zeta")
    assert set(summary["train"]["per_class"]) == {"xi", "ypsilon", "zeta"}
    table = read_split_table(tmp_path / "prepared").set_index("image_id")
    train = read_split(tmp_path / "prepared", "train")
    names = np.array(["xi", "ypsilon", "zeta"])[train.labels]
    assert (names == table.loc[train.image_ids, "dx"].to_numpy()).all()
    assert "vasc" not in set(table["dx_raw"])
    with pytest.raises(DermaganError, match="re-run `dermagan prepare`"):
        check_classes(tmp_path / "prepared", ("xi", "zeta", "ypsilon"))


def sources_frame(n_lesions: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_lesions):
        dx = rng.choice(["p", "q", "r"], p=[0.6, 0.3, 0.1])
        source = rng.choice(["north", "south", "east"])
        for k in range(int(rng.integers(1, 4))):
            rows.append({"lesion_id": f"L{i}", "image_id": f"I{i}_{k}", "dx": dx, "source": source})
    frame = pd.DataFrame(rows)
    frame.loc[frame["image_id"] == "I0_0", "source"] = "east"   # lesion L0 spans two sources
    frame.loc[frame["lesion_id"] == "L0", "source"] = ["east"] + ["north"] * (int((frame["lesion_id"] == "L0").sum()) - 1)
    return frame


def test_source_split_tests_every_image_of_the_source_and_keeps_lesions_whole():
    frame = sources_frame()
    split = source_split(frame, ("east",), 0.2, seed=0)
    frame["split"] = split.to_numpy()
    assert (frame.loc[frame["source"] == "east", "split"] == "test").all()
    assert frame.groupby("lesion_id")["split"].nunique().max() == 1
    assert (frame.loc[frame["lesion_id"] == "L0", "split"] == "test").all()  # the two-source lesion goes to test
    assert set(frame.loc[frame["split"] != "test", "source"]) == {"north", "south"}
    assert {"train", "val"} <= set(frame["split"])


def test_source_split_refuses_an_unknown_source():
    with pytest.raises(DermaganError, match=r"\['west'\] are not sources.*east"):
        source_split(sources_frame(), ("west",), 0.2, seed=0)


def test_source_split_in_prepare_reads_the_sources_file(tmp_path: Path):
    raw = make_ham_folder(tmp_path / "raw", per_class=12)
    meta = pd.read_csv(raw / "metadata.csv")
    sources = pd.DataFrame({"image_id": meta["image_id"], "lesion_id": meta["lesion_id"],
                            "dataset": np.where(meta.index % 3 == 0, "clinic_b", "clinic_a")})
    sources.to_csv(tmp_path / "sources.csv", index=False)
    base = made_up_config(raw)
    config = PrepareConfig(**{**base.__dict__, "split_by": "source", "test_sources": ("clinic_b",),
                              "sources": tmp_path / "sources.csv"})
    summary = prepare_dataset(raw, tmp_path / "prepared", tmp_path / "eda", config)
    table = read_split_table(tmp_path / "prepared")
    assert (table.loc[table["source"] == "clinic_b", "split"] == "test").all()
    assert table.groupby("lesion_id")["split"].nunique().max() == 1
    assert summary["test"]["per_source"].get("clinic_b", 0) == int((table["source"] == "clinic_b").sum())
    assert set(table.loc[table["split"] == "train", "source"]) == {"clinic_a"}   # no test-source image in train
    (tmp_path / "sources.csv").write_text("image_id,dataset\n" + f"{meta['image_id'][0]},clinic_a\n")
    with pytest.raises(DermaganError, match="no source for"):
        read_sources(tmp_path / "sources.csv", meta["image_id"])


def test_source_split_without_a_sources_file_is_refused_by_name():
    with pytest.raises(DermaganError, match="data.sources"):
        make_config({"prepare": {"split": {"by": "source", "test_sources": ["rosendahl"]}}})


def test_shipped_sources_file_matches_the_metadata(real_data: Path):
    sources_csv = real_data.parent / "ham10000_sources.csv"
    if not sources_csv.is_file():
        pytest.skip(f"{sources_csv} not found (see shared/data/README.md)")
    meta = pd.read_csv(real_data / "metadata.csv")
    source = read_sources(sources_csv, meta["image_id"])
    assert source.value_counts().to_dict() == {"vidir_molemax": 3954, "vidir_modern": 3363, "rosendahl": 2259,
                                               "vienna_dias": 439}
