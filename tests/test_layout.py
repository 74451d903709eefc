"""The pipeline and the command line cannot disagree on a path: each dvc.yaml stage command, rendered by
DVC's own parser, passes exactly the paths the CLI would choose by itself from the ``Layout``."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import pytest

from dermagan.cli import _default_paths, build_parser
from dermagan.config import load_config
from dermagan.config.layout import LAYOUT, Layout

REPO = Path(__file__).resolve().parents[1]
dvc_repo = pytest.importorskip("dvc.repo", reason="dvc is not installed")


def _stages():
    with dvc_repo.Repo(str(REPO)) as repo:
        return [(s.addressing, s.cmd, [str(o.def_path) for o in s.outs]) for s in repo.index.stages
                if getattr(s, "cmd", None)]


STAGES = _stages()
CONFIG = load_config(REPO / "params.yaml")


def _parse(tokens: list[str]) -> argparse.Namespace:
    args = build_parser().parse_args(tokens)
    args.config = CONFIG
    _default_paths(args)
    return args


def _path_options(parser: argparse.ArgumentParser, tokens: list[str]) -> dict[str, tuple[int, str]]:
    """Option string -> (index in tokens, dest) for every Path-typed option the command passes."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[tokens[0]]
    by_flag = {flag: a for a in sub._actions for flag in a.option_strings}
    found = {}
    for i, token in enumerate(tokens):
        action = by_flag.get(token)
        if action is not None and action.type is Path and action.dest != "params":
            found[token] = (i, action.dest)
    return found


def test_pipeline_has_dermagan_stages():
    names = [name for name, _, _ in STAGES]
    assert "prepare" in names and any(n.startswith("train@") for n in names) and "compare" in names


@pytest.mark.parametrize("name, cmd, outs", STAGES, ids=[s[0] for s in STAGES])
def test_stage_command_paths_are_the_cli_defaults(name, cmd, outs):
    tokens = shlex.split(cmd)
    assert tokens[0] == "dermagan", f"{name}: stages are `dermagan <subcommand>` commands, got {cmd!r}"
    tokens = tokens[1:]
    given = _parse(tokens)
    options = _path_options(build_parser(), tokens)
    for flag, (index, dest) in options.items():
        without = tokens[:index] + tokens[index + 2:]
        default = getattr(_parse(without), dest)
        assert Path(getattr(given, dest)) == Path(default), (
            f"dvc.yaml stage {name} passes {flag} {getattr(given, dest)}, but the CLI's default (Layout) is "
            f"{default}: change one of them (src/dermagan/config/layout.py is the single source)")


@pytest.mark.parametrize("name, cmd, outs", STAGES, ids=[s[0] for s in STAGES])
def test_stage_outputs_are_paths_the_command_writes(name, cmd, outs):
    tokens = shlex.split(cmd)[1:]
    args = _parse(tokens)
    written = {Path(getattr(args, dest)) for _, dest in _path_options(build_parser(), tokens).values()}
    for out in outs:
        assert Path(out) in written, f"dvc.yaml stage {name} declares output {out}, which its command never names"


def test_run_names_come_from_one_place():
    assert Layout.run_name("effnet", 2) == "effnet-s2"
    assert LAYOUT.model_dir("effnet", 2) == Path("artifacts/models/effnet-s2")
    assert LAYOUT.run_metrics("effnet", 2) == Path("metrics/runs/effnet-s2.json")
    assert LAYOUT.tune_report("gan", "stgan", "df").parts[0] == "runs"  # ad-hoc runs are git-ignored


def test_ad_hoc_runs_default_to_the_ignored_runs_folder():
    ignored = (REPO / ".gitignore").read_text().split()
    assert "/runs/" in ignored
    for tokens in (["tune", "classifier"], ["compare-runs", "--arm", "effnet", "--baseline", "x"],
                   ["bench-train"], ["bench-gan"]):
        args = _parse(tokens)
        path = args.report if tokens[0] == "tune" else args.out
        assert Path(path).parts[0] == "runs", (tokens, path)
