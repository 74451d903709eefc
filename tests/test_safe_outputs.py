"""Outputs never delete what dermagan did not make: the CLI preflight refuses bad output paths before
anything is touched, and atomic_dir/atomic_file replace only their own earlier outputs."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest

from conftest import REPO, make_ham_folder
from dermagan.atomic import atomic_dir, atomic_file
from dermagan.cli import main
from dermagan.errors import DermaganError
from dermagan.outputs import MARKER, MARKER_TEXT, XATTR

AGAIN = "remove it yourself or choose another path"


# --- helpers -------------------------------------------------------------------------------------

@pytest.fixture
def params(tmp_path: Path) -> Path:
    """The repository's params.yaml with the tuned files it names, copied to tmp_path/cfg."""
    cfg = tmp_path / "cfg"
    shutil.copytree(REPO / "params", cfg / "params")
    shutil.copy(REPO / "params.yaml", cfg / "params.yaml")
    return cfg / "params.yaml"


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every entry under ``root``: file bytes, None for folders, the target for links."""
    found: dict[str, bytes | None] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            found[rel] = b"link:" + os.readlink(path).encode()
        elif path.is_dir():
            found[rel] = None
        else:
            found[rel] = path.read_bytes()
    return found


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if ".tmp-" in p.name]


def refused(capsys, argv: list[str], *needles: str) -> str:
    """Run the CLI; it must exit 2 with a one-line error (no traceback) naming every needle."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert f"dermagan {argv[0]}: error: " in err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def prepare(params: Path, raw: Path, out: Path | str, eda: Path | str) -> list[str]:
    return ["prepare", "--params", str(params), "--raw", str(raw), "--out", str(out), "--eda", str(eda)]


@pytest.fixture
def world(tmp_path: Path, ham_folder: Path, params: Path):
    """The tiny raw folder (tmp_path/raw) and a copy of the repository's params (tmp_path/cfg)."""
    return ham_folder, params


def assert_untouched(tmp_path: Path, before: dict) -> None:
    assert snapshot(tmp_path) == before, "a refused command changed files"
    assert not leftovers(tmp_path), "temporary entries left behind"


# --- CLI preflight: outputs and inputs -------------------------------------------------------------

def test_prepare_out_equal_to_raw_is_refused(world, tmp_path, capsys):
    raw, params = world
    before = snapshot(tmp_path)
    refused(capsys, prepare(params, raw, raw, tmp_path / "eda"), "--out", str(raw), "is the input --raw")
    assert_untouched(tmp_path, before)


def test_prepare_out_inside_raw_is_refused(world, tmp_path, capsys):
    raw, params = world
    before = snapshot(tmp_path)
    refused(capsys, prepare(params, raw, raw / "images", tmp_path / "eda"), "--out", str(raw / "images"),
            "lies inside the input --raw")
    assert_untouched(tmp_path, before)


def test_raw_inside_out_is_refused(tmp_path, params, capsys):
    raw = make_ham_folder(tmp_path / "work" / "raw", per_class=2)
    before = snapshot(tmp_path)
    refused(capsys, prepare(params, raw, tmp_path / "work", tmp_path / "eda"), "--out", str(tmp_path / "work"),
            "contains the input --raw")
    assert_untouched(tmp_path, before)


def test_out_over_the_params_file_is_refused(world, tmp_path, capsys):
    raw, params = world
    before = snapshot(tmp_path)
    refused(capsys, prepare(params, raw, params.parent, tmp_path / "eda"), "--out", "contains the input --params")
    assert_untouched(tmp_path, before)


def test_existing_file_where_a_folder_goes_is_refused(world, tmp_path, capsys):
    raw, params = world
    (tmp_path / "notes.txt").write_text("my notes\n")
    before = snapshot(tmp_path)
    refused(capsys, prepare(params, raw, tmp_path / "notes.txt", tmp_path / "eda"), "--out",
            str(tmp_path / "notes.txt"), "is an existing file, but this output is a folder", AGAIN)
    assert_untouched(tmp_path, before)


