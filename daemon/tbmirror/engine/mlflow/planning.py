"""Planning: which series of a run to fetch this pass, and whether to look at its artifacts.

A series is fetched when the run listing shows its latest point changed, when it is new, and for
every key of a run being reconciled. MLflow's latest-per-key cannot reveal a new point with a
lower step (resumed training), so running runs are reconciled every `reconcile_interval`; a
finished run once more, `reconcile_interval` after it ended (late writes, asynchronous
ingestion), and whenever its status changes; `tbmirror sync --reconcile` reconciles everything.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

from tbmirror.config import MlflowSourceSettings
from tbmirror.journal import Journal
from tbmirror.model import TERMINAL_STATUSES, Cursor, RunRecord, RunSnapshot
from tbmirror.sources.mlflow import HistoryRequest


@dataclass
class Plan:
    """One run's work in a chunk: its record (already placed) and the series to fetch."""

    run: RunSnapshot
    record: RunRecord
    parent_run_id: str | None
    cursors: dict[str, Cursor]
    requests: list[HistoryRequest]
    reconcile: bool
    artifacts: bool  # look for new or grown tfevents artifacts


class Planner:
    """Plans runs for one source; `start_pass` resets the per-pass reconcile budget."""

    def __init__(
        self, settings: MlflowSourceSettings, journal: Journal, clock: Callable[[], float]
    ) -> None:
        self.settings = settings
        self.journal = journal
        self.clock = clock
        self._reconcile_budget = 0

    def start_pass(self) -> None:
        self._reconcile_budget = self.settings.reconcile_batch

    def plan(
        self,
        run: RunSnapshot,
        record: RunRecord,
        parent_run_id: str | None,
        reconcile_all: bool,
        written: bool = False,
    ) -> Plan | None:
        """What to do for a run this pass; None if nothing: the run is `written` (this very
        snapshot was mirrored whole: `record.listed`, kept in the store, so after a restart too)
        and neither a reconcile nor its artifacts are due (then its series' cursors are not even
        read: a full listing of 100,000 unchanged runs)."""
        new_run = not record.status
        reconcile = new_run or reconcile_all or record.status != run.status
        if not reconcile and self._reconcile_budget > 0 and self._reconcile_due(run, record):
            reconcile = True
            self._reconcile_budget -= 1
        status_changed = not new_run and record.status != run.status
        artifacts = self._artifacts_due(run, record, reconcile_all or status_changed, reconcile)
        if written and not reconcile and not artifacts:
            return None
        cursors = self.journal.cursors(self.settings.name, run.run_id)
        requests = [
            HistoryRequest(run.run_id, key, cursors.get(key, Cursor()))
            for key, latest in sorted(run.latest.items())
            if reconcile
            or key not in cursors
            or cursors[key].seen is None
            or cursors[key].seen.identity() != latest.identity()  # type: ignore[union-attr]
        ]
        return Plan(run, record, parent_run_id, cursors, requests, reconcile, artifacts)

    def _artifacts_due(
        self, run: RunSnapshot, record: RunRecord, always: bool, reconcile: bool
    ) -> bool:
        """Whether to list a run's artifacts with its chunk: a running run's every pass; a run
        that just ended, or everything with `--reconcile` (`always`); a finished run due for a
        reconcile. Finished runs never looked at are the backlog's (`artifact_backlog`)."""
        if not self.settings.artifacts.enabled:
            return False
        return always or not run.terminal or (reconcile and bool(record.artifacts_at))

    def _reconcile_due(self, run: RunSnapshot, record: RunRecord) -> bool:
        """Whether to re-check every series of a run whose status did not change."""
        interval = self.settings.reconcile_interval
        if self.clock() - record.reconciled_at < interval:
            return False
        if not run.terminal:
            return True
        ended = (run.end_time or run.start_time or 0) / 1000
        return record.reconciled_at < ended + interval

    def artifact_backlog(
        self, records: dict[str, RunRecord], retry_at: dict[str, float], limit: int | None
    ) -> list[str]:
        """Finished runs whose artifacts were never looked at: all of them (`limit` None), or in
        the daemon `artifacts.batch` per pass (quick passes too), so a first pass over 10,000 old
        runs mirrors their metrics without waiting for 10,000 listings. A run whose listing
        failed waits until its `retry_at`."""
        if not self.settings.artifacts.enabled:
            return []
        now = self.clock()
        backlog = (
            run_id
            for run_id, record in records.items()
            if not record.artifacts_at
            and record.status in TERMINAL_STATUSES
            and retry_at.get(run_id, 0) <= now
        )
        return list(itertools.islice(backlog, limit))
