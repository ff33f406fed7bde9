"""Encoding: one run's new history and metadata as TensorBoard records, with the cursors and run
record that cover them.

Per run: an HParams session start once it has params (and metrics or an end; named by the run's
name, made unique: TensorBoard merges sessions of one name), a text record of its
metadata (name, status, times, link, note, params, tags) whenever that changes, the new points of
each fetched series as scalars (steps by mirror/steps.py), and the session end once it ends.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from tbmirror.engine.mlflow.planning import Plan
from tbmirror.journal import Batch
from tbmirror.mirror import events, summaries
from tbmirror.mirror.steps import INT64_MAX, next_step
from tbmirror.model import Cursor, MetricPoint, RunRecord, RunSnapshot
from tbmirror.sources.mlflow import NOTE_TAG, PARENT_TAG, RUN_NAME_TAG, History, Pages

if TYPE_CHECKING:
    from tbmirror.engine.mlflow.written import WrittenMarks

log = structlog.get_logger(__name__)

TEXT_TAG = "mlflow (run info)"  # has characters MLflow forbids in metric keys: cannot collide
HIDDEN_TAGS = frozenset(
    {
        PARENT_TAG,
        RUN_NAME_TAG,
        NOTE_TAG,
        "mlflow.log-model.history",
        "mlflow.loggedArtifacts",  # its tables are shown as tables
        "mlflow.loggedImages",  # its images are shown as images
    }
)
MAX_TEXT_VALUE = 2000


@dataclass
class SeriesStream:
    """The rest of one series, written page by page after its run's first batch (so a series of
    millions of points never has to be held): each page's records go in a batch with `committed()`,
    the cursor that covers them.

    New points after the cursor (`diff_dir` None) advance the cursor page by page. A series diffed
    with what was written in `diff_dir` (a late point was inserted before the cursor) keeps the
    cursor's count and last point until its last page: a diff cut short is diffed again, and what
    it wrote is among the marks then. Until the series is complete the committed cursor has no
    `seen` (what the listing showed of the series), so the next pass fetches the series again
    whatever made this one fetch it (a new point, or a reconcile)."""

    key: str
    cursor: Cursor
    pages: Pages
    seen: MetricPoint | None
    diff_dir: Path | None = None
    marks: WrittenMarks | None = None  # of `diff_dir`, read when its first page is taken
    count: int = 0  # points of the whole series taken (a diff)
    last: MetricPoint | None = None

    def take(self, page: list[MetricPoint]) -> list[bytes]:
        """The records of one page's new points; the cursor follows."""
        if self.diff_dir is None:
            new = page
            if page:
                self.cursor.count, self.cursor.last = self.cursor.count + len(page), page[-1]
        else:
            if self.marks is None:
                # (imported here: it brings numpy, which a pass with no rewritten series and a
                # command that writes nothing do without)
                from tbmirror.engine.mlflow.written import WrittenMarks

                self.marks = WrittenMarks(self.diff_dir, self.key)
                log.info("history_rewritten_upstream", run_dir=str(self.diff_dir), key=self.key,
                         written=len(self.marks))  # fmt: skip
            new = self.marks.unwritten(page)
            self.count, self.last = self.count + len(page), page[-1] if page else self.last
        return scalar_records(self.key, new, self.cursor)

    def committed(self) -> Cursor:
        """The cursor to commit with what `take` gave so far (the series is not complete)."""
        return replace(self.cursor, seen=None)

    def finished(self) -> Cursor:
        """The cursor once every page was taken."""
        done = replace(self.cursor, seen=self.seen)
        if self.diff_dir is not None:
            done.count, done.last = self.count, self.last
        return done


@dataclass
class Encoded:
    """One run's records (payloads, unframed), its updated record and cursors, points among
    them, and the series whose further pages are written after this batch."""

    record: RunRecord
    cursors: dict[str, Cursor]
    payloads: list[bytes]
    points: int
    streams: list[SeriesStream] = field(default_factory=list)


