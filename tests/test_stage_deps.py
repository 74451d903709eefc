"""dvc.yaml's code deps cannot drift from the code a stage really runs.

Every pipeline stage runs ``dermagan <subcommand> ...``. For each stage, as DVC renders it (foreach
and matrix stages expanded exactly as ``dvc repro`` sees them), this test finds the handler
``cmd_<subcommand>`` in src/dermagan/cli.py and walks, with ``ast``, the closure of the
``dermagan.*`` modules it imports. Every project file in that closure must be a dep of the stage
(the file itself, or a folder dep above it); otherwise editing it would not re-run the stage.

What counts as imported (conservative: a file may be listed that a given run never executes):
- every ``import``/``from ... import`` anywhere in a module: module level, inside functions
  (lazy imports), under ``if``/``try``/``TYPE_CHECKING``;
- ``from dermagan.x import y`` counts ``dermagan.x`` and, when ``y`` is a submodule, ``dermagan.x.y``;
- the ``__init__.py`` of every package above an imported module (importing ``dermagan.gan.stgan``
  runs ``dermagan/__init__.py`` and ``dermagan/gan/__init__.py``);
- a string constant naming a project module (``"dermagan.tuning.gan:make_objective"``, for
  ``importlib``) and a string constant naming a ``.py`` file beside the module
  (``Path(__file__).with_name("pyfunc_code.py")``);
- in cli.py: the handler's own imports and those of every cli.py function it names (recursively),
  plus the imports every command runs: cli.py's module level and the functions reachable from
  ``main`` (the console-script entry point: build_parser, _default_paths, ...) other than handlers.

cli.py itself is NOT required as a dep: it only parses arguments and dispatches, and listing it
would re-run every stage on any CLI edit (help texts, a new subcommand). Its module-level project
imports (errors, params, ...) are required, because they run for every command.

Re-run:  .venv/bin/python -m pytest tests/test_stage_deps.py -q
"""

from __future__ import annotations

import ast
import shlex
import warnings
from functools import lru_cache
from pathlib import Path, PurePosixPath

import pytest

pytest.importorskip("dvc.repo", reason="dvc is not installed: cannot render dvc.yaml to check its code deps")

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
PACKAGE = "dermagan"
CLI = SRC / PACKAGE / "cli.py"


# --- the import closure (pure AST, nothing is imported) ----------------------------------------

def module_file(name: str) -> Path | None:
    """src/ file of a project module name (a package resolves to its __init__.py), or None."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = SRC.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


@lru_cache(maxsize=None)
def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def with_packages(name: str) -> set[Path]:
    """The module's file plus the __init__.py of every package above it (all run on import)."""
    files = set()
    parts = name.split(".")
    for k in range(1, len(parts) + 1):
        path = module_file(".".join(parts[:k]))
        if path is not None:
            files.add(path)
    return files


def imports_in(nodes, path: Path) -> set[Path]:
    """Project files imported by the given AST nodes (walked fully: nested and lazy imports count)."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: set[Path] = set()
    for top in nodes:
        for node in ast.walk(top):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    found |= with_packages(alias.name)
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative import
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                found |= with_packages(base)
                for alias in node.names:  # `from pkg import submodule`
                    if module_file(f"{base}.{alias.name}") is not None:
                        found |= with_packages(f"{base}.{alias.name}")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
                if text.startswith(PACKAGE + ".") and module_file(text.split(":")[0]) is not None:
                    found |= with_packages(text.split(":")[0])  # importlib target
                elif text.endswith(".py") and "/" not in text and (path.parent / text).is_file():
                    found.add(path.parent / text)  # a sibling file loaded by path
    return found


def closure(start: set[Path]) -> set[Path]:
    """Every project file reachable from ``start`` through imports (cli.py is never followed)."""
    seen: set[Path] = set()
    todo = list(start)
    while todo:
        path = todo.pop()
        if path in seen or path == CLI:
            continue
        seen.add(path)
        todo.extend(imports_in([parse(path)], path) - seen)
    return seen


def cli_functions() -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in parse(CLI).body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def handler_name(subcommand: str) -> str:
    """The function build_parser registers for ``subcommand`` (``add("x", cmd_x, ...)``), else cmd_<x>."""
    for node in ast.walk(parse(CLI)):
        if (isinstance(node, ast.Call) and len(node.args) >= 2 and isinstance(node.args[0], ast.Constant)
                and node.args[0].value == subcommand and isinstance(node.args[1], ast.Name)):
            return node.args[1].id
    return "cmd_" + subcommand.replace("-", "_")


def reachable(names: list[str], skip_handlers: bool) -> list[ast.AST]:
    """The cli.py functions ``names`` and every cli.py function they name, recursively."""
    functions, found, seen = cli_functions(), [], set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen or name not in functions:
            continue
        seen.add(name)
        found.append(functions[name])
        todo += [n.id for n in ast.walk(functions[name]) if isinstance(n, ast.Name) and n.id in functions
                 and not (skip_handlers and n.id.startswith("cmd_"))]
    return found


def always_run_imports() -> set[Path]:
    """Project files cli.py imports for every command: its module level and what ``main`` runs."""
    top = [n for n in parse(CLI).body if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    named = [n.id for node in top for n in ast.walk(node) if isinstance(n, ast.Name)]
    nodes = top + reachable(["main", *named], skip_handlers=True)  # main: pyproject's console script
    return imports_in(nodes, CLI) | with_packages(PACKAGE)  # the console script imports dermagan.cli


@lru_cache(maxsize=None)
def subcommand_files(subcommand: str) -> frozenset[str]:
    """Repo-relative posix paths of every project file ``dermagan <subcommand>`` may run (cli.py excluded)."""
    name = handler_name(subcommand)
    if name not in cli_functions():
        raise LookupError(f"no handler {name} for `dermagan {subcommand}` in {CLI.relative_to(REPO)}")
    start = imports_in(reachable([name], skip_handlers=False), CLI) | always_run_imports()
    return frozenset(p.relative_to(REPO).as_posix() for p in closure(start))


# --- the rendered pipeline ---------------------------------------------------------------------

def pipeline_stages() -> list[dict]:
    """name, cmd and file deps (repo-relative posix) of every stage DVC renders from dvc.yaml."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    with Repo(str(REPO)) as repo:  # reads dvc.yaml/params only; no lock taken, nothing written
        stages = []
        for stage in repo.index.stages:
            if not isinstance(stage, PipelineStage):  # data.dvc and other .dvc files
                continue
            deps = []
            for dep in stage.deps:
                if isinstance(dep, ParamsDependency):
                    continue
                full = (Path(stage.wdir) / dep.def_path).resolve()
                try:
                    deps.append(full.relative_to(REPO).as_posix())
                except ValueError:  # outside the repo (an import-url source)
                    continue
            cmd = stage.cmd if isinstance(stage.cmd, str) else " && ".join(stage.cmd)
            stages.append({"name": stage.addressing, "cmd": cmd, "deps": deps})
    return stages


