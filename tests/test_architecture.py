"""The package's shape: stages are a thin leaf that only the CLI imports; params are read only by config."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "dermagan"
MODULES = sorted(p for p in SRC.rglob("*.py"))
STAGE_LINE_LIMIT = 200


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module, imported names, line) of every import in the file, including those inside functions."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [alias.name for alias in node.names], node.lineno))
    return found


def _rel(path: Path) -> str:
    return str(path.relative_to(SRC.parent.parent))


def test_only_the_cli_imports_stages():
    offenders = [f"{_rel(p)}:{line} imports {mod}" for p in MODULES if p.name != "cli.py"
                 for mod, names, line in _imports(p)
                 if mod == "dermagan.stages" or mod.startswith("dermagan.stages.")]
    assert not offenders, "library and stage modules may not import dermagan.stages:\n" + "\n".join(offenders)


@pytest.mark.parametrize("path", sorted((SRC / "stages").glob("*.py")), ids=lambda p: p.name)
def test_stage_modules_are_thin(path):
    lines = len(path.read_text().splitlines())
    assert lines <= STAGE_LINE_LIMIT, (f"{_rel(path)} has {lines} lines; a stage is glue (config -> library calls "
                                       f"-> MLflow -> outputs): move the rest into its library package")


def test_params_are_read_only_by_config():
    offenders = []
    for path in MODULES:
        if path.parent.name == "config":
            continue
        text = path.read_text()
        for mod, names, line in _imports(path):
            if mod == "dermagan.params" or (mod == "dermagan.config.load" and
                                            set(names) & {"load_params", "read_yaml"} and path.name != "cli.py"
                                            and path.parent.name != "tuning"):
                offenders.append(f"{_rel(path)}:{line} imports {mod} {names}")
        if "section(" in text:
            offenders.append(f"{_rel(path)} calls section(")
    assert not offenders, "only dermagan.config reads params:\n" + "\n".join(offenders)


def test_no_private_name_is_imported_across_modules():
    offenders = [f"{_rel(p)}:{line} imports {name} from {mod}" for p in MODULES
                 for mod, names, line in _imports(p) if mod.startswith("dermagan")
                 for name in names if name.startswith("_") and not name.startswith("__")]
    assert not offenders, "a name shared between modules is public (no leading underscore):\n" + "\n".join(offenders)


def test_matplotlib_backend_is_chosen_once():
    offenders = [_rel(p) for p in MODULES if "matplotlib.use(" in p.read_text()]
    assert not offenders, f"dermagan/__init__.py sets MPLBACKEND=Agg once; remove matplotlib.use from {offenders}"


def test_one_balanced_accuracy():
    defs = [f"{_rel(p)}:{n.lineno}" for p in MODULES for n in ast.walk(ast.parse(p.read_text()))
            if isinstance(n, ast.FunctionDef) and n.name == "balanced_accuracy"]
    assert defs == ["src/dermagan/evaluate/metrics.py:" + defs[0].rsplit(":", 1)[1]] and len(defs) == 1, defs