def test_existing_folder_where_a_file_goes_is_refused(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    (tmp_path / "preds.csv").mkdir()
    (tmp_path / "preds.csv" / "keep.txt").write_text("mine")
    before = snapshot(tmp_path)
    refused(capsys, ["predict", str(tmp_path / "photos"), "--out", str(tmp_path / "preds.csv")], "--out",
            str(tmp_path / "preds.csv"), "is an existing folder, but this output is a file")
    assert_untouched(tmp_path, before)


def test_foreign_file_output_is_refused(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    (tmp_path / "preds.csv").write_text("someone's table\n")
    before = snapshot(tmp_path)
    refused(capsys, ["predict", str(tmp_path / "photos"), "--out", str(tmp_path / "preds.csv")], "--out",
            str(tmp_path / "preds.csv"), "is a file dermagan did not write", AGAIN)
    assert_untouched(tmp_path, before)


def test_file_output_inside_the_input_folder_is_refused(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"jpeg")
    before = snapshot(tmp_path)
    refused(capsys, ["predict", str(tmp_path / "photos"), "--out", str(tmp_path / "photos" / "preds.csv")],
            "--out", "lies inside the input images_dir")
    assert_untouched(tmp_path, before)


def test_foreign_non_empty_folder_is_refused(world, tmp_path, capsys):
    raw, params = world
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("\\documentclass{article}")
    before = snapshot(tmp_path)
    refused(capsys, prepare(params, raw, tmp_path / "mine", tmp_path / "eda"), "--out", str(tmp_path / "mine"),
            "is a folder dermagan did not write", MARKER, AGAIN)
    assert_untouched(tmp_path, before)


def test_out_dot_is_refused_and_the_folder_kept(world, tmp_path, monkeypatch, capsys):
    raw, params = world
    here = tmp_path / "here"
    here.mkdir()
    (here / "notes.txt").write_text("keep me")
    (here / "sub").mkdir()
    (here / "sub" / "data.bin").write_bytes(bytes(range(256)))
    monkeypatch.chdir(here)
    before = snapshot(tmp_path)
    refused(capsys, prepare(params, raw, ".", tmp_path / "eda"), "--out .", "is the current folder")
    assert_untouched(tmp_path, before)


def test_out_above_the_current_folder_is_refused(world, tmp_path, monkeypatch, capsys):
    raw, params = world
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    before = snapshot(tmp_path)
    refused(capsys, prepare(params, raw, "..", tmp_path / "eda"), "--out ..", "contains the current folder")
    assert_untouched(tmp_path, before)


def test_tune_report_dot_is_refused_before_any_study(tmp_path, params, monkeypatch, capsys):
    here = tmp_path / "here"
    here.mkdir()
    (here / "results.csv").write_text("a,b\n1,2\n")
    monkeypatch.chdir(here)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    before = snapshot(tmp_path)
    refused(capsys, ["tune", "classifier", "--params", str(params), "--prepared", str(tmp_path / "prepared"),
                     "--n-trials", "1", "--report", "."], "--report .", "is the current folder")
    assert_untouched(tmp_path, before)  # no journal, no MLflow store, no report: no study started


@pytest.mark.parametrize("marker", [".git", ".dvc", "dvc.yaml"])
def test_repository_root_is_refused(world, tmp_path, capsys, marker):
    raw, params = world
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / marker).mkdir() if marker != "dvc.yaml" else (repo / marker).write_text("stages: {}\n")
    before = snapshot(tmp_path)
    refused(capsys, prepare(params, raw, repo, tmp_path / "eda"), "--out", str(repo), "repository root")
    assert_untouched(tmp_path, before)


def test_home_folder_is_refused(world, tmp_path, monkeypatch, capsys):
    raw, params = world
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("export A=1\n")
    monkeypatch.setenv("HOME", str(home))
    before = snapshot(tmp_path)
    refused(capsys, prepare(params, raw, home, tmp_path / "eda"), "--out", str(home), "is the home folder")
    assert_untouched(tmp_path, before)


def test_filesystem_root_is_refused(world, tmp_path, capsys):
    raw, params = world
    before = snapshot(tmp_path)
    refused(capsys, prepare(params, raw, "/", tmp_path / "eda"), "--out /", "is the root folder /")
    assert_untouched(tmp_path, before)


def test_symlink_output_is_refused(world, tmp_path, capsys):
    raw, params = world
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target")
    (tmp_path / "file_link.csv").symlink_to(tmp_path / "nowhere.csv")
    before = snapshot(tmp_path)
    refused(capsys, prepare(params, raw, tmp_path / "link", tmp_path / "eda"), "--out", str(tmp_path / "link"),
            "is a symbolic link")
    (tmp_path / "photos").mkdir()
    before = snapshot(tmp_path)
    refused(capsys, ["predict", str(tmp_path / "photos"), "--out", str(tmp_path / "file_link.csv")], "--out",
            "is a symbolic link")
    assert not (tmp_path / "nowhere.csv").exists()
    assert_untouched(tmp_path, before)


def test_prepare_to_a_link_to_a_folder_touches_nothing(world, tmp_path, capsys):
    """The old bug: the EDA folder was replaced, then the link failed and a temp folder stayed."""
    raw, params = world
    assert main(prepare(params, raw, tmp_path / "prepared", tmp_path / "eda")) == 0
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "keep.txt").write_text("keep")
    (tmp_path / "prepared_link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    capsys.readouterr()
    before = snapshot(tmp_path)
    refused(capsys, prepare(params, raw, tmp_path / "prepared_link", tmp_path / "eda"), "--out",
            str(tmp_path / "prepared_link"), "is a symbolic link")
    assert_untouched(tmp_path, before)  # the EDA folder included


def test_two_outputs_on_one_path_are_refused(world, tmp_path, capsys):
    raw, params = world
    before = snapshot(tmp_path)
    refused(capsys, prepare(params, raw, tmp_path / "out", tmp_path / "out"), "--eda", "--out",
            str(tmp_path / "out"), "two outputs")
    refused(capsys, prepare(params, raw, tmp_path / "out", tmp_path / "out" / "eda"), "--eda",
            "lies inside the output --out", "two outputs")
    assert_untouched(tmp_path, before)


def test_two_file_outputs_on_one_path_are_refused(tmp_path, params, capsys):
    before = snapshot(tmp_path)
    m = str(tmp_path / "m.json")
    refused(capsys, ["evaluate", "--params", str(params), "--arm", "effnet", "--prepared", str(tmp_path / "p"),
                     "--model-dir", str(tmp_path / "model"), "--metrics", m, "--predictions", m,
                     "--plots", str(tmp_path / "plots"), "--roc", str(tmp_path / "roc.csv"),
                     "--reliability", str(tmp_path / "rel.csv")], "--predictions", "--metrics", m, "two outputs")
    assert_untouched(tmp_path, before)


def test_parent_that_is_a_file_is_refused(world, tmp_path, capsys):
    raw, params = world
    (tmp_path / "afile").write_text("x")
    before = snapshot(tmp_path)
    refused(capsys, prepare(params, raw, tmp_path / "afile" / "sub" / "out", tmp_path / "eda"), "--out",
            str(tmp_path / "afile"), "is a file, not a folder")
    assert_untouched(tmp_path, before)


@pytest.mark.skipif(os.geteuid() == 0, reason="running as root: chmod 0o555 does not stop root from writing "
                                              "(test_read_only_mount_is_refused covers root)")
def test_read_only_parent_is_refused(world, tmp_path, capsys):
    raw, params = world
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        before = snapshot(tmp_path)
        refused(capsys, prepare(params, raw, locked / "out", tmp_path / "eda"), "--out", str(locked / "out"),
                "read-only")
        assert_untouched(tmp_path, before)
    finally:
        locked.chmod(0o755)


def test_read_only_mount_is_refused(world, tmp_path, capsys):
    """Also for root: a folder on a read-only mount (access() reports EROFS even to root)."""
    raw, params = world
    folder = Path("/proc/sys")
    if not folder.is_dir() or os.access(folder, os.W_OK):
        pytest.skip("no read-only folder (/proc/sys) here")
    before = snapshot(tmp_path)
    refused(capsys, prepare(params, raw, folder / "dermagan-test-out", tmp_path / "eda"), "--out", "read-only")
    assert not (folder / "dermagan-test-out").exists()
    assert_untouched(tmp_path, before)


def test_rerun_of_prepare_replaces_its_own_output(world, tmp_path, capsys):
    raw, params = world
    raw_before = snapshot(raw)
    out, eda = tmp_path / "prepared", tmp_path / "eda"
    assert main(prepare(params, raw, out, eda)) == 0
    first = snapshot(out)
    (out / "stale.txt").write_text("from an older version")  # a file the new output does not have
    assert main(prepare(params, raw, out, eda)) == 0, capsys.readouterr().err
    assert sorted(snapshot(out)) == sorted(first), "the re-run output is the whole new folder"
    assert (out / "splits.csv").read_bytes() == first["splits.csv"]
    assert (out / MARKER).read_text() == MARKER_TEXT and (eda / MARKER).read_text() == MARKER_TEXT
    assert snapshot(raw) == raw_before
    assert not leftovers(tmp_path)


# --- atomic_dir / atomic_file ----------------------------------------------------------------------

def test_atomic_dir_replaces_its_own_output_and_marks_it(tmp_path):
    final = tmp_path / "out"
    with atomic_dir(final) as tmp:
        (tmp / "a.txt").write_text("1")
    assert sorted(os.listdir(final)) == [MARKER, "a.txt"]
    with atomic_dir(final) as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(os.listdir(final)) == [MARKER, "b.txt"]
    assert (final / MARKER).read_text() == MARKER_TEXT
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_marker_is_small_and_deterministic(tmp_path):
    for name in ("a", "b"):
        with atomic_dir(tmp_path / name):
            pass
    assert (tmp_path / "a" / MARKER).read_bytes() == (tmp_path / "b" / MARKER).read_bytes()
    assert len(MARKER_TEXT) < 200 and "dermagan" in MARKER_TEXT


def test_atomic_dir_replaces_an_empty_folder(tmp_path):
    (tmp_path / "out").mkdir()
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "a.txt").write_text("1")
    assert (tmp_path / "out" / "a.txt").read_text() == "1"


