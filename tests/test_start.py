"""What a command imports before it does anything: `tbmirror --help` imports no engine and none of
the heavy libraries, tbmirror.app no engine until a source is built, and building the engines
imports neither numpy nor PIL nor TensorBoard's plugin helpers (only the passes that write
images, text, HParams or diff a rewritten series do). Read from `sys.modules` in a fresh
interpreter: a guard on correctness, not a timing (benchmarks/start.py times the commands)."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e  # each test starts a fresh interpreter

HEAVY = ("numpy", "PIL", "tensorboard", "google.protobuf", "rich", "mlflow", "pydantic", "httpx")


def imported_by(code: str) -> set[str]:
    """The modules a fresh interpreter has imported after running `code`."""
    script = f"{code}\nimport sys\nprint(' '.join(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def heavy_among(modules: set[str], heavy: tuple[str, ...]) -> list[str]:
    return sorted(name for name in modules if name.split(".")[0] in heavy or name in heavy)


@pytest.mark.parametrize("argv", [["--help"], ["sync", "--help"], ["--version"]])
def test_help_imports_no_engine_and_no_heavy_library(argv: list[str]) -> None:
    code = (
        "from tbmirror.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit as end:\n    assert end.code == 0, end"
    )
    modules = imported_by(code)
    assert "tbmirror.cli" in modules  # the command did run
    assert heavy_among(modules, HEAVY) == []
    assert sorted(m for m in modules if m.startswith("tbmirror.")) == [
        "tbmirror.cli",
        "tbmirror.errors",
    ]


def test_app_imports_no_engine_until_a_source_is_built() -> None:
    """`status` and `prune` use the kinds without building a source: no engine, no HTTP stack."""
    modules = imported_by("import tbmirror.app")
    assert sorted(m for m in modules if m.startswith("tbmirror.engine.")) == [
        "tbmirror.engine.base"
    ]
    assert heavy_among(modules, ("httpcore", "google.protobuf", "tensorboard", "numpy")) == []


def test_engines_are_built_without_numpy_pil_or_tensorboard_plugins() -> None:
    modules = imported_by(
        "import tbmirror.app\n"
        "from tbmirror.kinds.mlflow.build import build_engine\n"
        "from tbmirror.engine.uploads import UploadEngine"
    )
    assert "tbmirror.engine.mlflow.engine" in modules  # the engines are there
    assert heavy_among(modules, ("numpy", "PIL", "absl")) == []
    assert sorted(m for m in modules if m.startswith("tensorboard.plugins.")) == []
