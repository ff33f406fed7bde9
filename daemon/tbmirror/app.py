"""The composition root: settings -> the journal (locked, recovered) and one engine per source,
built through the registry of source kinds (`KINDS`), and the actions the commands run on them
(`sync`, `check`, `prune`, `status`). `Mirror` is what the service (`tbmirror run`) asks of it;
the service and the cli reach the journal and the engines only through here.

Actions return plain results; cli.py renders them.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import structlog

from tbmirror import allocator, checks, pruning
from tbmirror.checks import Finding
from tbmirror.config import Settings, SourceSettings
from tbmirror.engine.base import Engine, PassReport, Progress, WatchSpec
from tbmirror.errors import MirrorError, TbmirrorError
from tbmirror.journal import Fault, Journal, Totals, read_only, read_summary, recover
from tbmirror.kinds import mlflow, uploads
from tbmirror.kinds.base import Registry, Schedule
from tbmirror.mirror.layout import MirrorLayout
from tbmirror.model import SourceStatus
from tbmirror.pruning import Unowned, find_unowned

__all__ = [
    "KINDS",
    "Engine",
    "Fault",
    "Mirror",
    "PassReport",
    "Schedule",
    "WatchSpec",
    "build_engine",
    "check",
    "open_journal",
    "prune",
    "status_rows",
    "sync_sources",
]

# The kinds of source tbmirror knows: adding one is its package and a line here, with its
# settings model in tbmirror.config (docs/architecture.md: "Adding a kind of source").
KINDS = Registry(mlflow.KIND, uploads.KIND)

log = structlog.get_logger(__name__)

ProgressFor = Callable[[str], AbstractContextManager[Progress | None]]


def open_journal(settings: Settings) -> Journal:
    """Open the store and own every configured source's subtree (both locked for this process),
    and bring those subtrees back to what the store says (recovery) before anything reads them.
    From then on the process's large freed blocks go back to the system (allocator.py)."""
    allocator.configure()
    layout = MirrorLayout(settings.mirror.root, settings.mirror.archive)
    try:
        layout.root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise TbmirrorError(f"cannot create the mirror root {layout.root}: {error}") from error
    journal = Journal.open(layout, settings.mirror.state)
    try:
        for source in settings.sources:
            journal.own(source.name)
        report = recover(journal, [source.name for source in settings.sources])
    except BaseException:
        journal.close()
        raise
    log.info("recovered", **vars(report))
    return journal


def build_engine(
    settings: SourceSettings, journal: Journal, stop: threading.Event | None = None
) -> Engine:
    """The engine that mirrors the source `settings` describe, built by its kind (close it when
    done). `stop` is the daemon's (it ends waits and reads at once); None for `tbmirror sync`."""
    return KINDS.build(settings, journal, stop)