def test_atomic_dir_refuses_a_foreign_folder_before_making_a_temp(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.txt").write_text("mine")
    before = snapshot(tmp_path)
    entered = False
    with pytest.raises(DermaganError, match=r"did not write.*remove it yourself"):
        with atomic_dir(tmp_path / "out"):
            entered = True
    assert not entered
    assert_untouched(tmp_path, before)


def test_atomic_dir_refuses_a_file_and_a_link(tmp_path):
    (tmp_path / "f").write_text("x")
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target")
    before = snapshot(tmp_path)
    with pytest.raises(DermaganError, match="is an existing file"):
        with atomic_dir(tmp_path / "f"):
            pass
    with pytest.raises(DermaganError, match="symbolic link"):
        with atomic_dir(tmp_path / "link"):
            pass
    assert_untouched(tmp_path, before)


def test_atomic_dir_refuses_the_current_folder(tmp_path, monkeypatch):
    (tmp_path / "keep.txt").write_text("x")
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(DermaganError, match="current folder"):
        with atomic_dir(Path(".")):
            pass
    assert_untouched(tmp_path, before)


def test_failure_inside_atomic_dir_keeps_the_old_output(tmp_path):
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "a.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "a.txt").write_text("new")
            raise RuntimeError("stage failed")
    assert (tmp_path / "out" / "a.txt").read_text() == "old"
    assert not leftovers(tmp_path)


def test_failing_rename_keeps_the_old_output_and_no_temp(tmp_path, monkeypatch):
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "a.txt").write_text("old")
    with atomic_file(tmp_path / "f.json") as tmp:
        tmp.write_text("old")

    def boom(src, dst):
        raise OSError(errno.EIO, "simulated I/O error")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(DermaganError, match="cannot move the new folder into place"):
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "a.txt").write_text("new")
    with pytest.raises(DermaganError, match="cannot move the new file into place"):
        with atomic_file(tmp_path / "f.json") as tmp:
            tmp.write_text("new")
    with pytest.raises(DermaganError, match="cannot move the new folder into place"):
        with atomic_dir(tmp_path / "fresh") as tmp:
            (tmp / "a.txt").write_text("new")
    monkeypatch.undo()
    assert (tmp_path / "out" / "a.txt").read_text() == "old"
    assert (tmp_path / "f.json").read_text() == "old"
    assert not (tmp_path / "fresh").exists()
    assert not leftovers(tmp_path)


