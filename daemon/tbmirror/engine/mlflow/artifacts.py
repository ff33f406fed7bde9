"""Artifacts: the tfevents files among MLflow runs' artifacts, tailed into their run directories.

A run's artifacts are listed (down to `artifacts.max_depth`) when planning says so, or from the
backlog of finished runs never looked at; files matching `artifacts.pattern` are tailed
(engine/tailing.py) with HTTP Range reads into `<run dir>/<artifact folder>/`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import structlog

from tbmirror.engine.base import PassReport
from tbmirror.engine.mlflow.placement import Placement
from tbmirror.engine.tailing import Tailer
from tbmirror.errors import SourceError
from tbmirror.journal import Journal, WriteFault
from tbmirror.model import TailRecord
from tbmirror.sources.mlflow import MlflowSource

log = structlog.get_logger(__name__)

RunFailed = Callable[[PassReport, str, Exception], None]


class ArtifactSync:
    """Tails the tfevents artifacts of one source's runs. Not thread-safe."""

    def __init__(
        self,
        source: MlflowSource,
        journal: Journal,
        placement: Placement,
        clock: Callable[[], float],
        run_failed: RunFailed,
    ) -> None:
        self.source = source
        self.journal = journal
        self.placement = placement
        self.clock = clock
        self.tailer = Tailer(journal)
        self._run_failed = run_failed
        self.retry_at: dict[str, float] = {}  # run id -> when a failed backlog listing is retried

    def sync(self, run_ids: list[str], report: PassReport, stop: threading.Event | None) -> None:
        """Mirror new and grown tfevents artifacts of these (placed) runs; WriteFault ends it."""
        records = self.placement.records
        due = [run_id for run_id in run_ids if run_id in records]
        if not due or (stop is not None and stop.is_set()):
            return
        listed = self.source.tfevents_artifacts_of(due)
        limit = self.source.settings.artifacts.max_file_size
        for run_id in due:
            try:
                found = listed[run_id]
                if isinstance(found, str):
                    raise SourceError(found)
                tails = self.journal.tails(self.source.name, f"{run_id}/")
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
                        self.source.name,
                        origin,
                        "tfevents",
                        self.placement.artifact_dir(run_id, artifact),
                    )
                    reader = self.source.artifact_file(run_id, artifact)
                    outcome = self.tailer.advance(tail, reader, self.clock(), stop)
                    report.points += outcome.points
                    report.bytes_written += outcome.bytes_written
                record = records[run_id]
                record.artifacts_at = self.clock()
                with self.journal.batch(self.source.name) as batch:
                    batch.put_run(record)
            except WriteFault:
                raise  # the mirror's disk, not this run: the pass ends
            except Exception as error:  # one bad run never stops the others
                self._run_failed(report, run_id, error)
                self.retry_at[run_id] = self.clock() + self.source.settings.reconcile_interval
