"""ONNX export (dermagan.export): parity with torch, int8, the offline bundle and its predict.py, `dermagan export`.

A tiny SimpleCNN (16 px, flips TTA, a fitted-looking temperature) on random images; one sqlite MLflow
store per test that needs the registry.
"""

from __future__ import annotations

import ast
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from conftest import textured_image
from dermagan.classify import preprocess
from dermagan.classify.artifact import save_trained
from dermagan.classify.models import create_classifier
from dermagan.classify.pyfunc_model import log_classifier
from dermagan.cli import main
from dermagan.config.schema import HAM10000_CLASSES as CLASSES
from dermagan.data.prepared import SplitArrays, write_classes, write_split
from dermagan.errors import DermaganError
from dermagan.export.bench import BenchModel, ENGINES, bench_predict, markdown_table, structured_images
from dermagan.export.bundle import BUNDLE_KIND, is_bundle, preprocessing_spec, write_bundle
from dermagan.export.onnx import export_onnx, onnx_probabilities, parity, session
from dermagan.export.quantize import calibration_sample, compare_int8, quantize_int8, quantized_nodes
from dermagan.outputs import MARKER

torch.set_num_threads(1)
SIZE = 16
REPO = Path(__file__).resolve().parents[1]
BUNDLE_FILES = {"model.onnx", "model.int8.onnx", "labels.json", "preprocessing.json", "predict.py", "preprocess.py",
                "MODEL_CARD.md", "README.txt", "bundle.json", MARKER}


