"""Encoding: one run's new history and metadata as TensorBoard records, with the cursors and run
record that cover them.

Per run: an HParams session start once it has params (and metrics or an end; named by the run's
name, made unique: TensorBoard merges sessions of one name), a text record of its
metadata (name, status, times, link, note, params, tags) whenever that changes, the new points of
each fetched series as scalars (steps by mirror/steps.py), and the session end once it ends.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import structlog

from tbmirror.engine.mlflow.planning import Plan
from tbmirror.errors import SourceError
from tbmirror.journal import Batch
from tbmirror.mirror import events, summaries
from tbmirror.mirror.steps import INT64_MAX, next_step
from tbmirror.model import Cursor, MetricPoint, RunRecord, RunSnapshot
from tbmirror.sources.mlflow import NOTE_TAG, PARENT_TAG, RUN_NAME_TAG, History

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
class Encoded:
    """One run's records (payloads, unframed), its updated record and cursors, points among
    them."""

    record: RunRecord
    cursors: dict[str, Cursor]
    payloads: list[bytes]
    points: int


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
        """Raises SourceError if a fetched series failed (this run only)."""
        run, record = plan.run, replace(plan.record)
        payloads: list[bytes] = []
        if not record.hparams_written and run.params and (run.latest or run.terminal):
            start = (run.start_time or 0) / 1000
            record.trial = record.trial or self.trial_name(run)
            payloads.append(summaries.session_start(run.params, record.trial, start, now))
            record.hparams_written = True
        markdown = self.describe(run)
        digest = hashlib.sha256(markdown.encode()).hexdigest()
        if digest != record.text_digest:
            record.text_step += 1
            payloads.append(summaries.text(TEXT_TAG, markdown, now, record.text_step))
            record.text_digest = digest
        cursors: dict[str, Cursor] = {}
        points = 0
        for request in plan.requests:
            history = histories[(run.run_id, request.key)]
            if history.error:
                raise SourceError(history.error)
            cursor = replace(request.cursor)
            new = history.new
            if history.full is not None:
                new = self._unwritten(record.dir, request.key, history.full)
                cursor.count = len(history.full)
                cursor.last = history.full[-1] if history.full else None
            elif new:
                cursor.count, cursor.last = cursor.count + len(new), new[-1]
            encoder = summaries.ScalarEncoder(request.key)
            for point in new:
                step = next_step(point.step, cursor.tb_step)  # an int64 (responses.py)
                if step > INT64_MAX:  # nothing TensorBoard can hold comes after INT64_MAX
                    continue
                cursor.tb_step = step
                payloads.append(encoder.encode(point.timestamp / 1000, cursor.tb_step, point.value))
            points += len(new)
            cursor.seen = run.latest[request.key]
            cursors[request.key] = cursor
        if run.terminal and record.hparams_written and not record.end_written:
            end = (run.end_time or run.start_time or 0) / 1000
            payloads.append(summaries.session_end(run.status, end, now))
            record.end_written = True
        record.status, record.name = run.status, run.name
        record.parent_run_id, record.experiment_id = plan.parent_run_id, run.experiment_id
        if plan.reconcile:
            record.reconciled_at = now
        return Encoded(record, cursors, payloads, points)

    def _unwritten(self, run_dir: str, key: str, full: list[MetricPoint]) -> list[MetricPoint]:
        """Points of `full` not yet in the run's files, matched on (wall time, float32 value)."""
        written = Counter(summaries.scalars_in(self.run_dir_path(run_dir), key))
        new = []
        for point in full:
            mark = (point.timestamp / 1000, summaries.float32_bits(point.value))
            if written[mark] > 0:
                written[mark] -= 1
            else:
                new.append(point)
        log.info("history_rewritten_upstream", run_dir=run_dir, key=key, new=len(new))
        return new

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
