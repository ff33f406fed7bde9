"""The package's layering rules, read from the source (no import is run): the service and the cli
reach the journal and the engines only through tbmirror.app, and only a kind's own modules and
the config schema ask a source's settings what kind they are."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "daemon" / "tbmirror"


def _modules(*parts: str) -> list[Path]:
    """The modules at `parts` below the package (a folder: every module in it)."""
    path = PACKAGE.joinpath(*parts)
    return sorted(path.rglob("*.py")) if path.is_dir() else [path]


def _imported(module: Path) -> set[str]:
    """Every module `module` imports (for `from x import y`: x, and x.y in case y is one)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(module.read_text(), str(module))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _reaches(names: set[str], forbidden: str) -> list[str]:
    return sorted(name for name in names if name == forbidden or name.startswith(f"{forbidden}."))


@pytest.mark.parametrize(
    ("where", "forbidden"),
    [
        (("service",), "tbmirror.journal"),
        (("cli.py",), "tbmirror.journal"),
        (("cli.py",), "tbmirror.engine"),
        (("demo.py",), "tbmirror.journal"),
        (("demo.py",), "tbmirror.engine"),
    ],
)
def test_the_service_and_the_cli_go_through_app(where: tuple[str, ...], forbidden: str) -> None:
    modules = _modules(*where)
    assert modules and all(module.exists() for module in modules), where
    found = {
        str(module.relative_to(PACKAGE)): reached
        for module in modules
        if (reached := _reaches(_imported(module), forbidden))
    }
    assert not found, f"import {forbidden} (go through tbmirror.app): {found}"


def _asks_kind(module: Path) -> list[str]:
    """Where `module` asks a settings object its kind: isinstance(x, <...>SourceSettings) or
    getattr on a settings object (a guess at a kind's field)."""
    found = []
    for node in ast.walk(ast.parse(module.read_text(), str(module))):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            continue
        source = ast.unparse(node)
        if node.func.id == "isinstance" and "SourceSettings" in source:
            found.append(f"line {node.lineno}: {source}")
        if node.func.id == "getattr" and "settings" in ast.unparse(node.args[0]):
            found.append(f"line {node.lineno}: {source}")
    return found


def test_only_kinds_and_the_schema_ask_settings_their_kind() -> None:
    allowed = (PACKAGE / "kinds", PACKAGE / "config")
    checked = [m for m in _modules(".") if not any(m.is_relative_to(a) for a in allowed)]
    assert len(checked) > 30, "the package was not found"
    found = {str(m.relative_to(PACKAGE)): lines for m in checked if (lines := _asks_kind(m))}
    assert not found, f"ask a source's kind through tbmirror.app.KINDS instead: {found}"


def test_the_rules_see_a_forbidden_import_and_a_kind_question(tmp_path: Path) -> None:
    """The readers above find what they look for (so a rule cannot pass by reading nothing)."""
    module = tmp_path / "m.py"
    module.write_text(
        "from tbmirror.journal import Journal\nimport tbmirror.engine.base\n"
        "def f(s):\n    return isinstance(s, MlflowSourceSettings) or getattr(settings, 'x', 0)\n"
    )
    names = _imported(module)
    assert _reaches(names, "tbmirror.journal") == ["tbmirror.journal", "tbmirror.journal.Journal"]
    assert _reaches(names, "tbmirror.engine") == ["tbmirror.engine.base"]
    assert len(_asks_kind(module)) == 2