def tiny_model(tta: str = "flips", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = create_classifier("simple_cnn", CLASSES, SIZE, tta=tta).eval()
    model.temperature.fill_(1.7)
    return model


def images(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([textured_image(rng, SIZE, SIZE) for _ in range(n)])


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("onnx")
    model = tiny_model()
    fp32, int8 = folder / "model.onnx", folder / "model.int8.onnx"
    info = export_onnx(model, fp32)
    quant = quantize_int8(fp32, int8, images(24, seed=1))
    return {"model": model, "fp32": fp32, "int8": int8, "info": info, "quant": quant}


# --- the fp32 graph ----------------------------------------------------------------------------------

def test_fp32_graph_gives_the_torch_probabilities_at_any_batch_size(exported):
    onnx.checker.check_model(str(exported["fp32"]), full_check=True)
    graph = onnx.load(str(exported["fp32"]))
    assert [i.name for i in graph.graph.input] == ["image"] and [o.name for o in graph.graph.output] == ["probs"]
    meta = {p.key: p.value for p in graph.metadata_props}
    assert json.loads(meta["classes"]) == list(CLASSES) and meta["tta"] == "flips" and meta["image_size"] == str(SIZE)
    assert not list(exported["fp32"].parent.glob("*.data")), "one file, no external data"
    sess = session(exported["fp32"])
    assert sess.get_inputs()[0].shape[1:] == [3, SIZE, SIZE] and isinstance(sess.get_inputs()[0].shape[0], str)
    for n in (1, 5):
        x = images(n, seed=n)
        p = onnx_probabilities(sess, x)
        assert p.shape == (n, len(CLASSES)) and np.allclose(p.sum(1), 1, atol=1e-5)
    report = parity(exported["model"], exported["fp32"], images(12, seed=3))
    assert report["ok"] and report["max_abs_dp"] <= 1e-4 and report["top1_agreement"] == 1.0


def test_temperature_and_tta_are_inside_the_graph(tmp_path):
    plain = tiny_model(tta="none")
    plain.temperature.fill_(1.0)
    export_onnx(plain, tmp_path / "plain.onnx")
    x = images(4, seed=5)
    hot = tiny_model(tta="flips")  # same weights, TTA and temperature 1.7
    export_onnx(hot, tmp_path / "hot.onnx")
    p_plain = onnx_probabilities(session(tmp_path / "plain.onnx"), x)
    p_hot = onnx_probabilities(session(tmp_path / "hot.onnx"), x)
    assert np.abs(p_plain - p_hot).max() > 1e-4
    assert parity(hot, tmp_path / "hot.onnx", x)["ok"]


def test_only_classifiers_are_exported(tmp_path):
    with pytest.raises(DermaganError, match="only dermagan classifiers"):
        export_onnx(torch.nn.Linear(3, 2), tmp_path / "x.onnx")
    with pytest.raises(DermaganError, match="opset"):
        export_onnx(tiny_model(), tmp_path / "x.onnx", opset=16)


# --- int8 --------------------------------------------------------------------------------------------

def test_int8_graph_is_quantized_and_runs(exported):
    quant = exported["quant"]
    assert quant["calibration_images"] == 24 and quant["activations"] == "uint8"
    assert any(name.startswith("node_softmax") for name in quant["kept_float"]), "probabilities stay float"
    nodes = quantized_nodes(exported["int8"])
    assert nodes["quantized"].get("QLinearConv", 0) == 3 * 4, "every Conv of every TTA view"
    assert nodes["n_float_compute"] == 0
    p = onnx_probabilities(session(exported["int8"]), images(5, seed=7))
    assert p.shape == (5, len(CLASSES)) and np.allclose(p.sum(1), 1, atol=1e-4)
    assert exported["int8"].stat().st_size < exported["fp32"].stat().st_size / 2


def test_compare_int8_reports_agreement_metrics_and_paired_cis(exported):
    x, y = images(40, seed=8), np.random.default_rng(0).integers(0, len(CLASSES), 40)
    p32 = onnx_probabilities(session(exported["fp32"]), x)
    p8 = onnx_probabilities(session(exported["int8"]), x)
    result = compare_int8(p32, p8, y, n_boot=100, seed=0)
    assert {"top1_agreement", "agreement_ok", "bal_acc", "ece", "bal_acc_delta", "bal_acc_delta_ci", "ece_delta",
            "ece_delta_ci", "verdict", "n_images", "max_abs_dp"} <= set(result)
    assert set(result["bal_acc"]) == set(result["ece"]) == {"fp32", "int8"}
    same = compare_int8(p32, p32, y, n_boot=50)
    assert same["top1_agreement"] == 1 and same["bal_acc_delta"] == 0 and same["bal_acc_delta_ci"] == [0, 0]
    assert same["verdict"] == "not worse"
    truth = np.repeat(np.arange(len(CLASSES)), 12)
    right, wrong = np.eye(len(CLASSES))[truth], np.eye(len(CLASSES))[(truth + 1) % len(CLASSES)]
    assert compare_int8(right, wrong, truth, n_boot=100)["verdict"] == "worse"


def test_calibration_sample_is_bounded_and_seeded():
    x = images(30)
    a, b = calibration_sample(x, 10, seed=3), calibration_sample(x, 10, seed=3)
    assert len(a) == 10 and np.array_equal(a, b) and not np.array_equal(a, calibration_sample(x, 10, seed=4))
    assert len(calibration_sample(x, 100, seed=0)) == 30
    with pytest.raises(DermaganError):
        calibration_sample(x, 0, seed=0)


# --- the bundle ----------------------------------------------------------------------------------------

def make_bundle(exported, folder: Path) -> dict:
    return write_bundle(folder, exported["fp32"], exported["int8"], CLASSES, preprocessing_spec(SIZE, min_side=8),
                        "# Model card: tiny\n", {"source": {"registered_model": "tiny", "version": "1"}})


def top_level_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def image_folder(folder: Path) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(4)
    for i, (w, h) in enumerate([(30, 24), (20, 20), (64, 40)]):
        Image.fromarray(textured_image(rng, h, w)).save(folder / f"img{i}.png")
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    return folder


def run_predict(bundle: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    # -I: no PYTHONPATH, no script folder on sys.path; predict.py finds its sibling preprocess.py itself
    return subprocess.run([sys.executable, "-I", str(bundle / "predict.py"), *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def test_bundle_holds_everything_and_needs_only_onnxruntime_numpy_pillow(exported, tmp_path):
    doc = make_bundle(exported, tmp_path / "bundle")
    bundle = tmp_path / "bundle"
    assert {p.name for p in bundle.iterdir()} == BUNDLE_FILES
    assert is_bundle(bundle) and doc["kind"] == BUNDLE_KIND
    assert (bundle / "preprocess.py").read_bytes() == Path(preprocess.__file__).read_bytes()
    assert json.loads((bundle / "labels.json").read_text()) == {"classes": list(CLASSES)}
    prep = json.loads((bundle / "preprocessing.json").read_text())
    assert prep["image_size"] == SIZE and prep["min_side"] == 8 and prep["input_range"] == [0.0, 1.0]
    assert prep["layout"] == "NCHW" and prep["max_aspect"] == preprocess.PREPROCESSING_DEFAULTS["max_aspect"]
    assert doc["files"]["model.onnx"]["sha256"] == exported["info"]["sha256"]
    assert "python predict.py" in (bundle / "README.txt").read_text()
    stdlib = set(sys.stdlib_module_names)
    assert top_level_imports(bundle / "predict.py") - stdlib == {"numpy", "onnxruntime", "preprocess"}
    assert top_level_imports(bundle / "preprocess.py") - stdlib == {"numpy", "PIL"}


def test_bundle_predict_script_matches_the_library_path(exported, tmp_path):
    bundle = tmp_path / "bundle"
    make_bundle(exported, bundle)
    inputs = image_folder(tmp_path / "in")
    result = run_predict(bundle, str(inputs), "--out", str(tmp_path / "preds.csv"), "--threads", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "skipped notes.txt" in result.stderr and "skipped broken.jpg" in result.stderr
    # what the library does: dermagan.classify.preprocess + the same ONNX file
    files, _ = preprocess.collect_inputs(inputs)
    x, ids, _ = preprocess.load_batch(files, SIZE, 8)
    proba = onnx_probabilities(session(exported["fp32"]), x)
    rows = read_csv(tmp_path / "preds.csv")
    assert rows[0] == ["image_id", "pred_dx", *[f"prob_{c}" for c in CLASSES]]
    assert [r[0] for r in rows[1:]] == ids == ["img0", "img1", "img2"]
    assert [r[1] for r in rows[1:]] == [CLASSES[i] for i in proba.argmax(1)]
    assert np.allclose(np.array([r[2:] for r in rows[1:]], dtype=float), proba, atol=1e-7)
    again = run_predict(bundle, str(inputs), "--out", str(tmp_path / "preds.csv"), "--int8", cwd=tmp_path)
    assert again.returncode == 0, again.stderr  # replaces its own earlier predictions
    p8 = np.array([r[2:] for r in read_csv(tmp_path / "preds.csv")[1:]], dtype=float)
    assert np.abs(p8 - proba).max() < 0.05


def test_bundle_predict_script_refuses_what_it_should(exported, tmp_path):
    bundle = tmp_path / "bundle"
    make_bundle(exported, bundle)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("x")
    nothing = run_predict(bundle, str(empty), "--out", str(tmp_path / "p.csv"), cwd=tmp_path)
    assert nothing.returncode == 1 and "nothing to predict" in nothing.stderr and not (tmp_path / "p.csv").exists()
    foreign = tmp_path / "notes.csv"
    foreign.write_text("my,own,table\n1,2,3\n")
    inputs = image_folder(tmp_path / "in")
    refused = run_predict(bundle, str(inputs), "--out", str(foreign), cwd=tmp_path)
    assert refused.returncode == 2 and "not replaced" in refused.stderr
    assert foreign.read_text() == "my,own,table\n1,2,3\n"
    with open(bundle / "model.onnx", "ab") as fh:
        fh.write(b"\0")
    tampered = run_predict(bundle, str(inputs), "--out", str(tmp_path / "p.csv"), cwd=tmp_path)
    assert tampered.returncode == 2 and "checksum" in tampered.stderr


def test_bundle_replaces_only_an_earlier_bundle(exported, tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(DermaganError, match="did not write"):
        make_bundle(exported, foreign)
    assert (foreign / "thesis.tex").read_text() == "precious" and len(list(foreign.iterdir())) == 1
    other_output = tmp_path / "other"
    other_output.mkdir()
    (other_output / MARKER).write_text("{}")
    (other_output / "data.npz").write_text("x")
    with pytest.raises(DermaganError, match="not an export bundle"):
        make_bundle(exported, other_output)
    assert (other_output / "data.npz").exists()
    bundle = tmp_path / "bundle"
    make_bundle(exported, bundle)
    (bundle / "stale.txt").write_text("old")
    make_bundle(exported, bundle)
    assert {p.name for p in bundle.iterdir()} == BUNDLE_FILES
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


# --- the benchmark -----------------------------------------------------------------------------------

def test_bench_times_every_engine_and_thread_count(exported):
    spec = BenchModel("tiny", exported["model"], exported["fp32"], exported["int8"], images(4), "random test images")
    doc = bench_predict([spec], threads=(1, 2), batch_size=4, repeats=3, batch_repeats=1, warmup=1)
    assert [(r["engine"], r["threads"]) for r in doc["rows"]] == [(e, t) for t in (1, 2) for e in ENGINES]
    for row in doc["rows"]:
        assert row["p50_ms"] > 0 and row["p95_ms"] >= row["p50_ms"] and row["batch_images_per_s"] > 0
        assert row["bytes"] > 0
    assert all(r["speedup_p50_vs_torch"] == 1 for r in doc["rows"] if r["engine"] == "torch")
    table = markdown_table(doc)
    assert table.count("| tiny |") == 6 and "random test images" in table and "Pixel 4" in table
    synthetic = structured_images(3, 24, seed=0)
    assert synthetic.shape == (3, 24, 24, 3) and synthetic.dtype == np.uint8 and synthetic.std() > 5


# --- `dermagan export` against a registry ---------------------------------------------------------------

def prepared_folder(root: Path) -> Path:
    root.mkdir()
    write_classes(root, CLASSES)
    for k, (name, n) in enumerate({"train": 28, "val": 14, "test": 28}.items()):
        labels = np.arange(n) % len(CLASSES)
        write_split(root, name, SplitArrays(images(n, seed=10 + k), labels, np.array([f"{name}{i}" for i in
                                                                                      range(n)])))
    return root


@pytest.fixture
def store(tracking: str):
    """The test's sqlite store, also as MLflow's current URI (`main` sets it process-wide; reset afterwards)."""
    mlflow.set_tracking_uri(tracking)
    yield tracking
    mlflow.set_tracking_uri(None)


def test_export_command_bundles_logs_and_tags_the_version(store, tmp_path, capsys):
    model = tiny_model()
    name = "tiny-export"
    with mlflow.start_run() as run:
        info = log_classifier(model, "simple_cnn", "flips", SIZE, name, min_side=8)
    client = mlflow.MlflowClient()
    version = str(info.registered_model_version)
    client.set_registered_model_alias(name, "champion", version)
    prepared = prepared_folder(tmp_path / "prepared")
    params = str(REPO / "params.yaml")
    foreign = tmp_path / "taken"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    assert main(["export", "--params", params, "--model", f"models:/{name}@champion", "--prepared", str(prepared),
                 "--out", str(foreign)]) == 2
    assert "did not write" in capsys.readouterr().err and (foreign / "keep.txt").exists()

    out = tmp_path / "bundle"
    assert main(["export", "--params", params, "--model", f"models:/{name}@champion", "--prepared", str(prepared),
                 "--out", str(out), "--calibration-count", "8"]) == 0
    printed = capsys.readouterr().out
    assert f"exported {name} v{version}" in printed and "int8 on 28 test images" in printed
    assert BUNDLE_FILES | {"parity.json"} == {p.name for p in out.iterdir()}
    report = json.loads((out / "parity.json").read_text())
    assert report["parity"]["split"] == "val" and report["parity"]["n_images"] == 14 and report["parity"]["ok"]
    assert report["int8_vs_fp32"]["n_images"] == 28 and report["onnx_int8"]["calibration_images"] == 8
    assert json.loads((out / "preprocessing.json").read_text())["min_side"] == 8
    tags = client.get_model_version(name, version).tags
    manifest = json.loads((out / "bundle.json").read_text())
    assert tags["onnx_sha256"] == manifest["files"]["model.onnx"]["sha256"]
    assert tags["onnx_int8_bytes"] == str(manifest["files"]["model.int8.onnx"]["bytes"])
    for key in ("onnx_max_abs_dp", "int8_top1_agreement", "int8_bma_delta", "int8_bma_delta_ci", "int8_verdict"):
        assert key in tags
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "onnx")}
    assert logged == {"onnx/model.onnx", "onnx/model.int8.onnx", "onnx/parity.json"}

    bench = tmp_path / "bench" / "predict.json"
    assert main(["bench-predict", "--params", params, "--model", f"models:/{name}/{version}", "--prepared",
                 str(prepared), "--out", str(bench), "--no-reference", "--threads", "1", "--repeats", "2",
                 "--batch-size", "4", "--calibration-count", "8"]) == 0
    assert "| onnx-int8 | 1 |" in capsys.readouterr().out
    doc = json.loads(bench.read_text())
    assert [r["engine"] for r in doc["rows"]] == list(ENGINES) and bench.with_suffix(".md").is_file()
    assert doc["rows"][2]["calibration"] == "real train images (8)"


def test_export_refuses_an_ensemble_version(store, tmp_path, capsys):
    from dermagan.ensemble.model import log_ensemble

    member = tmp_path / "member"
    member.mkdir()
    model = tiny_model(tta="none")
    save_trained(member, model, "simple_cnn", "none", CLASSES, SIZE, {"run_id": None})
    with mlflow.start_run():
        info = log_ensemble({"a": member}, np.array([1.0]), CLASSES, SIZE, "tiny-ensemble")
    uri = f"models:/tiny-ensemble/{info.registered_model_version}"
    assert main(["export", "--params", str(REPO / "params.yaml"), "--model", uri,
                 "--prepared", str(prepared_folder(tmp_path / "prepared")), "--out", str(tmp_path / "b")]) == 2
    assert "ensembles are not exported" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