class RunEncoder:
    """Encodes runs of one source; `run_dir_path` maps a run directory to its absolute path (to
    read back what is there when a series was rewritten upstream)."""

    def __init__(
        self,
        link_base: str,
        run_dir_path: Callable[[str], Path],
        trial_name: Callable[[RunSnapshot], str],
    ) -> None:
        """`trial_name` names a run's HParams session (unique among all sessions)."""
        self.link_base = link_base
        self.run_dir_path = run_dir_path
        self.trial_name = trial_name

    def encode(self, plan: Plan, histories: dict[tuple[str, str], History], now: float) -> Encoded:
        """Raises the SourceError of a series the server refused (this run only)."""
        run, record = plan.run, replace(plan.record)
        payloads: list[bytes] = []
        if not record.hparams_written and run.params and (run.latest or run.terminal):
            start = (run.start_time or 0) / 1000
            record.trial = record.trial or self.trial_name(run)
            payloads.append(summaries.session_start(run.params, record.trial, start, now))
            record.hparams_written = True
        markdown = self.describe(run)
        digest = text_digest(markdown)
        if digest != record.text_digest:
            record.text_step += 1
            payloads.append(summaries.text(TEXT_TAG, markdown, now, record.text_step))
            record.text_digest = digest
        cursors: dict[str, Cursor] = {}
        streams: list[SeriesStream] = []
        points = 0
        for request in plan.requests:
            history = histories[(run.run_id, request.key)]
            if history.failure is not None:
                raise history.failure
            seen = run.latest[request.key]
            stream = SeriesStream(request.key, replace(request.cursor), iter(()), seen)
            if history.full is not None:
                stream.pages, stream.diff_dir = history.full(), self.run_dir_path(record.dir)
            else:
                records = stream.take(history.new)
                payloads += records
                points += len(records)
                stream.pages = history.more or iter(())
            if history.full is None and history.more is None:
                cursors[request.key] = stream.finished()
            else:
                cursors[request.key] = stream.committed()  # no `seen` until it is complete
                streams.append(stream)
        if run.terminal and record.hparams_written and not record.end_written:
            end = (run.end_time or run.start_time or 0) / 1000
            payloads.append(summaries.session_end(run.status, end, now))
            record.end_written = True
        # (the values many of 100,000 held records share, one string each, as the store's)
        record.status, record.name = sys.intern(run.status), run.name
        record.parent_run_id = plan.parent_run_id
        record.experiment_id = sys.intern(run.experiment_id)
        if plan.reconcile:
            record.reconciled_at = now
        return Encoded(record, cursors, payloads, points, streams)

    def describe(self, run: RunSnapshot) -> str:
        """The run's metadata as Markdown for the text dashboard."""
        link = f"{self.link_base}/#/experiments/{run.experiment_id}/runs/{run.run_id}"
        lines = [
            f"**{escape_cell(run.name)}** · `{run.run_id}` · [open in MLflow]({link})",
            "",
            f"**Status:** {run.status} · **started:** {_time(run.start_time)}"
            f" · **ended:** {_time(run.end_time)}",
        ]
        if run.parent_run_id:
            lines += ["", f"**Parent run:** `{run.parent_run_id}`"]
        note = run.tags.get(NOTE_TAG)
        if note:
            lines += ["", "### Note", "", note[:MAX_TEXT_VALUE]]
        for title, table in (("Params", run.params), ("Tags", run.tags)):
            rows = {k: v for k, v in sorted(table.items()) if k not in HIDDEN_TAGS}
            if rows:
                lines += ["", f"### {title}", "", "| name | value |", "| --- | --- |"]
                lines += [
                    f"| {escape_cell(k)} | {escape_cell(v[:MAX_TEXT_VALUE])} |"
                    for k, v in rows.items()
                ]
        return "\n".join(lines)


def scalar_records(key: str, points: list[MetricPoint], cursor: Cursor) -> list[bytes]:
    """Scalar records of a series' new points, steps by the step rule (mirror/steps.py) after
    `cursor.tb_step`, which follows."""
    encoder = summaries.ScalarEncoder(key)
    records = []
    for point in points:
        step = next_step(point.step, cursor.tb_step)  # an int64 (responses.py)
        if step > INT64_MAX:  # nothing TensorBoard can hold comes after INT64_MAX
            continue
        cursor.tb_step = step
        records.append(encoder.encode(point.timestamp / 1000, step, point.value))
    return records


def text_digest(text: str) -> int:
    """What tells a run's text changed: the first 64 bits of its SHA-256 (an int: 100,000 run
    records are held in memory)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def append_records(batch: Batch, record: RunRecord, payloads: list[bytes], now: float) -> RunRecord:
    """Add `payloads` to the run's events file in `batch`, creating the file (its first record
    the file version) if the run has none yet. Returns the record, a new one if a file was
    created (to be put in the batch)."""
    if record.events_file is None:
        data = events.frame_all([summaries.file_version(now), *payloads])
        return replace(record, events_file=batch.create(record.dir, data))
    if payloads:
        batch.append(record.events_path or "", events.frame_all(payloads))
    return record


def escape_cell(text: str) -> str:
    """Text that stays inside one cell of a Markdown table."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def _time(millis: int | None) -> str:
    if not millis:
        return "-"
    return datetime.fromtimestamp(millis / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
