"""Bad input through the CLI: a clear ``dermagan <cmd>: error: ...`` (exit code 2) naming the file, key,
line, URI or version, fast, with nothing lost or modified.

Covers: corrupt Optuna journals (tune), broken MLflow tracking stores and bad versions (promote),
image ids that leave images/ and a looping images/ symlink (prepare), implausible ages (validate),
and ``dermagan ui`` without the venv on PATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from conftest import REPO, make_ham_folder, textured_image
from dermagan import cli
from dermagan.errors import DermaganError
from dermagan.tracking.setup import SQLITE_HEADER, check_tracking_uri
from dermagan.tuning.study import check_journal, make_storage

FAST = 5.0  # seconds: every refusal below must come well within this


def params_copy(tmp_path: Path, **blocks) -> Path:
    """A copy of the project's params.yaml (and the tuned files it names) in tmp_path, blocks updated."""
    (tmp_path / "params").mkdir(exist_ok=True)
    for tuned in (REPO / "params").glob("*.yaml"):
        shutil.copy(tuned, tmp_path / "params" / tuned.name)
    path = tmp_path / "params.yaml"
    if blocks:
        params = yaml.safe_load((REPO / "params.yaml").read_text())
        for block, values in blocks.items():
            params[block] = {**params[block], **values}
        path.write_text(yaml.safe_dump(params, sort_keys=False))
    else:
        shutil.copy(REPO / "params.yaml", path)
    return path


def run_cli(argv: list[str], capsys) -> tuple[int, str, float]:
    """(exit code, stderr, seconds) of ``dermagan ARGV`` run in this process."""
    capsys.readouterr()
    started = time.perf_counter()
    code = cli.main(argv)
    seconds = time.perf_counter() - started
    return code, capsys.readouterr().err, seconds


def assert_refused(code: int, err: str, command: str, *needles: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    prefix = f"dermagan {command}: error: "
    assert prefix in err, err
    err = err[err.index(prefix):]  # MLflow may log INFO lines to stderr before it
    for needle in needles:
        assert needle in err, f"{needle!r} not in: {err}"


# --- 1. tune: Optuna journal ---------------------------------------------------------------------

@pytest.fixture
def journal_lines(tmp_path: Path) -> list[bytes]:
    """The lines of a real journal written by Optuna (a study with two finished trials)."""
    import optuna

    path = tmp_path / "made.journal"
    study = optuna.create_study(study_name="s", storage=make_storage(str(path)))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    lines = path.read_bytes().splitlines(keepends=True)
    assert len(lines) > 4 and all(line.endswith(b"\n") for line in lines)
    return lines


def broken_journal(lines: list[bytes], kind: str) -> tuple[bytes, int]:
    """(journal bytes, the 1-based line the error must name)."""
    if kind == "garbage line":
        return b"".join(lines[:3] + [b"not json at all {\n"] + lines[3:]), 4
    if kind == "truncated last line":
        return b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2], len(lines)
    if kind == "json but not an object":
        return b"".join(lines[:2] + [b"[1, 2]\n"] + lines[2:]), 3
    if kind == "blank line":
        return b"".join(lines[:1] + [b"\n"] + lines[1:]), 2
    raise AssertionError(kind)


KINDS = ["garbage line", "truncated last line", "json but not an object", "blank line"]


@pytest.mark.parametrize("kind", KINDS)
def test_corrupt_journal_is_refused_by_file_and_line_and_left_alone(journal_lines, tmp_path, kind):
    data, line = broken_journal(journal_lines, kind)
    path = tmp_path / "tuning" / "broken.journal"
    path.parent.mkdir()
    path.write_bytes(data)
    with pytest.raises(DermaganError) as info:
        make_storage(str(path))
    message = str(info.value)
    assert str(path) in message and f"line {line} " in message
    assert "git checkout" in message and "not modified" in message
    if kind == "truncated last line":
        keep = len(b"".join(journal_lines[:-1]))
        assert f"truncate -s {keep} {path}" in message
    assert path.read_bytes() == data
    assert sorted(p.name for p in path.parent.iterdir()) == ["broken.journal"]  # no lock left behind


