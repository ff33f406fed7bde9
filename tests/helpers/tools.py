"""The programs tests run from outside Python, found one way for every test: a missing one
fails the test under CI (CI=true: .ci/run installs every one, so a broken install cannot pass
quietly), elsewhere skips it naming how to install it."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

VENV_BIN = str(Path(sys.executable).parent)  # where .ci/run puts PyPI's kubectl if need be


def tool(name: str, package: str, install: str | None = None) -> str:
    """The path of command `name` (on PATH, else in this virtualenv), from Debian package
    `package` unless `install` says how else to get it."""
    path = _which(name)
    if path is None:
        missing(f"{name} not found: {install or _apt(package)}")
    assert path is not None
    return path


def tools(*needed: tuple[str, str]) -> None:
    """Every (command, Debian package) of `needed` is installed, else one fail or skip naming
    all that are missing."""
    absent = [(name, package) for name, package in needed if _which(name) is None]
    if absent:
        names = ", ".join(name for name, _ in absent)
        missing(f"not found: {names}: {_apt(' '.join(sorted({p for _, p in absent})))}")


def missing(message: str) -> None:
    """Fail under CI, else skip, saying `message`."""
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=VENV_BIN)


def _apt(packages: str) -> str:
    return f"apt-get install --no-install-recommends {packages}"
