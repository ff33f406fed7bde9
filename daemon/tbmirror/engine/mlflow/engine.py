"""The MLflow engine: one incremental pass of one MLflow source into the mirror (the pipeline).

A pass reads the source (a RunSource, source.py) a listing page at a time (never every run at
once), selects (selection.py) and places each run (placement.py: moved on rename), plans which
series changed (planning.py), fetches only those histories, and has each chunk of runs encoded
(encoding.py) and handed to the journal as one batch (writer.py); running runs and runs due for a
reconcile are also checked for artifacts (artifacts.py). Once the listing is complete, runs the
server proves deleted or out of the selection leave the mirror (removal.py).

One run that fails is logged and counted and the pass goes on; a source error ends the pass,
keeping what earlier chunks committed; a write fault (the journal's) ends it too, and the next
pass starts by completing the batch that failed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass

import structlog

from tbmirror.engine.base import PassReport, Progress
from tbmirror.engine.mlflow.artifacts import ArtifactSync
from tbmirror.engine.mlflow.placement import Placement
from tbmirror.engine.mlflow.planning import Plan, Planner
from tbmirror.engine.mlflow.removal import Removal
from tbmirror.engine.mlflow.selection import Selection
from tbmirror.engine.mlflow.source import RunSource
from tbmirror.engine.mlflow.writer import RunWriter
from tbmirror.errors import TbmirrorError, UnexpectedError, WriteFault
from tbmirror.journal import Journal
from tbmirror.model import RunSnapshot
from tbmirror.sources.http import StoppedError
from tbmirror.sources.mlflow import History, RunListing

log = structlog.get_logger(__name__)

CHUNK_RUNS = 100
LISTING_MARGIN_SECONDS = 60  # quick listings look this far back for new runs (clock skew)


@dataclass
class Chunk:
    """Up to CHUNK_RUNS runs, placed and planned, their histories being fetched."""

    plans: list[Plan]
    histories: Future[dict[tuple[str, str], History]]


class MlflowEngine:
    """The Engine (engine/base.py) of one MLflow source. One pass at a time per instance."""

    def __init__(
        self,
        source: RunSource,
        journal: Journal,
        clock: Callable[[], float] = time.time,
        artifact_batch: int | None = None,
    ) -> None:
        """`artifact_batch`: finished runs never looked at whose artifacts a pass lists (None: all
        of them; the daemon passes `artifacts.batch`)."""
        self.source = source
        self.journal = journal
        self.clock = clock
        self.settings = source.settings
        self.placement = Placement(source.name, journal)
        self.planner = Planner(self.settings, journal, clock)
        self.writer = RunWriter(self.settings, journal, self.placement, clock, self._fail)
        self.artifacts = ArtifactSync(source, journal, self.placement, clock, self._fail)
        self.selection = Selection(self.settings, clock)
        self.removal = Removal(source, self.placement, self.selection, self._fail)
        self.artifact_batch = artifact_batch
        self._last_listing: float | None = None

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def runs_mirrored(self) -> int:
        return self.placement.runs_mirrored

    @property
    def progress_at(self) -> float | None:
        return self.source.answered_at

    def watch_spec(self) -> None:
        """Nothing to watch: an MLflow source is polled."""
        return None

    def close(self) -> None:
        self.source.close()

    def run_pass(
        self,
        full: bool = True,
        reconcile_all: bool = False,
        progress: Progress | None = None,
        stop: threading.Event | None = None,
    ) -> PassReport:
        """One incremental pass (Engine.run_pass). A quick one (`full` False) lists only runs
        that are running, new, or were running at the last pass (RunSource.list_runs); the
        first pass of an instance is always full."""
        report = PassReport(self.source.name)
        started, requests_before = time.monotonic(), self.source.requests_made
        try:
            self._pass(report, full or self._last_listing is None, reconcile_all, progress, stop)
        except TbmirrorError as error:
            self.placement.invalidate()
            report.failure = error
            if isinstance(error, StoppedError):  # the daemon stops: not the source's failure
                log.info("pass_stopped", source=self.source.name, error=str(error))
            else:
                log.error("source_failed", source=self.source.name, error=str(error))
        except Exception as error:  # a bug or unexpected data: fail this pass, not the daemon
            self.placement.invalidate()
            report.failure = UnexpectedError(error)
            log.exception("source_failed", source=self.source.name, error=str(report.failure))
        report.requests = self.source.requests_made - requests_before
        report.seconds = time.monotonic() - started
        self.journal.passes.record(
            self.source.name,
            None if report.failure is None else str(report.failure),
            self.clock(),
            len(set(report.failed_runs)),
            report.runs_tried,
        )
        return report

    def _pass(
        self,
        report: PassReport,
        full: bool,
        reconcile_all: bool,
        progress: Progress | None,
        stop: threading.Event | None,
    ) -> None:
        self.journal.settle(self.source.name)
        self.placement.load()
        listing_started = self.clock()
        listing = self._list(full)
        report.missing_experiments = listing.missing_experiments
        for name in listing.missing_experiments:
            log.warning("experiment_not_found", source=self.source.name, experiment=name)
        experiment_dirs = self.placement.place_experiments(listing.experiments)
        selected = self.selection.stream(
            listing.runs,
            full,
            self.placement.records,
            self.placement.archived,
            lambda: self.removal.rivals(listing, full),
        )
        self.planner.start_pass()

        def tick() -> None:
            if progress:
                progress(report.runs_tried, len(listing.listed))

        try:
            self._sync_listed(selected, experiment_dirs, reconcile_all, report, tick, stop)
        finally:
            report.runs_listed = len(listing.listed)
        if stop is not None and stop.is_set():
            return
        self.removal.after_listing(listing, full, selected.out, report)
        backlog = self.planner.artifact_backlog(
            self.placement.records, self.artifacts.retry_at, self.artifact_batch
        )
        report.runs_tried += len([run_id for run_id in backlog if run_id not in listing.listed])
        for start in range(0, len(backlog), CHUNK_RUNS):
            self.artifacts.sync(backlog[start : start + CHUNK_RUNS], report, stop)
        self._last_listing = listing_started

    def _sync_listed(
        self,
        selected: Iterable[RunSnapshot],
        experiment_dirs: dict[str, str],
        reconcile_all: bool,
        report: PassReport,
        tick: Callable[[], None],
        stop: threading.Event | None,
    ) -> None:
        """Sync the runs of a listing as it is read, CHUNK_RUNS at a time (`tick` after each):
        each chunk's histories are fetched while the chunk before it is written. A listing that
        fails still has what it listed before written; then its error is raised."""
        with ThreadPoolExecutor(1, thread_name_prefix="prefetch") as prefetch:
            pending: Chunk | None = None
            chunks = _chunks(run for run in selected if not run.deleted)
            while True:
                try:
                    runs = next(chunks, None)
                except TbmirrorError:
                    if pending is not None:
                        self._complete(pending, report, stop)
                    raise
                chunk = self._prepare(runs, experiment_dirs, reconcile_all, report, prefetch)
                if pending is not None:
                    self._complete(pending, report, stop)
                    tick()
                    if stop is not None and stop.is_set():
                        return  # (what `chunk` fetches is fetched again next pass)
                if chunk is None:
                    return
                pending = chunk

    def _prepare(
        self,
        runs: list[RunSnapshot] | None,
        experiment_dirs: dict[str, str],
        reconcile_all: bool,
        report: PassReport,
        prefetch: Executor,
    ) -> Chunk | None:
        """Place and plan a chunk of listed runs, and start fetching what changed on `prefetch`;
        None if there are no `runs`."""
        if not runs:
            return None
        report.runs_tried += len(runs)
        self.artifacts.note(runs)
        plans: list[Plan] = []
        for run in runs:
            try:
                plan = self._plan(run, experiment_dirs, reconcile_all, report)
            except WriteFault:
                raise
            except Exception as error:  # one bad run never stops the others
                self._fail(report, run.run_id, error)
                continue
            if plan is not None:
                plans.append(plan)
        requests = [request for plan in plans for request in plan.requests]
        report.history_series += len(requests)
        return Chunk(plans, prefetch.submit(self.source.fetch, requests))

    def _plan(
        self,
        run: RunSnapshot,
        experiment_dirs: dict[str, str],
        reconcile_all: bool,
        report: PassReport,
    ) -> Plan | None:
        """Place a listed run and plan its work; None if there is none (it has no place, or
        this very snapshot was mirrored whole and nothing is due). Raises for this run only."""
        placed = self.placement.place(run, experiment_dirs)
        if placed is None:
            return None
        report.runs_moved += placed.moved
        written = self.writer.unchanged(run, placed)
        plan = self.planner.plan(run, placed.record, placed.parent_run_id, reconcile_all, written)
        report.runs_planned += plan is not None
        return plan

    def _complete(self, chunk: Chunk, report: PassReport, stop: threading.Event | None) -> None:
        """Write a prepared chunk as one batch once fetched (and the further pages of its long
        series), then look at the artifacts of its runs that are due. Raises what the fetch
        raised."""
        streams = self.writer.write_chunk(chunk.plans, chunk.histories.result(), report, stop)
        self.writer.write_streams(streams, report, stop)
        self.artifacts.sync([p.run.run_id for p in chunk.plans if p.artifacts], report, stop)

    def _list(self, full: bool) -> RunListing:
        mirrored = self.placement.records
        if full:
            return self.source.list_runs(mirrored_ids=mirrored)
        assert self._last_listing is not None
        return self.source.list_runs(
            since_ms=int((self._last_listing - LISTING_MARGIN_SECONDS) * 1000),
            watch_ids=[r.run_id for r in mirrored.values() if r.status == "RUNNING"],
            mirrored_ids=mirrored,
        )

    def _fail(self, report: PassReport, run_id: str, error: Exception) -> None:
        report.failed_runs.append(run_id)
        record = self.placement.records.get(run_id)
        if record is not None:
            record.listed = 0  # looked at whole again next pass
        expected = isinstance(error, (OSError, TbmirrorError))
        (log.error if expected else log.exception)(
            "run_failed", source=self.source.name, run_id=run_id, error=str(error)
        )


def _chunks(runs: Iterable[RunSnapshot]) -> Iterator[list[RunSnapshot]]:
    """`runs` in lists of CHUNK_RUNS (the last one shorter), each as soon as it is full."""
    chunk: list[RunSnapshot] = []
    for run in runs:
        chunk.append(run)
        if len(chunk) == CHUNK_RUNS:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