def test_good_and_empty_journals_open(journal_lines, tmp_path):
    good = tmp_path / "good.journal"
    good.write_bytes(b"".join(journal_lines))
    check_journal(good)
    empty = tmp_path / "empty.journal"
    empty.write_bytes(b"")
    check_journal(empty)
    check_journal(tmp_path / "not-yet.journal")  # Optuna creates it
    folder = tmp_path / "folder.journal"
    folder.mkdir()
    with pytest.raises(DermaganError, match="is a folder"):
        check_journal(folder)


def test_project_journals_parse():
    for path in sorted((REPO / "tuning").glob("*.journal")):
        check_journal(path)


@pytest.mark.parametrize("kind", ["garbage line", "truncated last line"])
def test_tune_cli_refuses_a_corrupt_journal_before_any_trial(journal_lines, tracking, tmp_path, capsys, kind):
    data, line = broken_journal(journal_lines, kind)
    path = tmp_path / "study.journal"
    path.write_bytes(data)
    argv = ["tune", "classifier", "--params", str(params_copy(tmp_path)), "--storage", str(path),
            "--prepared", str(tmp_path / "no-prepared-data"), "--n-trials", "1", "--report", str(tmp_path / "r")]
    code, err, _ = run_cli(argv, capsys)
    assert_refused(code, err, "tune", str(path), f"line {line} ")
    assert path.read_bytes() == data
    assert not (tmp_path / "r").exists()
    assert not (tmp_path / "mlflow.db").exists()  # refused before MLflow (and any trial) was touched


# --- 2. promote: tracking store, URI, version ---------------------------------------------------

def test_promote_refuses_a_corrupt_database_and_keeps_its_bytes(tmp_path, monkeypatch, capsys):
    db = tmp_path / "mlruns" / "mlflow.db"
    db.parent.mkdir()
    garbage = bytes(range(256)) * 8
    db.write_bytes(garbage)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    code, err, seconds = run_cli(["promote", "--params", str(params_copy(tmp_path))], capsys)
    assert_refused(code, err, "promote", str(db), "not a SQLite database")
    assert seconds < FAST
    assert db.read_bytes() == garbage


def test_promote_refuses_a_damaged_database_with_a_sqlite_header(tmp_path, monkeypatch, capsys):
    db = tmp_path / "mlflow.db"
    damaged = SQLITE_HEADER + b"\x07" * 5000
    db.write_bytes(damaged)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    code, err, seconds = run_cli(["promote", "--params", str(params_copy(tmp_path))], capsys)
    assert_refused(code, err, "promote", f"sqlite:///{db}", "cannot open MLflow tracking store")
    assert seconds < FAST
    assert db.read_bytes() == damaged


