"""The MLflow engine: one incremental pass of one MLflow source into the mirror.

A pass reads the source's run listing a page at a time (never every run at once), selects
(selection.py) and places each run (placement.py: moved on rename, removed on deletion), plans
which series changed (planning.py), fetches only those histories, encodes the new records
(encoding.py) and hands each chunk of runs to the journal as one batch; running runs and runs due
for a reconcile are also checked for tfevents artifacts (artifacts.py). Once the listing is
complete, runs it proves deleted or out of the selection leave the mirror.

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
from tbmirror.engine.mlflow.encoding import Encoded, RunEncoder, SeriesStream, append_records
from tbmirror.engine.mlflow.placement import Placement
from tbmirror.engine.mlflow.planning import Plan, Planner
from tbmirror.engine.mlflow.selection import AGE, FILTER, STATUS, Selection
from tbmirror.errors import MirrorError, TbmirrorError
from tbmirror.journal import Journal, WriteFault
from tbmirror.mirror.events import EventsFileLostError
from tbmirror.model import Cursor, RunRecord, RunSnapshot
from tbmirror.sources.http import BadAnswerError, HttpStatusError, StoppedError
from tbmirror.sources.mlflow import History, MlflowSource, RunListing, SeriesChangedError

log = structlog.get_logger(__name__)

CHUNK_RUNS = 100
LISTING_MARGIN_SECONDS = 60  # quick listings look this far back for new runs (clock skew)
PROOF_CHECKS = 200  # runs asked about (runs/get, a search) per pass, for each kind of proof


@dataclass
class Chunk:
    """Up to CHUNK_RUNS runs, placed and planned, their histories being fetched."""

    plans: list[Plan]
    histories: Future[dict[tuple[str, str], History]]


class MlflowEngine:
    """The Engine (engine/base.py) of one MLflow source. One pass at a time per instance."""

    def __init__(
        self,
        source: MlflowSource,
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
        self.encoder = RunEncoder(
            self.settings.run_link_base, journal.layout.resolve, self._trial_name
        )
        self.artifacts = ArtifactSync(source, journal, self.placement, clock, self._fail)
        self.selection = Selection(self.settings, clock)
        self.artifact_batch = artifact_batch
        self._last_listing: float | None = None
        self._trials: set[str] | None = None  # HParams session names in use (read once a pass)

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def runs_mirrored(self) -> int:
        return self.placement.runs_mirrored

    @property
    def progress_at(self) -> float | None:
        return self.source.client.rest.answered_at

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
        that are running, new, or were running at the last pass (MlflowSource.list_runs); the
        first pass of an instance is always full."""
        report = PassReport(self.source.name)
        started, requests_before = time.monotonic(), self.source.requests_made
        try:
            self._pass(report, full or self._last_listing is None, reconcile_all, progress, stop)
        except TbmirrorError as error:
            self.placement.invalidate()
            report.error, report.write_fault = str(error), isinstance(error, WriteFault)
            if isinstance(error, StoppedError):  # the daemon stops: not the source's failure
                log.info("pass_stopped", source=self.source.name, error=str(error))
            else:
                log.error("source_failed", source=self.source.name, error=str(error))
        except Exception as error:  # a bug or unexpected data: fail this pass, not the daemon
            self.placement.invalidate()
            report.error = f"unexpected {type(error).__name__}: {error}"
            log.exception("source_failed", source=self.source.name, error=report.error)
        report.requests = self.source.requests_made - requests_before
        report.seconds = time.monotonic() - started
        self.journal.passes.record(
            self.source.name,
            report.error,
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
        self._trials = None
        listing_started = self.clock()
        listing = self._list(full)
        report.missing_experiments = listing.missing_experiments
        for name in listing.missing_experiments:
            log.warning("experiment_not_found", source=self.source.name, experiment=name)
        experiment_dirs = self.placement.place_experiments(listing.experiments)
        selected = self.selection.stream(
            listing.runs, full, self.placement.records, self.placement.archived
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
        needs_proof = self.settings.on_delete == "remove" or bool(self.settings.filter)
        absent = self._absent_states(listing, full) if needs_proof else {}
        if self.settings.on_delete == "remove":
            self._remove_deleted(listing, absent, report)
        self._retire(selected.out, absent, report)
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
        written = (
            run.fingerprint != 0
            and placed.record.listed == run.fingerprint
            and placed.record.status == run.status
            and not placed.moved
        )
        return self.planner.plan(run, placed.record, placed.parent_run_id, reconcile_all, written)

    def _complete(self, chunk: Chunk, report: PassReport, stop: threading.Event | None) -> None:
        """Write a prepared chunk as one batch once fetched (and the further pages of its long
        series), then look at the artifacts of its runs that are due. Raises what the fetch
        raised."""
        streams = self._write_chunk(chunk.plans, chunk.histories.result(), report, stop)
        self._write_streams(streams, report, stop)
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

    def _absent_states(self, listing: RunListing, full: bool) -> dict[str, str]:
        """What runs/get says ("active", "deleted", "gone") of mirrored runs a full listing of
        their experiment does not show, for at most PROOF_CHECKS of them: a listing proves
        nothing by what it lacks. A run the server gives no clear answer about is left out."""
        if not full:
            return {}
        shown = listing.listed
        searched = set(listing.experiments)  # a run of a missing experiment is not "gone"
        absent = [
            run_id
            for run_id, record in self.placement.records.items()
            if run_id not in shown and record.experiment_id in searched
        ]
        states: dict[str, str] = {}
        for run_id in absent[:PROOF_CHECKS]:
            try:
                states[run_id] = self.source.client.run_state(run_id)
            except TbmirrorError as error:  # no proof either way: kept
                log.warning("run_absent_kept", source=self.name, run_id=run_id, error=str(error))
        return states

    def _remove_deleted(
        self, listing: RunListing, absent: dict[str, str], report: PassReport
    ) -> None:
        """Remove the mirror of runs proven deleted: shown deleted in the listing, or absent
        from it and deleted or unknown to the server (runs/get: RESOURCE_DOES_NOT_EXIST)."""
        deleted = set(listing.deleted)
        deleted |= {run_id for run_id, state in absent.items() if state != "active"}
        for run_id in sorted(deleted):  # (a few: never a copy of 100,000 records each pass)
            record = self.placement.records.get(run_id) or self.placement.archived.get(run_id)
            if record is not None:
                self.placement.remove(record)
                report.runs_removed += 1

    def _retire(self, out: dict[str, str], absent: dict[str, str], report: PassReport) -> None:
        """Take mirrored top-level runs out of the root (their children with them) once the
        server proves they left the selection (selection.py): runs/get shows them out by status
        or age; a search with the filter answers a well-formed empty page for one absent from a
        full listing; a complete listing puts them past `max_runs`; their parent left already.
        At most PROOF_CHECKS requests."""
        records = self.placement.records
        candidates = [  # a child whose parent is in the root leaves with it
            (records[run_id], reason)
            for run_id, reason in out.items()
            if run_id in records and records[run_id].parent_run_id not in records
        ]
        if self.settings.filter:
            candidates += [
                (records[run_id], FILTER)
                for run_id, state in absent.items()
                if state == "active" and records[run_id].parent_run_id not in records
            ]
        asked = 0
        for record, reason in candidates:
            needs_proof = reason in (STATUS, AGE, FILTER)
            if record.run_id not in records or (needs_proof and asked >= PROOF_CHECKS):
                continue  # it left with its parent, or no more questions this pass
            asked += needs_proof
            try:
                if reason in (STATUS, AGE):
                    proven = self.selection.judge(self.source.client.run(record.run_id)) is not None
                elif reason == FILTER:
                    proven = not self.source.matches_filter(record.run_id, record.experiment_id)
                else:  # MAX_RUNS (a complete listing) or PARENT (its parent left)
                    proven = True
                if proven:
                    log.info("run_left_selection", source=self.name, run_id=record.run_id,
                             reason=reason)  # fmt: skip
                    report.runs_retired += len(self.placement.retire(record))
            except WriteFault:
                raise
            except TbmirrorError as error:  # no proof, or the move failed: this run only
                self._fail(report, record.run_id, error)

    def _write_chunk(
        self,
        plans: list[Plan],
        histories: dict[tuple[str, str], History],
        report: PassReport,
        stop: threading.Event | None,
    ) -> list[tuple[str, SeriesStream]]:
        """Encode every planned run and hand them to the journal as one batch; returns the
        series (with their run's id) whose further pages are to be written."""
        now = self.clock()
        lost: list[RunRecord] = []
        committed: list[RunRecord] = []
        written: list[Encoded] = []
        streams: list[tuple[str, SeriesStream]] = []
        with self.journal.batch(self.source.name) as batch:
            for plan in plans:
                if stop is not None and stop.is_set():
                    break
                try:
                    encoded = self.encoder.encode(plan, histories, now)
                    record = append_records(batch, encoded.record, encoded.payloads, now)
                    record.listed = 0 if encoded.streams else plan.run.fingerprint  # whole?
                except Exception as error:  # one bad run never stops the others
                    self._fail(report, plan.run.run_id, error)
                    if isinstance(error, EventsFileLostError):
                        lost.append(plan.record)
                    continue
                if record != plan.record or encoded.cursors:
                    batch.put_run(record)
                    batch.put_cursors(record.source, record.run_id, encoded.cursors)
                    committed.append(record)
                if encoded.payloads:
                    written.append(encoded)
                streams += [(plan.run.run_id, stream) for stream in encoded.streams]
            bytes_written = batch.bytes_written
        self.placement.committed(committed)
        report.bytes_written += bytes_written
        report.runs_written += len(written)
        report.points += sum(encoded.points for encoded in written)
        for record in lost:
            self.placement.reset(record)
        return streams

    def _write_streams(
        self,
        streams: list[tuple[str, SeriesStream]],
        report: PassReport,
        stop: threading.Event | None,
    ) -> None:
        """Write the further pages of long series, one batch a page, as they are fetched (a
        series of millions of points is never held whole). A series that changed while read is
        left for the next pass; a run whose page the server refuses is counted failed; a source
        that cannot be reached ends the pass. What earlier pages committed stays."""
        failed: set[str] = set()
        for run_id, stream in streams:
            if run_id in failed or run_id not in self.placement.records:
                continue
            try:
                for page in stream.pages:
                    payloads = stream.take(page)
                    report.bytes_written += self._write_page(run_id, stream, payloads)
                    report.points += len(payloads)
                    if stop is not None and stop.is_set():
                        return  # the rest of the series is fetched again next pass
                self._write_page(run_id, stream, [], stream.finished())
            except WriteFault:
                raise  # the mirror's disk, not this run: the pass ends
            except SeriesChangedError as error:
                log.info("history_changed_while_read", source=self.name, run_id=run_id,
                         error=str(error))  # fmt: skip
            except (HttpStatusError, BadAnswerError, MirrorError) as error:  # this run's
                failed.add(run_id)
                self._fail(report, run_id, error)
                if isinstance(error, EventsFileLostError):
                    self.placement.reset(self.placement.records[run_id])
            finally:
                close = getattr(stream.pages, "close", None)
                if close is not None:
                    close()  # (a generator left half-read)

    def _write_page(
        self, run_id: str, stream: SeriesStream, payloads: list[bytes], cursor: Cursor | None = None
    ) -> int:
        """Records of a series and the cursor that covers them (default: what was taken so far)
        as one batch; returns the bytes written."""
        before = self.placement.records[run_id]
        with self.journal.batch(self.source.name) as batch:
            record = append_records(batch, before, payloads, self.clock())
            if record != before:
                batch.put_run(record)
            batch.put_cursors(record.source, run_id, {stream.key: cursor or stream.committed()})
            written = batch.bytes_written
        self.placement.committed([record])
        return written

    def _trial_name(self, run: RunSnapshot) -> str:
        """A name for the run's HParams session that no other session in the state store has:
        the run's name, else with the first 8 characters of its id, else its id."""
        if self._trials is None:
            self._trials = self.journal.trials()
        for name in (run.name, f"{run.name} ({run.run_id[:8]})"):
            if name not in self._trials:
                self._trials.add(name)
                return name
        return run.run_id

    def _fail(self, report: PassReport, run_id: str, error: Exception) -> None:
        report.failed_runs.append(run_id)
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