def covered(path: str, deps: list[str]) -> bool:
    p = PurePosixPath(path)
    return any(p == PurePosixPath(d) or PurePosixPath(d) in p.parents for d in deps)


def paste_indent(definition: str) -> str:
    """The indentation of a dep line of that dvc.yaml stage (foreach stages nest their body under `do:`)."""
    import yaml

    body = (yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8")).get("stages") or {}).get(definition, {})
    return " " * (8 if isinstance(body, dict) and "do" in body else 6)


def test_every_stage_lists_the_project_files_it_imports():
    problems: dict[tuple, list[str]] = {}  # (definition, subcommand, missing, stale, error) -> stage names
    superfluous = []
    for stage in pipeline_stages():
        definition = stage["name"].split("@")[0]
        tokens = shlex.split(stage["cmd"])
        if len(tokens) < 2 or Path(tokens[0]).name != "dermagan":
            error = "its cmd is not `dermagan <subcommand> ...`: teach tests/test_stage_deps.py where its code is"
            problems.setdefault((definition, None, (), (), error), []).append(stage["name"])
            continue
        try:
            files = subcommand_files(tokens[1])
        except LookupError as exc:
            problems.setdefault((definition, tokens[1], (), (), str(exc)), []).append(stage["name"])
            continue
        src_deps = [d for d in stage["deps"] if d == "src" or d.startswith("src/")]
        missing = tuple(sorted(f for f in files if not covered(f, src_deps)))
        stale = tuple(sorted(d for d in src_deps if not (REPO / d).exists()))
        if missing or stale:
            problems.setdefault((definition, tokens[1], missing, stale, None), []).append(stage["name"])
        superfluous += [f"{stage['name']}: {d}" for d in src_deps
                        if (REPO / d).exists() and not any(covered(f, [d]) for f in files)]
    if superfluous:  # not an error: a dep the stage does not import only costs extra re-runs
        warnings.warn("src deps that cover no imported file (extra re-runs only):\n  " + "\n  ".join(superfluous),
                      stacklevel=1)
    if problems:
        report = []
        for (definition, subcommand, missing, stale, error), names in problems.items():
            shown = ", ".join(names) if len(names) <= 4 else f"{names[0]} ... {names[-1]} ({len(names)} stages)"
            head = f"dvc.yaml stage `{definition}`" + (f" (`dermagan {subcommand}`)" if subcommand else "")
            text = f"{head} [{shown}]:"
            indent = paste_indent(definition)
            if error:
                text += f"\n  cannot check: {error}"
            if missing:
                text += (f"\n  {len(missing)} missing code dep(s); paste under its deps:\n"
                         + "\n".join(f"{indent}- {f}" for f in missing))
            if stale:
                text += (f"\n  {len(stale)} stale dep(s), no such path; delete from its deps:\n"
                         + "\n".join(f"{indent}- {d}" for d in stale))
            report.append(text)
        pytest.fail("dvc.yaml code deps are out of date (src/dermagan/cli.py is deliberately not required: it "
                    "only dispatches; see this test's docstring).\n\n" + "\n\n".join(report)
                    + "\n\nRe-run: .venv/bin/python -m pytest tests/test_stage_deps.py -q", pytrace=False)
