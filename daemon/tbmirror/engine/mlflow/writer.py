"""The writer: planned runs and their fetched histories, encoded and handed to the journal.

A chunk of runs is one batch (their records, run rows and cursors committed together); the further
pages of a long series are one batch a page, written as they are fetched, so a series of millions
of points is never held whole. Each run's record keeps the fingerprint of the snapshot
last mirrored whole (`listed`, committed with the run), so an unchanged run is not encoded again,
after a restart too (`unchanged`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import structlog

from tbmirror.config import MlflowSourceSettings
from tbmirror.engine.base import PassReport, RunFailed
from tbmirror.engine.mlflow.encoding import Encoded, RunEncoder, SeriesStream, append_records
from tbmirror.engine.mlflow.placement import Placed, Placement
from tbmirror.engine.mlflow.planning import Plan
from tbmirror.errors import MirrorError, WriteFault
from tbmirror.journal import Journal
from tbmirror.mirror.events import CorruptRecordError, EventsFileLostError
from tbmirror.model import Cursor, RunRecord, RunSnapshot
from tbmirror.sources.http import BadAnswerError, HttpStatusError
from tbmirror.sources.mlflow import History, SeriesChangedError

log = structlog.get_logger(__name__)


class RunWriter:
    """Writes one source's planned runs. Not thread-safe (one pass at a time)."""

    def __init__(
        self,
        settings: MlflowSourceSettings,
        journal: Journal,
        placement: Placement,
        clock: Callable[[], float],
        run_failed: RunFailed,
    ) -> None:
        """`run_failed` counts and logs a run that failed."""
        self.source = settings.name
        self.journal = journal
        self.placement = placement
        self.clock = clock
        self.encoder = RunEncoder(settings.run_link_base, journal.layout.resolve, self._trial_name)
        self._run_failed = run_failed
        self._trials: set[str] = set()  # HParams session names given in the batch being made

    def unchanged(self, run: RunSnapshot, placed: Placed) -> bool:
        """Whether this very snapshot of the run was mirrored whole, where it is placed now."""
        return (
            run.fingerprint != 0
            and placed.record.listed == run.fingerprint
            and placed.record.status == run.status
            and not placed.moved
        )

    def write_chunk(
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
        self._trials.clear()  # (those of earlier batches are in the store now, or not given)
        with self.journal.batch(self.source) as batch:
            for plan in plans:
                if stop is not None and stop.is_set():
                    break
                try:
                    encoded = self.encoder.encode(plan, histories, now)
                    record = append_records(batch, encoded.record, encoded.payloads, now)
                    record.listed = 0 if encoded.streams else plan.run.fingerprint  # whole?
                except Exception as error:  # one bad run never stops the others
                    self._run_failed(report, plan.run.run_id, error)
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

    def write_streams(
        self,
        streams: list[tuple[str, SeriesStream]],
        report: PassReport,
        stop: threading.Event | None,
    ) -> None:
        """Write the further pages of long series, one batch a page, as they are fetched. A
        series that changed while read is left for the next pass; a run whose page the server
        refuses is counted failed; a source that cannot be reached ends the pass. What earlier
        pages committed stays."""
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
                log.info("history_changed_while_read", source=self.source, run_id=run_id,
                         error=str(error))  # fmt: skip
            except (
                HttpStatusError,
                BadAnswerError,
                MirrorError,
                CorruptRecordError,
                OSError,
            ) as error:
                # this run's: its answer, or its own events file read back (a rewritten series)
                failed.add(run_id)
                self._run_failed(report, run_id, error)
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
        with self.journal.batch(self.source) as batch:
            record = append_records(batch, before, payloads, self.clock())
            if record != before:
                batch.put_run(record)
            batch.put_cursors(record.source, run_id, {stream.key: cursor or stream.committed()})
            written = batch.bytes_written
        self.placement.committed([record])
        return written

    def _trial_name(self, run: RunSnapshot) -> str:
        """A name for the run's HParams session that no other session in the state store or the
        batch being made has: the run's name, else with the first 8 characters of its id, else
        its id."""
        for name in (run.name, f"{run.name} ({run.run_id[:8]})"):
            if name not in self._trials and not self.journal.trial_taken(name):
                self._trials.add(name)
                return name
        return run.run_id
