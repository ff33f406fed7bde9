"""`tbmirror check`: what in a config will not work, one finding per line.

- Offline (`check --offline`): the file alone. Loading it (offline) validated its schema, its
  values and its paths' relations to each other; nothing is contacted, no secret file is read and
  nothing on the disk is looked at.
- Online (plain `check`): also whether `mirror.root`, `mirror.state` (and `mirror.archive`) can
  be written, whether TensorBoard's and the health endpoint's ports are free (a port held by this
  config's own running daemon, which holds the state store's lock, is not a conflict), and what
  each source's kind says of it (tbmirror.kinds: an MLflow server must answer and every configured
  experiment match, an upload directory must be there), contacting it without retries.

Nothing here writes anything that stays: a directory is tested by creating and removing an empty
folder in it, the state store by opening it for writing without changing it.
"""

from __future__ import annotations

import errno
import os
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tbmirror import tensorboard_budget
from tbmirror.config import Settings, SourceSettings
from tbmirror.journal import read_holdings, state_holder


@dataclass(frozen=True)
class Finding:
    """One line of `check`: what it is about (`config`, `mirror.root`, a source's name, ...),
    whether it will work, and what was found."""

    subject: str
    ok: bool
    text: str


def offline(settings: Settings, origin: str) -> list[Finding]:
    """What the file alone tells (it loaded, so its schema, values and paths are valid)."""
    names = ", ".join(f"{s.name} ({s.type})" for s in settings.sources)
    count = len(settings.sources)
    text = f"{origin}: valid; {count} source{'s' if count != 1 else ''}: {names}"
    return [Finding("config", True, text)]


def online(
    settings: Settings, origin: str, check_source: Callable[[SourceSettings], list[Finding]]
) -> list[Finding]:
    """Everything: the file, the paths, the ports and every source (`check_source`: what its
    kind says of it)."""
    mirror = settings.mirror
    daemon = state_holder(mirror.state)
    findings = [
        *offline(settings, origin),
        _directory("mirror.root", mirror.root),
        *([_directory("mirror.archive", mirror.archive)] if mirror.archive else []),
        _state(mirror.state, daemon),
    ]
    for subject, section in (("tensorboard", settings.tensorboard), ("health", settings.health)):
        if section.enabled:
            findings.append(_port(subject, section.host, section.port, daemon))
    if settings.tensorboard.enabled:
        findings.append(tensorboard_memory(settings))
    for source in settings.sources:
        findings += check_source(source)
    return findings


def tensorboard_memory(settings: Settings) -> Finding:
    """TensorBoard's estimated memory for what the mirror holds now (the state store, read
    only), against `tensorboard.memory_budget` (tensorboard_budget.py)."""
    runs, series = read_holdings(settings.mirror.state)
    tb = settings.tensorboard
    within, text = tensorboard_budget.describe(tb.memory_budget, runs, series, tb.scalars_samples)
    return Finding("tensorboard.memory_budget", within, text)


def _existing(path: Path) -> Path:
    """`path` or its nearest ancestor that exists."""
    while not os.path.lexists(path) and path != path.parent:
        path = path.parent
    return path


def _directory_problem(path: Path) -> str | None:
    """Why files could not be made in the directory `path`, made with its parents where
    missing (None: they could)."""
    existing = _existing(path)
    if not existing.is_dir():
        return f"{existing} is not a directory"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".tbmirror-check-", dir=existing))
    except OSError as error:
        return f"cannot write in {existing}: {error.strerror or error}"
    return None


def _directory(key: str, path: Path) -> Finding:
    """A directory tbmirror writes in (created at start with its parents if missing)."""
    path = Path(os.path.abspath(path))
    problem = _directory_problem(path)
    if problem:
        return Finding(key, False, f"{path}: {problem}")
    existing = _existing(path)
    made = "" if existing == path else f" (created at start, in {existing})"
    return Finding(key, True, f"{path}: writable{made}")


def _state(path: Path, daemon: str | None) -> Finding:
    """The state store: a file that can be opened for writing, in a directory that can be
    written (SQLite keeps its journal and our lock beside it)."""
    path = Path(os.path.abspath(path))
    problem = _directory_problem(path.parent)
    if os.path.lexists(path):
        if not path.is_file():
            problem = "not a regular file"
        else:
            try:
                os.close(os.open(path, os.O_RDWR | os.O_CLOEXEC))
            except OSError as error:
                problem = f"cannot write it: {error.strerror}"
    if problem:
        return Finding("mirror.state", False, f"{path}: {problem}")
    how = "writable" if path.exists() else "can be created"
    used = f"; in use by tbmirror ({daemon})" if daemon else ""
    return Finding("mirror.state", True, f"{path}: {how}{used}")


def _port(subject: str, host: str, port: int, daemon: str | None) -> Finding:
    """Whether a server could listen on `host:port` now (as the servers do: SO_REUSEADDR)."""
    where = f"{host}:{port}"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except socket.gaierror:
            return Finding(subject, False, f"{where}: unknown host (the name does not resolve)")
        except OSError as error:
            if error.errno != errno.EADDRINUSE:
                return Finding(subject, False, f"{where}: cannot listen: {error.strerror}")
            if daemon:
                text = f"{where}: in use by this config's own tbmirror ({daemon})"
                return Finding(subject, True, text)
            return Finding(subject, False, f"{where}: already in use by another process")
    return Finding(subject, True, f"{where}: free")