def test_atomic_file_replaces_its_own_and_empty_files_only(tmp_path):
    own = tmp_path / "own.csv"
    with atomic_file(own) as tmp:
        tmp.write_text("1")
    assert os.getxattr(own, XATTR) == b"1"
    with atomic_file(own) as tmp:
        tmp.write_text("2")
    assert own.read_text() == "2"
    (tmp_path / "empty.csv").touch()
    with atomic_file(tmp_path / "empty.csv") as tmp:
        tmp.write_text("3")
    assert (tmp_path / "empty.csv").read_text() == "3"
    (tmp_path / "foreign.csv").write_text("someone's")
    with pytest.raises(DermaganError, match="did not write"):
        with atomic_file(tmp_path / "foreign.csv"):
            pass
    assert (tmp_path / "foreign.csv").read_text() == "someone's"
    assert not leftovers(tmp_path)


def test_failure_inside_atomic_file_keeps_the_old_file(tmp_path):
    with atomic_file(tmp_path / "f.json") as tmp:
        tmp.write_text("old")
    with pytest.raises(ValueError):
        with atomic_file(tmp_path / "f.json") as tmp:
            tmp.write_text("half")
            raise ValueError("boom")
    assert (tmp_path / "f.json").read_text() == "old"
    assert not leftovers(tmp_path)


