"""Images too large to decode (Pillow's decompression-bomb guard): named and skipped by predict,
a clean error (no traceback, no outputs) from `dermagan prepare`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_ham_folder, oversize_jpeg, params_file, textured_image
from dermagan.classify.models import create_classifier
from dermagan.classify.predict import predict_folder
from dermagan.cli import main
from dermagan.config.schema import HAM10000_CLASSES as CLASSES
from dermagan.data.images import open_rgb
from dermagan.errors import DermaganError


def user_folder(folder: Path) -> Path:
    """Two ordinary photos, one 20000x20000 px (over 2x the limit: Pillow raises) and one
    10000x10000 px (between 1x and 2x: Pillow only warns, dermagan refuses it too)."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a_good.jpg", "c_good.jpg"):
        Image.fromarray(textured_image(rng, 45, 60)).save(folder / name, quality=90)
    oversize_jpeg(folder / "b_huge.jpg", 20000, 20000)
    oversize_jpeg(folder / "d_big.jpg", 10000, 10000)
    return folder


def test_open_rgb_refuses_images_over_the_pixel_limit(tmp_path):
    folder = user_folder(tmp_path / "photos")
    limit = Image.MAX_IMAGE_PIXELS
    with pytest.raises(DermaganError, match=r"b_huge\.jpg: image is too large .*400,000,000 pixels.*"
                                            rf"limit is {limit:,} pixels"):
        open_rgb(folder / "b_huge.jpg", strict=False)
    with pytest.raises(DermaganError, match=r"d_big\.jpg: image is too large .*100,000,000 pixels"):
        open_rgb(folder / "d_big.jpg", strict=False)
    assert Image.MAX_IMAGE_PIXELS == limit, "the global Pillow limit must not change"


def test_predict_skips_the_huge_image_and_predicts_the_others(tmp_path):
    folder = user_folder(tmp_path / "photos")
    model = create_classifier("simple_cnn", CLASSES, 32)
    frame, skipped = predict_folder(model, folder)
    assert frame["image_id"].tolist() == ["a_good", "c_good"]
    assert set(frame["pred_dx"]) <= set(CLASSES)
    np.testing.assert_allclose(frame[[f"prob_{c}" for c in CLASSES]].sum(axis=1), 1.0, rtol=1e-5)
    assert [name for name, _ in skipped] == ["b_huge.jpg", "d_big.jpg"]
    assert all(f"{name}: image is too large" in reason for name, reason in skipped)


def test_cli_prepare_names_the_huge_image_and_exits_2(tmp_path, capsys):
    raw = make_ham_folder(tmp_path / "raw", per_class=6)
    oversize_jpeg(raw / "images" / "ISIC_0000004.jpg")
    params = params_file(tmp_path / "cfg", prepare={"image_size": 32, "val_fraction": 0.2, "test_fraction": 0.2,
                                                    "seed": 0, "min_image_side": 16})
    out, eda = tmp_path / "prepared", tmp_path / "eda"
    code = main(["prepare", "--params", str(params), "--raw", str(raw), "--out", str(out), "--eda", str(eda)])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # earlier lines: the tqdm progress bar
    assert code == 2 and "Traceback" not in err
    assert last.startswith("dermagan prepare: error: ")
    assert "ISIC_0000004.jpg: image is too large" in last and "400,000,000 pixels" in last
    assert not out.exists() and not eda.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary folders left behind"
