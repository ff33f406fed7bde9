"""The sync engine: one incremental pass of one MLflow source into the mirror.

A pass lists the source's runs, works out for each run where it lives in the mirror (moving it on
rename, removing it on deletion) and which metric series changed, fetches only those histories,
and appends the new records. Running runs, and runs due for a reconcile, are also checked for
tfevents artifacts, which are tailed (tailing.py) into folders of the run's directory.

Per chunk of runs: records are appended and fsynced first, then the
cursors and file lengths that cover them are committed in one transaction (see state.py).

One run that fails is logged and counted and the pass goes on; a source that fails (SourceError)
ends the pass, keeping what earlier chunks committed.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone

import structlog

from tbmirror.errors import SourceError, TbmirrorError
from tbmirror.mirror import layout, summaries
from tbmirror.mirror.events import EventsFileLostError
from tbmirror.mirror.steps import next_step
from tbmirror.mirror.writer import MirrorWriter, float32_bits
from tbmirror.model import TERMINAL_STATUSES, Experiment, MetricPoint, RunSnapshot
from tbmirror.report import PassReport, Progress, record_status
from tbmirror.sources.mlflow import (
    PARENT_TAG,
    RUN_NAME_TAG,
    Artifact,
    History,
    HistoryRequest,
    MlflowSource,
)
from tbmirror.state import Cursor, RunRecord, State, TailRecord
from tbmirror.tailing import Tailer

log = structlog.get_logger(__name__)

CHUNK_RUNS = 100
LISTING_MARGIN_SECONDS = 60  # quick listings look this far back for new runs (clock skew)
TEXT_TAG = "mlflow (run info)"  # has characters MLflow forbids in metric keys: cannot collide
NOTE_TAG = "mlflow.note.content"
HIDDEN_TAGS = frozenset({PARENT_TAG, RUN_NAME_TAG, NOTE_TAG, "mlflow.log-model.history"})
MAX_TEXT_VALUE = 2000


@dataclass
class _Plan:
    """One run's work in a chunk: its record (already placed) and the series to fetch."""

    run: RunSnapshot
    record: RunRecord
    parent_run_id: str | None
    cursors: dict[str, Cursor]
    requests: list[HistoryRequest]
    reconcile: bool
    artifacts: bool  # look for new or grown tfevents artifacts


