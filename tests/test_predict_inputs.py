"""`dermagan predict`'s input rules (dermagan.classify.preprocess): what is read and what is skipped and
named, unique ids, the refusals prepare makes too, CSV escaping, a safe --out, a single file, the device,
bounded memory for thin images, and the same pixels as training."""

from __future__ import annotations

import ast
import csv
import errno
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import tracemalloc
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import textured_image
from dermagan.classify import preprocess
from dermagan.classify.models import create_classifier
from dermagan.classify.predict import predict_folder
from dermagan.classify.pyfunc_model import log_classifier
from dermagan.classify.preprocess import (PREPROCESSING_DEFAULTS, InputError, collect_inputs, csv_safe, image_ids,
                                          load_batch, load_image, write_predictions_csv)
from dermagan.cli import build_parser, main
from dermagan.config.schema import HAM10000_CLASSES as CLASSES
from dermagan.data import images as data_images

NAME = "predict-inputs"
SIZE = 32
ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False


# --- helpers -------------------------------------------------------------------------------------

def photo(path: Path, width: int = 60, height: int = 45, seed: int = 0, **save) -> Path:
    Image.fromarray(textured_image(np.random.default_rng(seed), height, width)).save(path, **save)
    return path


def image_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


@pytest.fixture(autouse=True)
def no_hang():
    """A FIFO that gets opened blocks forever: fail instead."""
    def boom(*_):
        raise TimeoutError("predict blocked (opened a FIFO or device?)")
    previous = signal.signal(signal.SIGALRM, boom)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A sqlite MLflow store with a tiny real classifier (untrained simple_cnn) logged as the train stage
    logs one: NAME v1 with min_side 32, v2 the same network with min_side 16."""
    root = tmp_path_factory.mktemp("store")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.chdir(root)
        mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
        mlflow.set_experiment("predict-inputs")  # not the experiment an earlier test made active elsewhere
        torch.manual_seed(0)
        model = create_classifier("simple_cnn", CLASSES, SIZE)
        for min_side in (32, 16):
            with mlflow.start_run():
                log_classifier(model, "simple_cnn", "none", SIZE, NAME, min_side)
    return root


@pytest.fixture
def predict(store, monkeypatch, capsys):
    """Run `dermagan predict ARGS [--model models:/NAME/1]`: (exit code, stdout, stderr)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
    monkeypatch.chdir(store)

    def run(*args) -> tuple[int, str, str]:
        model = [] if "--model" in args else ["--model", f"models:/{NAME}/1"]
        code = main(["predict", *map(str, args), *model])
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        return code, out, err
    return run


def refuse_writes_in(monkeypatch, folder: Path) -> None:
    """As root a chmod 555 folder is still writable: make temporary files there fail as for anyone else."""
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).resolve() == folder.resolve():
            raise PermissionError(errno.EACCES, "Permission denied", str(folder))
        return real(*args, dir=dir, **kwargs)
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


# --- (a) every skipped entry is named; nothing but a regular file is opened ---------------------

def odd_folder(folder: Path) -> Path:
    folder.mkdir()
    photo(folder / "good.jpg")
    photo(folder / "more.PNG", seed=1)
    os.mkfifo(folder / "pipe.jpg")
    (folder / "x.jpg").mkdir()
    (folder / "dangling.jpg").symlink_to(folder / "nowhere.jpg")
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")
    (folder / "zero.jpg").symlink_to("/dev/zero")
    (folder / "notes.txt").write_text("not an image\n")
    return folder


def test_collect_inputs_names_every_skipped_entry_and_opens_none(tmp_path):
    folder = odd_folder(tmp_path / "photos")
    short = Path(tempfile.mkdtemp(prefix="sock", dir="/tmp"))  # AF_UNIX paths are limited to ~100 chars
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(short / "s.jpg"))
            (folder / "sock.jpg").symlink_to(short / "s.jpg")
            files, skipped = collect_inputs(folder)
    finally:
        shutil.rmtree(short)
    assert [p.name for p in files] == ["good.jpg", "more.PNG"]
    reasons = dict(skipped)
    assert sorted(reasons) == ["dangling.jpg", "loop.jpg", "notes.txt", "pipe.jpg", "sock.jpg", "x.jpg", "zero.jpg"]
    assert "FIFO" in reasons["pipe.jpg"] and "folder" in reasons["x.jpg"]
    assert "broken symbolic link" in reasons["dangling.jpg"] and "loop" in reasons["loop.jpg"]
    assert "character device" in reasons["zero.jpg"] and "socket" in reasons["sock.jpg"]
    assert "suffix '.txt'" in reasons["notes.txt"]