def test_promote_refuses_mlruns_that_is_a_file(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the default: sqlite:///mlruns/mlflow.db
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mlruns").write_text("not a folder\n")
    code, err, seconds = run_cli(["promote", "--params", str(params_copy(tmp_path))], capsys)
    assert_refused(code, err, "promote", "mlruns is a file")
    assert seconds < FAST
    assert (tmp_path / "mlruns").read_text() == "not a folder\n"


def test_promote_refuses_a_database_path_that_is_a_folder_at_once(tmp_path, monkeypatch, capsys):
    db = tmp_path / "mlflow.db"
    db.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    code, err, seconds = run_cli(["promote", "--params", str(params_copy(tmp_path))], capsys)
    assert_refused(code, err, "promote", str(db), "is a folder")
    assert seconds < FAST  # MLflow/SQLAlchemy would retry for ~105 s
    assert list(db.iterdir()) == []


def test_promote_refuses_an_unknown_uri_scheme(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "bogus://x")
    code, err, seconds = run_cli(["promote", "--params", str(params_copy(tmp_path))], capsys)
    assert_refused(code, err, "promote", "'bogus://x'", "unsupported scheme 'bogus'", "sqlite://", "http://")
    assert seconds < FAST


@pytest.mark.parametrize("version", ["abc", "0", "-1", "1.5", ""])
def test_promote_version_must_be_a_positive_integer(tmp_path, monkeypatch, capsys, version):
    db = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    code, err, seconds = run_cli(["promote", "--params", str(params_copy(tmp_path)), f"--version={version}"], capsys)
    assert_refused(code, err, "promote", "--version must be a positive integer", f"got '{version}'")
    assert seconds < FAST
    assert not db.exists()  # refused before the store was opened


def test_promote_names_a_missing_version_and_lists_the_existing_ones(tracking, tmp_path, capsys):
    from dermagan.tracking.setup import configure

    configure("bad-input")
    client = mlflow.MlflowClient()
    client.create_registered_model("m")
    for _ in range(2):
        client.create_model_version("m", source=str(tmp_path / "model"))
    params = str(params_copy(tmp_path))
    code, err, seconds = run_cli(["promote", "--params", params, "--name", "m", "--version", "999"], capsys)
    assert_refused(code, err, "promote", "'m' has no version 999", "existing versions: 1, 2")
    assert seconds < FAST
    code, err, _ = run_cli(["promote", "--params", params, "--name", "nope", "--version", "1"], capsys)
    assert_refused(code, err, "promote", "'nope' has no version 1", "no registered versions")
    assert client.get_registered_model("m").aliases == {}


def test_tracking_uri_check_accepts_what_mlflow_opens(tmp_path):
    for uri in (f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}?timeout=5",
                "sqlite:///:memory:", "http://127.0.0.1:5000", "postgresql+psycopg2://u@h/db", "mlruns",
                f"file://{tmp_path}"):
        assert check_tracking_uri(uri) == uri
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")  # sqlite treats an empty file as a new database
    check_tracking_uri(f"sqlite:///{empty}")
    assert not (tmp_path / "new").exists()  # checking creates nothing


# --- 3. prepare: image ids and the images folder ------------------------------------------------

def prepare_argv(tmp_path: Path, raw: Path) -> list[str]:
    return ["prepare", "--params", str(params_copy(tmp_path)), "--raw", str(raw),
            "--out", str(tmp_path / "prepared"), "--eda", str(tmp_path / "eda")]


@pytest.mark.parametrize("image_id", ["../../x", "../x", "sub/x", "..", ".", "a\\b"])
def test_prepare_refuses_an_image_id_that_is_not_a_plain_name(tmp_path, capsys, image_id):
    raw = make_ham_folder(tmp_path / "raw", per_class=4)
    outside = tmp_path / "x.jpg"  # what ../../x would read today
    Image.fromarray(textured_image(np.random.default_rng(0), 40, 40)).save(outside)
    frame = pd.read_csv(raw / "metadata.csv")
    frame.loc[5, "image_id"] = image_id
    frame.to_csv(raw / "metadata.csv", index=False)
    code, err, _ = run_cli(prepare_argv(tmp_path, raw), capsys)
    assert_refused(code, err, "prepare", str(raw / "metadata.csv"), "line 7: " + repr(image_id), "plain file name")
    assert not (tmp_path / "prepared").exists() and not (tmp_path / "eda").exists()


def test_find_image_refuses_paths_too(tmp_path):
    from dermagan.data.images import find_image, is_plain_name

    assert is_plain_name("ISIC_0024306") and not is_plain_name("a\0b") and not is_plain_name("")
    with pytest.raises(DermaganError, match="not a plain file name"):
        find_image(tmp_path, "../x")


def test_prepare_names_an_images_symlink_loop(tmp_path, capsys):
    raw = make_ham_folder(tmp_path / "raw")
    shutil.rmtree(raw / "images")
    (raw / "images").symlink_to("images")
    code, err, _ = run_cli(prepare_argv(tmp_path, raw), capsys)
    assert_refused(code, err, "prepare", str(raw / "images"), "symlink loop")
    assert "missing" not in err
    assert not (tmp_path / "prepared").exists()


