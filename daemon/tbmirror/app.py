"""The composition root: settings -> the journal (locked, recovered) and one engine per source, and
the actions the commands run on them (`sync`, `check`, `status`; `run` is service/daemon.py).

Actions return plain results; cli.py renders them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import structlog

from tbmirror import checks, pruning
from tbmirror.checks import Finding
from tbmirror.config import (
    MlflowSourceSettings,
    Settings,
    SourceSettings,
    without_userinfo,
)
from tbmirror.engine.base import Engine, PassReport, Progress
from tbmirror.engine.mlflow.engine import MlflowEngine
from tbmirror.engine.uploads import UploadEngine
from tbmirror.errors import TbmirrorError
from tbmirror.journal import Journal, Totals, read_only, read_summary, recover
from tbmirror.mirror.layout import MirrorLayout
from tbmirror.model import SourceStatus
from tbmirror.pruning import Unowned, find_unowned
from tbmirror.sources.mlflow import MlflowSource

log = structlog.get_logger(__name__)

ProgressFor = Callable[[str], AbstractContextManager[Progress | None]]


def open_journal(settings: Settings) -> Journal:
    """Open the store and own every configured source's subtree (both locked for this process),
    and bring those subtrees back to what the store says (recovery) before anything reads them."""
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
    """The engine that mirrors the source `settings` describe (close it when done). In the
    daemon (which passes its `stop` event: it ends waits and reads at once), a pass lists the
    artifacts of at most `artifacts.batch` runs never looked at."""
    if isinstance(settings, MlflowSourceSettings):
        batch = settings.artifacts.batch if stop is not None else None
        source = MlflowSource.from_settings(settings, stop)
        return MlflowEngine(source, journal, artifact_batch=batch)
    return UploadEngine(settings, journal)


def sync_sources(
    settings: Settings, reconcile_all: bool, progress_for: ProgressFor
) -> Iterator[PassReport]:
    """One full pass over each source in turn (`tbmirror sync`), reported as each ends."""
    journal = open_journal(settings)
    try:
        for source_settings in settings.sources:
            engine = build_engine(source_settings, journal)
            log.info("source_syncing", source=engine.name, location=_location(source_settings))
            try:
                with progress_for(engine.name) as progress:
                    report = engine.run_pass(reconcile_all=reconcile_all, progress=progress)
            finally:
                engine.close()
            yield report
    finally:
        journal.close()


def _location(settings: SourceSettings) -> str:
    """Where a source reads from, as shown to an operator (no user:password@)."""
    if isinstance(settings, MlflowSourceSettings):
        return without_userinfo(settings.tracking_uri)
    return str(settings.path)


def check(settings: Settings, origin: str, offline: bool) -> list[Finding]:
    """What in the config will not work (`tbmirror check`; see checks.py): `offline`, the file
    alone (nothing contacted, no disk looked at)."""
    return checks.offline(settings, origin) if offline else checks.online(settings, origin)


def tensorboard_memory(settings: Settings) -> Finding:
    """TensorBoard's estimated memory for what the mirror holds, against its budget."""
    return checks.tensorboard_memory(settings)


def prune(settings: Settings, dry_run: bool) -> list[tuple[Unowned, str | None]]:
    """What no configured source or experiment owns any more, removed unless `dry_run`; each
    with the error that kept it (another process holds its source), if any."""
    journal = open_journal(settings)
    try:
        done: list[tuple[Unowned, str | None]] = []
        for unowned in find_unowned(settings, journal):
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
        for unowned in find_unowned(settings, store):
            rows.append({
                "source": unowned.source, "experiment": unowned.dir.split("/", 1)[-1],
                "runs": len(unowned.runs), "points": None, "images": None, "tables": None,
                "last_sync": None,
                "lag_seconds": None, "consecutive_errors": 0, "last_error": None,
                "failed_runs": 0, "prune": f"{unowned.why}: tbmirror prune removes it",
            })  # fmt: skip
    return rows