class Mirror:
    """The mirror a daemon owns: its journal, opened with every configured source's subtree
    locked and recovered (`open`), and what the service asks of it. Thread-safe as the journal
    is."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal

    @classmethod
    def open(cls, settings: Settings) -> Mirror:
        return cls(open_journal(settings))

    def close(self) -> None:
        self._journal.close()

    def own(self, source: str) -> None:
        """Lock the subtree of `source` for this process (TbmirrorError: another holds it)."""
        self._journal.own(source)

    def disown(self, source: str) -> None:
        self._journal.disown(source)

    def own_and_recover(self, sources: list[str]) -> bool:
        """Own the `sources` a reload adds (those another process holds are left out) and bring
        their subtrees back to what the store says (a source left out of the config since a
        crash may hold uncommitted bytes). True if recovery cut or removed anything:
        TensorBoard may have read it, so it must start afresh."""
        owned = []
        for name in sources:
            try:
                self._journal.own(name)
            except TbmirrorError:
                continue  # another process has it: the scheduler reports it
            owned.append(name)
        report = recover(self._journal, owned)
        changed = bool(report.truncated or report.orphans_removed or report.runs_reset)
        if changed:
            log.warning("added_sources_recovered", **vars(report))
        return changed

    def build(self, settings: SourceSettings, stop: threading.Event | None) -> Engine:
        """The engine of a source (see `build_engine`); its subtree must be owned."""
        return build_engine(settings, self._journal, stop)

    def schedule(self, settings: SourceSettings) -> Schedule:
        """How often the daemon polls the source, and lists everything (its kind's hints)."""
        return KINDS.schedule(settings)

    def link_base(self, settings: SourceSettings) -> str | None:
        """The base URL the source's mirrored runs link back to, if any."""
        return KINDS.link_base(settings)

    def holdings(self) -> tuple[int, list[tuple[int, int]]]:
        """What the mirror holds, for TensorBoard's memory budget (see Journal.holdings);
        MirrorError if the store cannot say."""
        try:
            return self._journal.holdings()
        except sqlite3.Error as error:
            raise MirrorError(
                f"the state store cannot say what the mirror holds: {error}"
            ) from None

    def statuses(self) -> dict[str, SourceStatus]:
        """How each source's passes went, as recorded."""
        return self._journal.passes.current()

    def faults(self) -> dict[str, Fault]:
        """The sources whose mirror cannot be written now, and why."""
        return self._journal.faults()

    def add_fault_listener(self, listener: Callable[[str, str], None]) -> None:
        """`listener(source, cause)` is called on every failed write attempt."""
        self._journal.add_fault_listener(listener)


def sync_sources(
    settings: Settings, reconcile_all: bool, progress_for: ProgressFor
) -> Iterator[PassReport]:
    """One full pass over each source in turn (`tbmirror sync`), reported as each ends."""
    journal = open_journal(settings)
    try:
        for source_settings in settings.sources:
            engine = build_engine(source_settings, journal)
            location = KINDS.location(source_settings)
            log.info("source_syncing", source=engine.name, location=location)
            try:
                with progress_for(engine.name) as progress:
                    report = engine.run_pass(reconcile_all=reconcile_all, progress=progress)
            finally:
                engine.close()
            yield report
    finally:
        journal.close()


def check(settings: Settings, origin: str, offline: bool) -> list[Finding]:
    """What in the config will not work (`tbmirror check`; see checks.py): `offline`, the file
    alone (nothing contacted, no disk looked at)."""
    if offline:
        return checks.offline(settings, origin)
    return checks.online(settings, origin, KINDS.check)


def tensorboard_memory(settings: Settings) -> Finding:
    """TensorBoard's estimated memory for what the mirror holds, against its budget."""
    return checks.tensorboard_memory(settings)


def prune(settings: Settings, dry_run: bool) -> list[tuple[Unowned, str | None]]:
    """What no configured source or experiment owns any more, removed unless `dry_run`; each
    with the error that kept it (another process holds its source), if any."""
    journal = open_journal(settings)
    try:
        done: list[tuple[Unowned, str | None]] = []
        for unowned in find_unowned(settings, journal, KINDS.owns_experiment):
            try:
                if not dry_run:
                    pruning.remove(journal, unowned)
                done.append((unowned, None))
            except TbmirrorError as error:
                done.append((unowned, str(error)))
        return done
    finally:
        journal.close()


def status_rows(settings: Settings) -> list[dict[str, Any]]:
    """One row per mirrored experiment (or a source's tailed files) of each configured source,
    read from the store without locking it (`tbmirror status`)."""
    path = settings.mirror.state
    if not path.exists():
        raise TbmirrorError(f"no state store at {path}: nothing has been mirrored yet")
    statuses, totals = read_summary(path)
    now = time.time()
    rows: list[dict[str, Any]] = []
    for source in settings.sources:
        status = statuses.get(source.name) or SourceStatus(source.name)
        experiments = [t for t in totals if t.source == source.name]
        for total in experiments or [Totals(source.name, "-", 0, 0, 0, 0)]:
            rows.append({
                "source": source.name,
                "experiment": total.dir.split("/", 1)[-1],
                "runs": total.runs,
                "points": total.points,
                "images": total.images,
                "tables": total.tables,
                "last_sync": status.last_success,
                "lag_seconds": round(now - status.last_success, 1) if status.last_success else None,
                "consecutive_errors": status.consecutive_errors,
                "last_error": status.last_error,
                "failed_runs": status.failed_runs,
                "prune": None,
            })  # fmt: skip
    with read_only(path) as store:
        for unowned in find_unowned(settings, store, KINDS.owns_experiment):
            rows.append({
                "source": unowned.source, "experiment": unowned.dir.split("/", 1)[-1],
                "runs": len(unowned.runs), "points": None, "images": None, "tables": None,
                "last_sync": None,
                "lag_seconds": None, "consecutive_errors": 0, "last_error": None,
                "failed_runs": 0, "prune": f"{unowned.why}: tbmirror prune removes it",
            })  # fmt: skip
    return rows