def test_prepare_names_a_missing_images_folder(tmp_path, capsys):
    raw = make_ham_folder(tmp_path / "raw")
    shutil.rmtree(raw / "images")
    code, err, _ = run_cli(prepare_argv(tmp_path, raw), capsys)
    assert_refused(code, err, "prepare", str(raw / "images"), "images folder not found")


def test_validate_names_an_images_symlink_loop_too(tmp_path):
    from dermagan.validation.frames import raw_columns

    (tmp_path / "images").symlink_to("images")
    with pytest.raises(DermaganError, match="symlink loop"):
        raw_columns(["ISIC_0000000"], tmp_path)


# --- 4. validate: ages --------------------------------------------------------------------------

@pytest.mark.parametrize("age", [None, -5, 130])
def test_validate_fails_on_implausible_ages_and_passes_missing_ones(tracking, tmp_path, capsys, age):
    raw = make_ham_folder(tmp_path / "raw", per_class=12)
    frame = pd.read_csv(raw / "metadata.csv")
    frame.loc[3, "age"] = np.nan  # unknown ages (57 in HAM10000) always pass
    if age is not None:
        frame.loc[10, "age"] = age
    frame.to_csv(raw / "metadata.csv", index=False)
    params = str(params_copy(tmp_path, validate={"min_class_count": 1, "min_class_share": 0.0,
                                                 "max_class_share": 1.0}))
    out = ["--out", str(tmp_path / "prepared"), "--eda", str(tmp_path / "eda")]
    assert cli.main(["prepare", "--params", params, "--raw", str(raw), *out]) == 0  # prepare lets ages through
    code, err, _ = run_cli(["validate", "--params", params, "--prepared", str(tmp_path / "prepared"),
                            "--raw", str(raw), "--out", str(tmp_path / "validation")], capsys)
    if age is None:
        assert code == 0, err
        assert (tmp_path / "validation" / "summary.json").is_file()
        return
    assert_refused(code, err, "validate", "data validation failed",
                   "FAILED images: 0 <= age <= 120 (column age): 1 of 84 rows", frame.loc[10, "image_id"])
    assert err.count("FAILED images") == 1


@pytest.mark.realdata
def test_real_ages_are_within_the_checked_range():
    from conftest import REAL_DATA
    from dermagan.validation.suites import MAX_AGE, MIN_AGE

    metadata = REAL_DATA / "metadata.csv"
    if not metadata.is_file():
        pytest.skip(f"real HAM10000 data not found at {REAL_DATA}")
    age = pd.read_csv(metadata)["age"]
    assert age.isna().any()  # missing ages exist, and pass
    assert age.dropna().between(MIN_AGE, MAX_AGE).all()


# --- 5. ui: MLflow from this interpreter --------------------------------------------------------

def test_ui_runs_mlflow_from_this_interpreter_without_path(tmp_path, monkeypatch):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    command = cli.ui_command("127.0.0.1", 5001)
    assert command[:4] == [sys.executable, "-m", "mlflow", "ui"]
    assert command[4:] == ["--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--host", "127.0.0.1",
                           "--port", "5001"]
    done = subprocess.run([*command[:3], "ui", "--help"], env={**os.environ, "PATH": str(empty)},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--backend-store-uri" in done.stdout


def test_cmd_ui_execs_the_interpreter_and_refuses_a_bad_uri(tmp_path, monkeypatch, capsys):
    execs = []
    monkeypatch.setattr(cli.os, "execv", lambda path, argv: execs.append((path, argv)))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert cli.main(["ui", "--port", "5002"]) == 0
    assert execs and execs[0][0] == sys.executable and execs[0][1][1:4] == ["-m", "mlflow", "ui"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "bogus://x")
    code, err, _ = run_cli(["ui"], capsys)
    assert_refused(code, err, "ui", "'bogus://x'")
    assert len(execs) == 1