def test_cli_names_every_skipped_entry_on_stderr(predict, tmp_path):
    folder = odd_folder(tmp_path / "photos")
    code, out, err = predict(folder, "--out", tmp_path / "preds.csv")
    assert code == 0, err
    assert [row[0] for row in read_rows(tmp_path / "preds.csv")[1:]] == ["good", "more"]
    for name in ("pipe.jpg", "x.jpg", "dangling.jpg", "loop.jpg", "zero.jpg", "notes.txt"):
        assert f"skipped {name}: " in err, name
    assert "wrote 2 predictions" in out and "6 unreadable file(s) skipped" in out


def test_missing_or_odd_input_path_is_an_error_naming_it(tmp_path):
    for path, words in ((tmp_path / "absent", "not found"), (tmp_path / "notes.txt", "suffix '.txt'")):
        if "txt" in path.name:
            path.write_text("x")
        with pytest.raises(InputError, match=rf"{path.name}: .*{words}"):
            collect_inputs(path)
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(InputError, match="pipe: a FIFO"):
        collect_inputs(tmp_path / "pipe")


# --- (b) nothing predictable: an error naming the input, no CSV ----------------------------------

def test_nothing_readable_exits_2_naming_the_input_and_writes_no_csv(predict, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    (folder / "notes.txt").write_text("x")
    out = tmp_path / "preds.csv"
    code, _, err = predict(folder, "--out", out)
    assert code == 2 and f"dermagan predict: error: {folder}: nothing to predict" in err
    assert "broken.jpg" in err and "notes.txt" in err
    assert not out.exists() and leftovers(tmp_path) == []

    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = predict(empty, "--out", out)
    assert code == 2 and f"{empty}: nothing to predict, the folder holds no .jpg/.jpeg/.png file" in err
    code, _, err = predict(tmp_path / "absent", "--out", out)
    assert code == 2 and f"{tmp_path / 'absent'}: not found" in err
    assert not out.exists()


# --- (c) unique ids ------------------------------------------------------------------------------

def test_image_ids_are_stems_unless_shared_then_full_names():
    assert image_ids([Path("a/ISIC_1.jpg"), Path("a/ISIC_2.png")]) == ["ISIC_1", "ISIC_2"]
    assert image_ids(["dup.jpg", "dup.png", "other.jpeg"]) == ["dup.jpg", "dup.png", "other"]
    # a stem equal to another file's full name keeps its full name too
    ids = image_ids(["dup.jpg", "dup.png", "dup.jpg.png", "x.png.jpg", "x.png"])
    assert ids == ["dup.jpg", "dup.png", "dup.jpg.png", "x.png.jpg", "x"] and len(set(ids)) == len(ids)
    with pytest.raises(InputError, match="repeat the file name"):
        image_ids(["a/p.jpg", "b/p.jpg"])


def test_cli_ids_are_unique(predict, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("dup.jpg", "dup.png", "solo.jpg"):
        photo(folder / name)
    code, _, err = predict(folder, "--out", tmp_path / "preds.csv")
    assert code == 0, err
    assert [row[0] for row in read_rows(tmp_path / "preds.csv")[1:]] == ["dup.jpg", "dup.png", "solo"]


# --- (d) the images prepare refuses --------------------------------------------------------------

def test_16_bit_and_tiny_images_are_refused_by_name(predict, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(np.full((40, 40), 40000, np.uint16)).save(folder / "deep.png")
    with Image.open(folder / "deep.png") as deep:
        assert deep.mode.startswith("I;16")
    Image.new("RGB", (1, 1), (90, 40, 30)).save(folder / "dot.png")
    photo(folder / "fine.jpg")
    with pytest.raises(InputError, match=r"deep\.png: image mode is I;16 \(16-bit greyscale\)"):
        load_image(folder / "deep.png", SIZE)
    with pytest.raises(InputError, match=r"dot\.png: image is 1x1 px, its shorter side is below the minimum 32"):
        load_image(folder / "dot.png", SIZE)
    code, _, err = predict(folder, "--out", tmp_path / "preds.csv")
    assert code == 0 and "skipped deep.png: " in err and "I;16" in err and "skipped dot.png: " in err
    assert [row[0] for row in read_rows(tmp_path / "preds.csv")[1:]] == ["fine"]


def test_min_side_comes_from_the_flag_else_the_model_else_the_default(predict, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    photo(folder / "small.jpg", 24, 20)
    photo(folder / "fine.jpg")
    ids = {}
    for label, args in (("v1", ()), ("v2", ("--model", f"models:/{NAME}/2")), ("flag", ("--min-side", 8))):
        code, _, err = predict(folder, "--out", tmp_path / f"{label}.csv", *args)
        assert code == 0, err
        ids[label] = [row[0] for row in read_rows(tmp_path / f"{label}.csv")[1:]]
    assert ids == {"v1": ["fine"], "v2": ["fine", "small"], "flag": ["fine", "small"]}
    code, _, err = predict(folder, "--out", tmp_path / "bad.csv", "--max-aspect", "0.5")
    assert code == 2 and "--max-aspect >= 1" in err


def test_8_bit_modes_are_converted_to_rgb(tmp_path):
    rgb = textured_image(np.random.default_rng(3), 45, 60)
    Image.fromarray(rgb).convert("L").save(tmp_path / "grey.png")
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "alpha.png")
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.png")
    Image.fromarray(rgb).convert("LA").save(tmp_path / "grey_alpha.png")
    for name in ("grey.png", "alpha.png", "palette.png", "grey_alpha.png"):
        array = load_image(tmp_path / name, SIZE)
        assert array.shape == (SIZE, SIZE, 3) and array.dtype == np.uint8
        assert 20 < array.mean() < 235, name  # not white


# --- (e) CSV escaping ----------------------------------------------------------------------------

def test_csv_safe_escapes_formula_starts_only():
    for text in ("=1+2", "+A1", "-2", "@SUM(A1)", "\tx", "\rx"):
        assert csv_safe(text) == "'" + text
    for text in ("ISIC_0001", "a=b", "", "'=x"):
        assert csv_safe(text) == text


def test_cli_escapes_file_names_a_spreadsheet_would_run(predict, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, name in enumerate(('=HYPERLINK("x").jpg', "+1.jpg", "-2.jpg", "@cmd.jpg", 'plain, "quoted".jpg')):
        photo(folder / name, seed=i)
    code, _, err = predict(folder, "--out", tmp_path / "preds.csv")
    assert code == 0, err
    rows = read_rows(tmp_path / "preds.csv")
    assert rows[0][:2] == ["image_id", "pred_dx"] and len(rows[0]) == 2 + len(CLASSES)
    assert sorted(row[0] for row in rows[1:]) == sorted(["'+1", "'-2", "'=HYPERLINK(\"x\")", "'@cmd",
                                                         'plain, "quoted"'])
    assert all(np.isclose(sum(map(float, row[2:])), 1.0, atol=1e-5) for row in rows[1:])


# --- (f) a bad --out: a clear error, nothing left behind -----------------------------------------

def test_write_predictions_csv_refuses_bad_paths_and_leaves_nothing(tmp_path, monkeypatch):
    header, rows = ["image_id", "p"], [["a", 0.5]]
    (tmp_path / "folder").mkdir()
    monkeypatch.chdir(tmp_path)
    for out, words in ((tmp_path / "folder", "is a folder"), (Path("."), "is a folder"),
                       (tmp_path / "absent" / "p.csv", "does not exist")):
        with pytest.raises(InputError, match=words) as caught:
            write_predictions_csv(header, rows, out)
        assert str(out) in str(caught.value)
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(0o555)
    if ROOT:  # root writes anywhere: make the folder refuse as it would refuse anyone else
        refuse_writes_in(monkeypatch, readonly)
    with pytest.raises(InputError, match=r"readonly/p\.csv: cannot be written .*Permission denied"):
        write_predictions_csv(header, rows, readonly / "p.csv")
    monkeypatch.undo()
    readonly.chmod(0o755)

    def failing():
        yield ["a", 0.5]
        raise RuntimeError("disk on fire")
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_predictions_csv(header, failing(), tmp_path / "p.csv")
    assert not (tmp_path / "p.csv").exists()
    assert leftovers(tmp_path) == [] and leftovers(readonly) == []
    write_predictions_csv(header, rows, tmp_path / "p.csv")
    assert read_rows(tmp_path / "p.csv") == [["image_id", "p"], ["a", "0.5"]] and leftovers(tmp_path) == []


def test_cli_bad_out_is_a_clear_error_with_no_temporary_file(predict, tmp_path, monkeypatch):
    folder = tmp_path / "photos"
    folder.mkdir()
    photo(folder / "a.jpg")
    (tmp_path / "outdir").mkdir()
    code, _, err = predict(folder, "--out", tmp_path / "outdir")
    assert code == 2 and f"--out {tmp_path / 'outdir'}: is an existing folder" in err
    code, _, err = predict(folder, "--out", ".")
    assert code == 2 and "--out .: is the current folder" in err
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(0o555)
    if ROOT:
        refuse_writes_in(monkeypatch, readonly)
    code, _, err = predict(folder, "--out", readonly / "p.csv")
    readonly.chmod(0o755)
    assert code == 2 and f"{readonly / 'p.csv'}" in err and ("read-only" in err or "Permission denied" in err)
    assert list(readonly.iterdir()) == [] and list((tmp_path / "outdir").iterdir()) == []
    assert leftovers(tmp_path) == []


# --- (g) one image file --------------------------------------------------------------------------

def test_a_single_image_file_is_predicted(predict, tmp_path):
    image = photo(tmp_path / "lesion.jpg")
    assert collect_inputs(image) == ([image], [])
    code, out, err = predict(image, "--out", tmp_path / "preds.csv")
    assert code == 0, err
    rows = read_rows(tmp_path / "preds.csv")
    assert len(rows) == 2 and rows[1][0] == "lesion" and rows[1][1] in CLASSES
    assert "wrote 1 predictions" in out
    (tmp_path / "dot.png").write_bytes(b"not a png")
    code, _, err = predict(tmp_path / "dot.png", "--out", tmp_path / "dot.csv")
    assert code == 2 and f"{tmp_path / 'dot.png'}: nothing to predict" in err and "cannot decode" in err
    assert not (tmp_path / "dot.csv").exists()


# --- (h) the device ------------------------------------------------------------------------------

def test_cli_device_option(predict, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    photo(folder / "a.jpg")
    code, _, err = predict(folder, "--out", tmp_path / "cpu.csv", "--device", "cpu")
    assert code == 0, err
    code, _, err = predict(folder, "--out", tmp_path / "auto.csv", "--device", "auto")
    assert code == 0, err
    cpu, auto = (np.array(read_rows(tmp_path / f"{k}.csv")[1][2:], dtype=float) for k in ("cpu", "auto"))
    np.testing.assert_allclose(auto, cpu, atol=1e-4)
    if not torch.cuda.is_available():
        code, _, err = predict(folder, "--out", tmp_path / "cuda.csv", "--device", "cuda")
        assert code == 2 and "--device cuda: no CUDA device is available" in err
        assert not (tmp_path / "cuda.csv").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_predict_on_cuda_matches_cpu(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(5):
        photo(folder / f"img_{i}.jpg", seed=i)
    torch.manual_seed(0)
    model = create_classifier("simple_cnn", CLASSES, SIZE)
    on_cpu, _ = predict_folder(model, folder, device="cpu")
    on_gpu, _ = predict_folder(model, folder, device="cuda")
    assert next(model.parameters()).device.type == "cuda"
    cols = [f"prob_{c}" for c in CLASSES]
    np.testing.assert_allclose(on_gpu[cols].to_numpy(), on_cpu[cols].to_numpy(), atol=1e-4)


# --- (i) thin images are refused before they are decoded or scaled up -----------------------------

def test_thin_image_is_refused_from_its_header_in_small_memory(tmp_path):
    thin = tmp_path / "thin.png"
    Image.new("RGB", (1, 100_000), (120, 60, 40)).save(thin)
    assert thin.stat().st_size < 1_000_000
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match=r"thin\.png: image is 1x100000 px, an aspect ratio of 100000\.0, "
                                             r"above the maximum 4"):
            load_image(thin, SIZE, min_side=1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    # Pillow's pixel buffers are malloc'ed outside tracemalloc: measure the process's peak RSS too
    script = textwrap.dedent(f"""
        import resource, sys
        sys.path.insert(0, {str(Path(preprocess.__file__).parent)!r})
        import preprocess
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            preprocess.load_image({str(thin)!r}, {SIZE}, min_side=1)
        except preprocess.InputError:
            pass
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
    """)
    grown_kib = int(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                   check=True).stdout)
    assert grown_kib < 20 * 1024, f"peak RSS grew by {grown_kib / 1024:.0f} MiB"


def test_aspect_limit_passes_ham10000_shapes_and_refuses_strips(tmp_path):
    assert PREPROCESSING_DEFAULTS == {"min_side": 32, "max_aspect": 4.0}
    for width, height in ((600, 450), (150, 112), (450, 600), (128, 32)):
        assert load_image(photo(tmp_path / f"{width}x{height}.jpg", width, height), SIZE).shape == (SIZE, SIZE, 3)
    with pytest.raises(InputError, match=r"40x4000 px, an aspect ratio of 100\.0"):
        load_image(photo(tmp_path / "strip.png", 40, 4000), SIZE)


# --- the same pixels as training; one copy of the resize; a lone file ----------------------------

def old_load_image_array(path: Path, size: int) -> np.ndarray:
    """data/images.load_image_array(strict=False) as it was before issue 16, kept as the oracle."""
    with Image.open(path) as img:
        img.load()
        image = img.copy()
    if image.mode != "RGB":
        image = image.convert("RGB")
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    resized = image.resize((new_w, new_h), Image.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.uint8)


def test_load_image_is_byte_identical_to_the_training_preprocessing(tmp_path):
    cases = [photo(tmp_path / "ham_small.jpg", 150, 112, quality=90), photo(tmp_path / "ham.jpg", 600, 450, seed=1),
             photo(tmp_path / "portrait.png", 45, 60, seed=2), photo(tmp_path / "odd.png", 33, 97, seed=3)]
    Image.open(cases[2]).convert("L").save(tmp_path / "grey.png")
    cases.append(tmp_path / "grey.png")
    for path in cases:
        for size in (32, 64, 224):
            new = load_image(path, size, min_side=1)
            assert new.dtype == np.uint8 and new.shape == (size, size, 3)
            assert np.array_equal(new, old_load_image_array(path, size)), (path.name, size)
            assert np.array_equal(new, data_images.load_image_array(path, size, strict=False)), (path.name, size)
    for path in cases:  # an open binary file (the pyfunc's base64 cells) gives the same pixels
        assert np.array_equal(load_image(io.BytesIO(path.read_bytes()), 64), old_load_image_array(path, 64))
    with pytest.raises(InputError, match=r"^image: image is 1x1 px"):
        load_image(io.BytesIO(image_bytes(Image.new("RGB", (1, 1)))), 64)
    images, ids, skipped = load_batch(cases, 32)
    assert ids == [p.stem for p in cases] and not skipped
    assert np.array_equal(images, np.stack([old_load_image_array(p, 32) for p in cases]))


def test_one_copy_of_the_resize():
    assert data_images.resize_center_crop is preprocess.resize_center_crop
    src = Path(preprocess.__file__).parents[1]
    defs = [str(p.relative_to(src)) for p in src.rglob("*.py")
            if any(isinstance(n, ast.FunctionDef) and n.name == "resize_center_crop" for n in ast.walk(ast.parse(
                p.read_text())))]
    assert defs == ["classify/preprocess.py"]


def test_preprocess_is_a_lone_file_of_stdlib_numpy_and_pillow(tmp_path):
    tree = ast.parse(Path(preprocess.__file__).read_text())
    roots = {alias.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for alias in n.names}
    roots |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert roots - {"numpy", "PIL", "__future__"} <= set(sys.stdlib_module_names), roots
    shutil.copy(preprocess.__file__, tmp_path / "preprocess.py")
    photo(tmp_path / "a.jpg")
    script = ("import sys, preprocess; files, skipped = preprocess.collect_inputs('a.jpg'); "
              "x, ids, _ = preprocess.load_batch(files, 32); "
              "preprocess.write_predictions_csv(['image_id'], [[i] for i in ids], 'out.csv'); "
              "assert 'dermagan' not in sys.modules and 'torch' not in sys.modules; print(x.shape)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", script + "; print(preprocess.__file__)"], cwd=tmp_path,
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["(1,", "32,", "32,", "3)", str(tmp_path / "preprocess.py")]
    assert (tmp_path / "out.csv").read_bytes() == b"image_id\na\n"


def test_predict_help_shows_the_preprocessing_defaults():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    text = sub.choices["predict"].format_help()
    assert "INPUT" in text and "an image file or a folder" in text and "--device" in text
    assert f"min_side, else {PREPROCESSING_DEFAULTS['min_side']})" in text
    assert f"max_aspect, else {PREPROCESSING_DEFAULTS['max_aspect']:g})" in text