class SourceSync:
    """Mirrors one MLflow source. Not thread-safe: one pass at a time per instance."""

    def __init__(
        self,
        source: MlflowSource,
        state: State,
        writer: MirrorWriter,
        clock: Callable[[], float] = time.time,
        artifact_batch: int | None = None,
    ) -> None:
        """`artifact_batch`: finished runs never looked at whose artifacts a pass lists (None: all
        of them; the daemon passes `artifacts.batch`)."""
        self.source = source
        self.state = state
        self.writer = writer
        self.clock = clock
        self.settings = source.settings
        self.tailer = Tailer(state, writer)
        # The source's mirrored runs, kept in step with the state store between passes.
        self._records: dict[str, RunRecord] = {}
        self._dirs: dict[str, str] = {}
        self._records_stale = True
        self._reconcile_budget = 0
        self.artifact_batch = artifact_batch
        self._artifacts_retry: dict[str, float] = {}  # run id -> backlog retry time after a failure
        self._last_listing: float | None = None

    @property
    def runs_mirrored(self) -> int:
        """Runs of this source in the mirror, as of the last pass."""
        return len(self._records)

    @property
    def name(self) -> str:
        return self.source.name

    def close(self) -> None:
        self.source.close()

    def run_pass(
        self,
        full: bool = True,
        reconcile_all: bool = False,
        progress: Progress | None = None,
        stop: threading.Event | None = None,
    ) -> PassReport:
        """One incremental pass. Never raises for source or run errors: see the report.

        A full pass lists every run (and so sees deletions, renames and finished runs); a quick
        one lists only runs that are running, new, or were running at the last pass (see
        MlflowSource.list_runs). The first pass of an instance is always full. `stop` ends the
        pass early, after the runs already written are committed.
        """
        report = PassReport(self.source.name)
        started, requests_before = time.monotonic(), self.source.requests_made
        try:
            self._pass(report, full or self._last_listing is None, reconcile_all, progress, stop)
        except TbmirrorError as error:
            self._records_stale = True
            report.error = str(error)
            log.error("source_failed", source=self.source.name, error=str(error))
        except Exception as error:  # a bug or unexpected data: fail this pass, not the daemon
            self._records_stale = True
            report.error = f"unexpected {type(error).__name__}: {error}"
            log.exception("source_failed", source=self.source.name, error=report.error)
        report.requests = self.source.requests_made - requests_before
        report.seconds = time.monotonic() - started
        record_status(self.state, report, self.clock())
        return report

    def _pass(
        self,
        report: PassReport,
        full: bool,
        reconcile_all: bool,
        progress: Progress | None,
        stop: threading.Event | None,
    ) -> None:
        if self._records_stale:  # the first pass, or the last one failed half-way
            self._records = self.state.runs(self.source.name)
            self._dirs = {record.dir: run_id for run_id, record in self._records.items()}
            self._records_stale = False
        listing_started = self.clock()
        if full:
            listing = self.source.list_runs(mirrored_ids=self._records)
        else:
            assert self._last_listing is not None
            listing = self.source.list_runs(
                since_ms=int((self._last_listing - LISTING_MARGIN_SECONDS) * 1000),
                watch_ids=[r.run_id for r in self._records.values() if r.status == "RUNNING"],
                mirrored_ids=self._records,
            )
        report.runs_listed = len(listing.runs)
        report.missing_experiments = listing.missing_experiments
        for name in listing.missing_experiments:
            log.warning("experiment_not_found", source=self.source.name, experiment=name)
        experiment_dirs = self._place_experiments(listing.experiments)

        listed = {run.run_id for run in listing.runs if not run.deleted}
        if self.settings.on_delete == "remove":
            deleted = {run.run_id for run in listing.runs if run.deleted}
            searched = set(listing.experiments)  # a run of a missing experiment is not "gone"
            for run_id, record in list(self._records.items()):
                absent = full and run_id not in listed and record.experiment_id in searched
                if run_id in deleted or absent:
                    self._remove(record)
                    report.runs_removed += 1
        live = [run for run in listing.runs if not run.deleted]
        self._reconcile_budget = self.settings.reconcile_batch
        done = 0
        for start in range(0, len(live), CHUNK_RUNS):
            chunk = live[start : start + CHUNK_RUNS]
            plans = []
            for run in chunk:
                plan = self._plan(run, experiment_dirs, report, reconcile_all)
                if plan is not None:
                    plans.append(plan)
            requests = [request for plan in plans for request in plan.requests]
            report.history_series += len(requests)
            histories = self.source.fetch(requests)
            self._write_chunk(plans, histories, report, stop)
            self._sync_artifacts(
                [plan.run.run_id for plan in plans if plan.artifacts], report, stop
            )
            done += len(chunk)
            if progress:
                progress(done, len(live))
            if stop is not None and stop.is_set():
                return
        backlog = self._artifact_backlog()
        for start in range(0, len(backlog), CHUNK_RUNS):
            self._sync_artifacts(backlog[start : start + CHUNK_RUNS], report, stop)
        self._last_listing = listing_started

    # -- placement ----------------------------------------------------------------------------

    def _place_experiments(self, experiments: dict[str, Experiment]) -> dict[str, str]:
        """experiment id -> relative dir, renaming directories of renamed experiments."""
        known = self.state.experiment_dirs(self.source.name)
        taken = {dir for _, dir in known.values()}
        placed: dict[str, str] = {}
        for experiment_id, experiment in sorted(experiments.items()):
            old = known.get(experiment_id)
            if old and old[0] == experiment.name:
                placed[experiment_id] = old[1]
                continue
            wanted = layout.sanitize_component(experiment.name or experiment_id)
            dir = layout.join(self.source.name, wanted)
            if dir in taken:
                dir = layout.join(self.source.name, layout.disambiguate(wanted, experiment_id, 64))
            with self.state.transaction():
                if old:
                    self.writer.move(old[1], dir)
                    self.state.move_tree(old[1], dir)
                    self._rehome(old[1], dir)
                    taken.discard(old[1])
                self.state.put_experiment(self.source.name, experiment_id, experiment.name, dir)
            taken.add(dir)
            placed[experiment_id] = dir
        return placed

    def _run_dir(self, run: RunSnapshot, parent_dir: str, current: str | None) -> str:
        """Where `run` belongs: `parent_dir/<name>`, else `<name>-<run id[:8]>` (whole id) if taken.

        A run keeps its current directory while that is still one of these names.
        """
        component = layout.sanitize_component(run.name)
        candidates = [
            layout.join(*parent_dir.split("/"), name)
            for name in (
                component,
                layout.disambiguate(component, run.run_id),
                layout.disambiguate(component, run.run_id, width=64),
            )
        ]
        if current in candidates:
            return current
        for candidate in candidates:
            if candidate not in self._dirs and not self.writer.occupied(candidate):
                return candidate
        raise TbmirrorError(f"no free directory for run {run.run_id} under {parent_dir}")

    def _rehome(self, old_dir: str, new_dir: str) -> None:
        """Apply a directory move to the in-memory records (the state store was updated too)."""
        prefix = old_dir + "/"
        for record in self._records.values():
            if record.dir == old_dir or record.dir.startswith(prefix):
                del self._dirs[record.dir]
                record.dir = new_dir + record.dir[len(old_dir) :]
                self._dirs[record.dir] = record.run_id

    def _plan(
        self,
        run: RunSnapshot,
        experiment_dirs: dict[str, str],
        report: PassReport,
        reconcile_all: bool,
    ) -> _Plan | None:
        record = self._records.get(run.run_id)
        parent = self._records.get(run.parent_run_id or "")
        if parent is not None and parent.run_id != run.run_id:
            parent_dir = parent.dir
        elif run.experiment_id in experiment_dirs:
            parent_dir = experiment_dirs[run.experiment_id]
        else:
            return None  # a child in another experiment whose parent is gone
        try:
            dir = self._run_dir(run, parent_dir, record.dir if record else None)
            if record is None:
                record = RunRecord(
                    self.source.name, run.run_id, run.experiment_id, None, dir, run.name, ""
                )
                self._records[run.run_id] = record
                self._dirs[dir] = run.run_id
            elif record.dir != dir:
                self._move(record, dir)
                report.runs_moved += 1
        except Exception as error:  # one bad run never stops the others
            self._fail(report, run.run_id, error)
            return None
        cursors = self.state.cursors(self.source.name, run.run_id)
        new_run = not record.status
        reconcile = new_run or reconcile_all or record.status != run.status
        if not reconcile and self._reconcile_budget > 0 and self._reconcile_due(run, record):
            reconcile = True
            self._reconcile_budget -= 1
        requests = [
            HistoryRequest(run.run_id, key, cursors.get(key, Cursor()))
            for key, latest in sorted(run.latest.items())
            if reconcile
            or key not in cursors
            or cursors[key].seen is None
            or cursors[key].seen.identity() != latest.identity()  # type: ignore[union-attr]
        ]
        status_changed = not new_run and record.status != run.status
        artifacts = self._artifacts_due(run, record, reconcile_all or status_changed, reconcile)
        parent_id = parent.run_id if parent else None
        return _Plan(run, record, parent_id, cursors, requests, reconcile, artifacts)

    def _artifacts_due(
        self, run: RunSnapshot, record: RunRecord, always: bool, reconcile: bool
    ) -> bool:
        """Whether to list a run's artifacts with its chunk: a running run's every pass; a run
        that just ended, or everything with `--reconcile` (`always`); a finished run due for a
        reconcile. Finished runs never looked at are the backlog's (`_artifact_backlog`)."""
        if not self.settings.artifacts.enabled:
            return False
        return always or not run.terminal or (reconcile and bool(record.artifacts_at))

    def _reconcile_due(self, run: RunSnapshot, record: RunRecord) -> bool:
        """Whether to re-check every series of a run whose status did not change.

        MLflow's latest-per-key cannot reveal a new point with a lower step (resumed training),
        so running runs are re-checked every `reconcile_interval`; a finished run once more,
        `reconcile_interval` after it ended (late writes, asynchronous ingestion). Beyond that,
        `tbmirror sync --reconcile` re-checks everything.
        """
        interval = self.settings.reconcile_interval
        if self.clock() - record.reconciled_at < interval:
            return False
        if not run.terminal:
            return True
        ended = (run.end_time or run.start_time or 0) / 1000
        return record.reconciled_at < ended + interval

    def _move(self, record: RunRecord, new_dir: str) -> None:
        old_dir = record.dir
        with self.state.transaction():
            self.writer.move(old_dir, new_dir)
            self.state.move_tree(old_dir, new_dir)
            self._rehome(old_dir, new_dir)
        log.info("run_moved", source=self.source.name, run_id=record.run_id, dir=new_dir)

    def _remove(self, record: RunRecord) -> None:
        """Forget a deleted run and remove its own files (nested child runs stay)."""
        self._forget_artifacts(record)
        with self.state.transaction():
            self.state.forget_run(record)
        if record.events_path:
            self.writer.remove_file(record.events_path, keep_above=self.source.name)
        else:
            self.writer.prune(record.dir, keep_above=self.source.name)
        del self._records[record.run_id]
        self._dirs.pop(record.dir, None)
        log.info("run_removed", source=self.source.name, run_id=record.run_id, dir=record.dir)

    # -- tfevents artifacts -------------------------------------------------------------------

    def _artifact_backlog(self) -> list[str]:
        """Finished runs whose artifacts were never looked at: all of them, or in the daemon
        `artifact_batch` per pass (quick passes too), so that a first pass over 10,000 old runs
        mirrors their metrics without waiting for 10,000 listings."""
        if not self.settings.artifacts.enabled:
            return []
        now = self.clock()
        backlog = (
            run_id
            for run_id, record in self._records.items()
            if not record.artifacts_at
            and record.status in TERMINAL_STATUSES
            and self._artifacts_retry.get(run_id, 0) <= now
        )
        return list(itertools.islice(backlog, self.artifact_batch))

    def _sync_artifacts(
        self, run_ids: list[str], report: PassReport, stop: threading.Event | None
    ) -> None:
        """Mirror new and grown tfevents artifacts of these (mirrored) runs."""
        due = [run_id for run_id in run_ids if run_id in self._records]
        if not due or (stop is not None and stop.is_set()):
            return
        listed = self.source.tfevents_artifacts_of(due)
        limit = self.settings.artifacts.max_file_size
        for run_id in due:
            try:
                found = listed[run_id]
                if isinstance(found, str):
                    raise SourceError(found)
                tails = self.state.tails(self.source.name, f"{run_id}/")
                for artifact in found:
                    if artifact.size > limit:
                        log.warning(
                            "artifact_too_large_skipped",
                            source=self.source.name,
                            run_id=run_id,
                            path=artifact.path,
                            size=artifact.size,
                        )
                        continue
                    origin = f"{run_id}/{artifact.path}"
                    tail = tails.get(origin) or TailRecord(
                        self.source.name, origin, "tfevents", self._artifact_dir(run_id, artifact)
                    )
                    reader = self.source.artifact_file(run_id, artifact)
                    outcome = self.tailer.advance(tail, reader, self.clock())
                    report.points += outcome.points
                    report.bytes_written += outcome.bytes_written
                record = self._records[run_id]
                record.artifacts_at = self.clock()
                self.state.put_run(record)
            except Exception as error:  # one bad run never stops the others
                self._fail(report, run_id, error)
                retry = self.clock() + self.settings.reconcile_interval
                self._artifacts_retry[run_id] = retry  # meanwhile the backlog goes on

    def _forget_artifacts(self, record: RunRecord) -> None:
        """Forget a run's tfevents artifacts and remove their copies."""
        for tail in self.state.tails(self.source.name, f"{record.run_id}/").values():
            self.tailer.forget(tail, keep_above=self.source.name)

    def _artifact_dir(self, run_id: str, artifact: Artifact) -> str:
        """Where a tfevents artifact is mirrored: its folder (or `artifacts`) in the run's dir."""
        run_dir = self._records[run_id].dir.split("/")
        folders = [layout.sanitize_component(f) for f in artifact.path.split("/")[:-1]]
        folders = folders or ["artifacts"]
        dir = layout.join(*run_dir, *folders)
        if dir in self._dirs:  # a child run's directory has that name
            dir = layout.join(*run_dir, layout.disambiguate(folders[0], "tfevents"), *folders[1:])
        return dir

    # -- writing ------------------------------------------------------------------------------

    def _write_chunk(
        self,
        plans: list[_Plan],
        histories: dict[tuple[str, str], History],
        report: PassReport,
        stop: threading.Event | None,
    ) -> None:
        now = self.clock()
        commits: list[tuple[RunRecord, dict[str, Cursor], int | None]] = []
        appended_to: list[tuple[str, int]] = []  # (relative file, committed length before)
        for plan in plans:
            if stop is not None and stop.is_set():
                break
            try:
                record, cursors, payloads, points = self._records_for(plan, histories, now)
                length = None
                if payloads or plan.record.events_file is None:
                    committed = self.state.file_length(plan.record.events_path or "") or 0
                    if plan.record.events_file is not None and committed == 0:
                        raise EventsFileLostError(
                            f"{plan.record.events_path} has no committed length"
                        )
                    appended = self.writer.append(
                        record.dir, plan.record.events_file, committed, payloads
                    )
                    record.events_file, length = appended.file_name, appended.length
                    appended_to.append((f"{record.dir}/{appended.file_name}", committed))
                    report.bytes_written += appended.written
                    report.runs_written += 1
                    report.points += points
                if record != plan.record or cursors or length is not None:
                    commits.append((record, cursors, length))
            except Exception as error:  # one bad run never stops the others
                self._fail(report, plan.run.run_id, error)
                if isinstance(error, EventsFileLostError):
                    self._reset(plan.record)
        try:
            with self.state.transaction():
                for record, cursors, length in commits:
                    self.state.put_run(record)
                    self.state.put_cursors(record.source, record.run_id, cursors)
                    if length is not None and record.events_path:
                        self.state.put_file(record.events_path, length)
        except BaseException:
            for path, committed in appended_to:  # nothing uncommitted may stay for TensorBoard
                self.writer.cut_back(path, committed)
            raise
        for record, _, _ in commits:
            self._records[record.run_id] = record

    def _records_for(
        self, plan: _Plan, histories: dict[tuple[str, str], History], now: float
    ) -> tuple[RunRecord, dict[str, Cursor], list[bytes], int]:
        """The records to append for one run, with its updated record and cursors."""
        run, record = plan.run, replace(plan.record)
        payloads: list[bytes] = []
        if not record.hparams_written and run.params and (run.latest or run.terminal):
            start = (run.start_time or 0) / 1000
            payloads.append(summaries.session_start(run.params, run.run_id, start, now))
            record.hparams_written = True
        markdown = self._describe(run)
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
                cursor.tb_step = next_step(point.step, cursor.tb_step)
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
        return record, cursors, payloads, points

    def _unwritten(self, run_dir: str, key: str, full: list[MetricPoint]) -> list[MetricPoint]:
        """Points of `full` not yet in the run's files, matched on (wall time, float32 value)."""
        written = Counter(self.writer.scalars(run_dir, key))
        new = []
        for point in full:
            mark = (point.timestamp / 1000, float32_bits(point.value))
            if written[mark] > 0:
                written[mark] -= 1
            else:
                new.append(point)
        log.info("history_rewritten_upstream", run_dir=run_dir, key=key, new=len(new))
        return new

    def _reset(self, record: RunRecord) -> None:
        """Forget what was written of a run whose file was lost: the next pass writes it anew."""
        log.warning("events_file_lost_run_reset", source=record.source, run_id=record.run_id)
        self._forget_artifacts(record)  # fetched again with the run, into the same place
        with self.state.transaction():
            self.state.forget_run(record)
        if record.events_path:
            self.writer.cut_back(record.events_path, 0)
        del self._records[record.run_id]
        self._dirs.pop(record.dir, None)

    def _describe(self, run: RunSnapshot) -> str:
        """The run's metadata as Markdown for the text dashboard."""
        link = f"{self.settings.run_link_base}/#/experiments/{run.experiment_id}/runs/{run.run_id}"
        lines = [
            f"**{_escape(run.name)}** · `{run.run_id}` · [open in MLflow]({link})",
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
                    f"| {_escape(k)} | {_escape(v[:MAX_TEXT_VALUE])} |" for k, v in rows.items()
                ]
        return "\n".join(lines)

    def _fail(self, report: PassReport, run_id: str, error: Exception) -> None:
        report.failed_runs.append(run_id)
        expected = isinstance(error, (OSError, TbmirrorError))
        (log.error if expected else log.exception)(
            "run_failed", source=self.source.name, run_id=run_id, error=str(error)
        )


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def _time(millis: int | None) -> str:
    if not millis:
        return "-"
    return datetime.fromtimestamp(millis / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
