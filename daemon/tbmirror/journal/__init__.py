"""The exactly-once protocol: the store, batches, faults and start-up recovery (see journal.py)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tbmirror.errors import WriteFault
from tbmirror.journal.faults import Fault
from tbmirror.journal.journal import Batch, BatchStream, Journal
from tbmirror.journal.locks import holder
from tbmirror.journal.recovery import RecoveryReport, recover
from tbmirror.journal.store import Store, Totals, lock_path
from tbmirror.model import SourceStatus

__all__ = [
    "Batch",
    "BatchStream",
    "Fault",
    "Journal",
    "RecoveryReport",
    "Store",
    "Totals",
    "WriteFault",
    "read_holdings",
    "read_only",
    "read_summary",
    "recover",
    "state_holder",
]


@contextmanager
def read_only(state_path: Path) -> Iterator[Store]:
    """A store opened only to read it (a running daemon may hold it)."""
    store = Store(state_path, read_only=True)
    try:
        yield store
    finally:
        store.close()


def read_summary(
    state_path: Path,
) -> tuple[dict[str, SourceStatus], list[Totals]]:
    """(status by source, totals) from a store, read-only: see Store.totals."""
    with read_only(state_path) as store:
        return store.source_status(), store.totals()


def read_holdings(state_path: Path) -> tuple[int, list[tuple[int, int]]]:
    """What the mirror holds, read-only (see Store.holdings); (0, []) with no store yet."""
    if not state_path.exists():
        return 0, []
    with read_only(state_path) as store:
        return store.holdings()


def state_holder(state_path: Path) -> str | None:
    """Who holds the lock of the state store at `state_path` ("pid N on host"), None if no
    process does; the lock file is only read, never created."""
    return holder(lock_path(state_path))
