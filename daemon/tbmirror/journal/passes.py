"""How each source's passes went (`tbmirror status`, /healthz): in memory first, then stored.

Kept in memory so /healthz is right while the disk is full; stored in the state store when it can
be written (a failure to store is not a pass's failure). Thread-safe.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import replace

import structlog

from tbmirror.journal.store import Store
from tbmirror.model import SourceStatus

log = structlog.get_logger(__name__)


class PassLog:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._guard = threading.Lock()
        self._statuses = store.source_status()

    def record(
        self, source: str, error: str | None, now: float, failed_runs: int = 0, tried: int = 0
    ) -> SourceStatus:
        """Note how a pass of `source` went (`failed_runs` of the `tried` runs or files failed)."""
        with self._guard:
            status = replace(self._statuses.get(source) or SourceStatus(source))
            status.last_attempt = now
            status.failed_runs = failed_runs
            status.all_failed = failed_runs > 0 and failed_runs >= tried
            if error:
                status.consecutive_errors += 1
                status.last_error = error
            else:
                status.last_success, status.consecutive_errors, status.last_error = now, 0, None
            self._statuses[source] = status
        try:
            self._store.put_source_status(status)
        except sqlite3.Error as failure:
            log.debug("source_status_not_stored", source=source, error=str(failure))
        return status

    def current(self) -> dict[str, SourceStatus]:
        with self._guard:
            return dict(self._statuses)