def test_without_xattr_support_a_non_empty_file_is_refused(tmp_path, monkeypatch):
    (tmp_path / "f.json").write_text("data")
    (tmp_path / "empty.json").touch()

    def unsupported(*args, **kwargs):
        raise OSError(errno.ENOTSUP, "Operation not supported")

    monkeypatch.setattr(os, "getxattr", unsupported)
    monkeypatch.setattr(os, "setxattr", unsupported)
    with pytest.raises(DermaganError, match="keeps no extended attributes"):
        with atomic_file(tmp_path / "f.json"):
            pass
    with atomic_file(tmp_path / "empty.json") as tmp:
        tmp.write_text("new")
    assert (tmp_path / "f.json").read_text() == "data" and (tmp_path / "empty.json").read_text() == "new"
    assert not leftovers(tmp_path)


def test_a_provenance_header_marks_a_file_that_came_through_git(tmp_path):
    tuned = tmp_path / "tuned.yaml"  # as the repository ships params/tuned.yaml (git keeps no xattrs)
    tuned.write_text("# Tuned values: written by `dermagan tune classifier --apply` on 2026-01-01. Do not edit.\n"
                     "train: {}\n")
    with atomic_file(tuned) as tmp:
        tmp.write_text("train: {lr: 0.1}\n")
    assert tuned.read_text() == "train: {lr: 0.1}\n"


def test_nested_blocks_write_separate_outputs(tmp_path):
    out, history = tmp_path / "model", tmp_path / "reports" / "history.csv"
    with atomic_dir(out) as tmp, atomic_file(history) as tmp_csv:
        (tmp / "model.pt").write_bytes(b"w")
        tmp_csv.write_text("epoch\n1\n")
        with atomic_dir(tmp / "docs") as tmp_docs:  # a folder output inside the outer temp folder
            (tmp_docs / "index.html").write_text("<html>")
    assert (out / "model.pt").exists() and history.read_text() == "epoch\n1\n"
    assert (out / "docs" / "index.html").exists() and (out / "docs" / MARKER).exists()
    assert not leftovers(tmp_path)


@pytest.mark.parametrize("inner", ["out", "out/sub", "."])
def test_nested_blocks_on_one_path_are_refused(tmp_path, inner):
    before = snapshot(tmp_path)
    outer = tmp_path / "out" if inner != "." else tmp_path / "a" / "b"
    nested = tmp_path / inner if inner != "." else tmp_path / "a"
    with pytest.raises(DermaganError, match="another output being written"):
        with atomic_dir(outer), atomic_file(nested):
            pass
    assert not leftovers(tmp_path)
    assert not (tmp_path / "out").exists()
    assert {k: v for k, v in snapshot(tmp_path).items() if not k.startswith("a")} == before


def test_every_path_option_is_declared_in_the_command_table():
    """A new path option must say whether it is read or written, or the preflight cannot check it."""
    from dermagan.cli import COMMAND_PATHS, build_parser

    parser = build_parser()
    subcommands = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices
    for name, sub in subcommands.items():
        declared = {e if isinstance(e, str) else e[0] for entries in COMMAND_PATHS.get(name, {}).values()
                    for e in entries}
        paths = {a.dest for a in sub._actions if a.type is Path} - {"params"}
        assert paths <= declared, f"{name}: undeclared path options {sorted(paths - declared)}"
        derived = set(sub._defaults)  # paths the CLI derives from others (set_defaults), e.g. tune's --apply target
        assert declared <= {a.dest for a in sub._actions} | derived, f"{name}: table names unknown options"
