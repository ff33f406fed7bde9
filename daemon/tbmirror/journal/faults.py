"""Write faults: what failed while writing a source's mirror, said once per cause and counted.

`FaultLog` keeps, per owner (source), the fault in force since its first failed attempt; logs
`write_failed` once per cause (with the path), calls listeners on every failed attempt (the
daemon's /metrics counter), and `writes_recovered` when writing works again. Thread-safe.
"""

from __future__ import annotations

import errno
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from tbmirror.errors import WriteFault

log = structlog.get_logger(__name__)

FaultListener = Callable[[str, str], None]  # (owner, cause), once per failed attempt


@dataclass(frozen=True)
class Fault:
    """A write fault in force for one owner: since when, why, where."""

    cause: str
    path: str
    detail: str
    since: float

    def error(self, owner: str) -> WriteFault:
        return WriteFault(owner, self.cause, self.path, self.detail)


class FaultLog:
    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._guard = threading.Lock()
        self._faults: dict[str, Fault] = {}
        self._logged: dict[str, set[str]] = {}
        self._listeners: list[FaultListener] = []

    def add_listener(self, listener: FaultListener) -> None:
        self._listeners.append(listener)

    def current(self) -> dict[str, Fault]:
        """Owners whose writes fail now, with the first cause."""
        with self._guard:
            return dict(self._faults)

    def of(self, owner: str) -> Fault | None:
        with self._guard:
            return self._faults.get(owner)

    def failed(self, owner: str, where: str, error: Exception) -> WriteFault:
        """Note a failed attempt at `where` (a path relative to the root, or the store's name);
        returns the error to raise."""
        cause, detail = _cause(error)
        with self._guard:
            self._faults.setdefault(owner, Fault(cause, where, detail, self._clock()))
            first = cause not in self._logged.setdefault(owner, set())
            self._logged[owner].add(cause)
        if first:
            log.error("write_failed", source=owner, path=where, cause=cause, error=detail)
        for listener in self._listeners:
            listener(owner, cause)
        return WriteFault(owner, cause, where, detail)

    def healed(self, owner: str) -> None:
        """Writing for `owner` works (again)."""
        with self._guard:
            fault = self._faults.pop(owner, None)
            self._logged.pop(owner, None)
        if fault is not None:
            after = round(self._clock() - fault.since, 1)
            log.info("writes_recovered", source=owner, after_seconds=after)


def _cause(error: Exception) -> tuple[str, str]:
    """(short cause, detail) of a write error, with no path or data in it. Anything but an
    OSError or an SQLite error is a bug: named by its type only."""
    if isinstance(error, OSError):
        name = errno.errorcode.get(error.errno or 0, type(error).__name__)
        return name, error.strerror or name
    if isinstance(error, sqlite3.Error):
        name = getattr(error, "sqlite_errorname", None) or type(error).__name__
        return name, str(error)
    return type(error).__name__, "an unexpected error (a bug): the batch is kept"
