"""`dermagan --help` and `dermagan COMMAND --help` help a newcomer: every option says what it is and what
happens when it is not given, every command shows a one-line example that parses, and the top level lists
the commands once each, by group, in workflow order (the pipeline group: exactly what dvc.yaml runs)."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest
import yaml

import dermagan.cli
from dermagan.cli import COMMAND_GROUPS, build_parser

REPO = Path(__file__).resolve().parents[1]
PARSER = build_parser()
SUBCOMMANDS = next(a for a in PARSER._actions if isinstance(a, argparse._SubParsersAction)).choices
DEFAULT_CLAUSE = re.compile(r"\(?\bdefault: [^;)]*\)?")


def help_text(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The option's help as --help prints it (``%(default)s`` filled in)."""
    return parser._get_formatter()._expand_help(action) if action.help else ""


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_every_option_says_what_it_is_and_its_default(name):
    """Convention: the help of every option that may be left out contains "default" (a value, "none", "off"
    for a flag, or what happens instead); required options and positionals need help but no default."""
    parser, problems = SUBCOMMANDS[name], []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        label = "/".join(action.option_strings) or action.dest
        text = help_text(parser, action)
        if not text.strip():
            problems.append(f"{label}: no help text")
            continue
        if not DEFAULT_CLAUSE.sub("", text).strip(" ;,.()"):
            problems.append(f"{label}: the help gives only the default ({text!r}), not what the option is")
        if action.option_strings and not action.required and "default" not in text:
            problems.append(f"{label}: the help does not say the default ({text!r})")
    assert not problems, f"dermagan {name} --help:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_every_command_shows_an_example_that_parses(name):
    parser = SUBCOMMANDS[name]
    epilog = parser.epilog or ""
    assert epilog.startswith("example: dermagan "), f"dermagan {name}: add(..., example=...) is missing"
    argv = shlex.split(epilog.removeprefix("example:"))
    try:
        args = build_parser().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"dermagan {name}: its example does not parse: {epilog}")
    assert args.command == name
    assert epilog in parser.format_help().splitlines()  # printed whole, on one line, ready to copy


def listed_commands(text: str) -> list[tuple[str, str]]:
    """(group heading, command) for each command line of the top-level help's command list."""
    found, heading = [], None
    for line in text.splitlines():
        if re.fullmatch(r"\S.*:", line):
            heading = line[:-1]
        elif (match := re.match(r"  ([a-z][a-z-]*)  +\S", line)) and heading not in (None, "options"):
            found.append((heading, match.group(1)))
    return found


def test_top_level_help_lists_every_command_once_by_group_in_workflow_order():
    text = PARSER.format_help()
    listed = listed_commands(text)
    names = [name for _, name in listed]
    assert sorted(names) == sorted(SUBCOMMANDS), (
        f"commands missing from the top-level list: {sorted(set(SUBCOMMANDS) - set(names))} (add them to "
        f"COMMAND_GROUPS in src/dermagan/cli.py); listed but not commands: {sorted(set(names) - set(SUBCOMMANDS))}")
    assert len(names) == len(set(names))
    assert listed == [(group, name) for group, rows in COMMAND_GROUPS for name, _ in rows]
    assert text.startswith("usage: dermagan [-h] COMMAND ...") and "{" not in text  # no {a,b,c,...} choice list
    assert dermagan.cli.__doc__.strip().splitlines()[0] not in text  # written for --help, not the module docstring


def test_the_pipeline_group_is_what_dvc_yaml_runs():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    run = []
    for body in stages.values():
        cmd = (body.get("do") or body).get("cmd")
        for line in [cmd] if isinstance(cmd, str) else (cmd or []):
            tokens = shlex.split(line)
            if tokens[:1] == ["dermagan"] and tokens[1] not in run:
                run.append(tokens[1])
    group, rows = COMMAND_GROUPS[0]
    assert group.startswith("pipeline stages")
    assert [name for name, _ in rows] == run, "COMMAND_GROUPS' pipeline group must list dvc.yaml's commands in order"
