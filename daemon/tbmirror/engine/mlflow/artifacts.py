"""Artifacts: what MLflow runs keep among their artifacts, mirrored into their run directories.

A run's artifacts are listed (down to `artifacts.max_depth`; `images/` only for runs whose tags say
they logged image series) when planning says so, or from the backlog of finished runs never looked
at. Files matching `artifacts.pattern` are tfevents files, tailed (engine/tailing.py) with ranged
reads through the source's artifact store (MLflow, Azure ML or Databricks: sources/stores.py) into
`<run dir>/<artifact folder>/`; images, figures and tables go to the run's own
events file (media.py).
"""

from __future__ import annotations

import fnmatch
import threading
from collections.abc import Callable, Iterable

import structlog

from tbmirror.engine.base import PassReport, RunFailed
from tbmirror.engine.mlflow.media import LoggedMedia, MediaSync
from tbmirror.engine.mlflow.placement import Placement
from tbmirror.engine.mlflow.source import RunSource
from tbmirror.engine.tailing import Tailer
from tbmirror.errors import SourceError, WriteFault
from tbmirror.journal import Journal
from tbmirror.model import RunRecord, RunSnapshot, TailRecord
from tbmirror.sources.stores import Artifact, RunRef

log = structlog.get_logger(__name__)
SERVED_SCHEME = "mlflow-artifacts:"  # an artifact root in an MLflow server's own store
USUAL_ROOT = "mlflow-artifacts:/{}/{}/artifacts"  # a run's there (experiment id, run id)


class ArtifactSync:
    """Mirrors the artifacts of one source's runs. Not thread-safe."""

    def __init__(
        self,
        source: RunSource,
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
        self.media = MediaSync(source, journal, placement, clock)
        self._run_failed = run_failed
        self.retry_at: dict[str, float] = {}  # run id -> when a failed backlog listing is retried
        self._logged: dict[str, LoggedMedia] = {}  # what listings said of runs' media
        # run id -> its artifact URI as listed, if in an MLflow server's own store ("": the usual
        # one, USUAL_ROOT): the store lists those without the server reading the run
        self._roots: dict[str, str] = {}

    def note(self, runs: Iterable[RunSnapshot]) -> None:
        """Take what a listing says about runs' media (their tags): runs not listed in this pass
        (the backlog of a quick pass) are synced with what the last listing said."""
        artifacts_on = self.source.settings.artifacts.enabled  # (else no root is kept)
        for run in runs:
            logged = LoggedMedia.of(run)
            if logged is None:
                self._logged.pop(run.run_id, None)
            else:
                self._logged[run.run_id] = logged
            uri = run.artifact_uri or ""
            if not (artifacts_on and uri.startswith(SERVED_SCHEME)):
                self._roots.pop(run.run_id, None)
            else:
                usual = uri == USUAL_ROOT.format(run.experiment_id, run.run_id)
                self._roots[run.run_id] = "" if usual else uri

    def sync(self, run_ids: list[str], report: PassReport, stop: threading.Event | None) -> None:
        """Mirror new and grown artifacts of these (placed) runs; WriteFault ends it."""
        records = self.placement.records
        due = [run_id for run_id in run_ids if run_id in records]
        if not due or (stop is not None and stop.is_set()):
            return
        images = self.media.enabled and self.source.settings.artifacts.images
        runs = {self._ref(records[run_id]): run_id for run_id in due}
        listed = self.source.artifacts_of(
            {run: images and self._images_logged(run_id) for run, run_id in runs.items()}
        )
        looked: list[RunRecord] = []  # committed together: one transaction, not one a run
        for run_id in due:
            try:
                found = listed[run_id]
                if isinstance(found, SourceError):
                    raise found
                self._tail(records[run_id], found, report, stop)
                complete = True
                if self.media.enabled:
                    written, size, complete = self.media.sync(
                        records[run_id], self._logged.get(run_id), found, stop
                    )
                    report.images += written["image"] + written["figure"]
                    report.tables += written["table"]
                    report.bytes_written += size
                if stop is not None and stop.is_set():
                    break  # looked at again next pass
                record = records[run_id]
                record.artifacts_at = self.clock() if complete else 0.0  # 0: the backlog's again
                looked.append(record)
            except WriteFault:
                raise  # the mirror's disk, not this run: the pass ends
            except Exception as error:  # one bad run never stops the others
                self._run_failed(report, run_id, error)
                self.retry_at[run_id] = self.clock() + self.source.settings.reconcile_interval
        if looked:
            with self.journal.batch(self.source.name) as batch:
                for record in looked:
                    batch.put_run(record)

    def _ref(self, record: RunRecord) -> RunRef:
        """The run as its store finds it, with its artifact URI if a listing gave one."""
        root = self._roots.get(record.run_id)
        if root == "":
            root = USUAL_ROOT.format(record.experiment_id, record.run_id)
        return RunRef(record.run_id, record.experiment_id, root)

    def _images_logged(self, run_id: str) -> bool:
        logged = self._logged.get(run_id)
        return logged is not None and logged.images

    def _tail(
        self,
        record: RunRecord,
        artifacts: list[Artifact],
        report: PassReport,
        stop: threading.Event | None,
    ) -> None:
        """Tail the run's artifacts that match `artifacts.pattern` (tfevents files)."""
        settings = self.source.settings.artifacts
        run = RunRef(record.run_id, record.experiment_id)
        tails = self.journal.tails(self.source.name, f"{run.run_id}/")
        for artifact in artifacts:
            if not fnmatch.fnmatchcase(artifact.path.rsplit("/", 1)[-1], settings.pattern):
                continue
            reader = self.source.artifact_file(run, artifact)
            if reader.size > settings.max_file_size:
                log.warning(
                    "artifact_too_large_skipped",
                    source=self.source.name,
                    run_id=run.run_id,
                    path=artifact.path,
                    size=reader.size,
                )
                continue
            origin = f"{run.run_id}/{artifact.path}"
            mirror_dir = self.placement.artifact_dir(run.run_id, artifact)
            tail = tails.get(origin) or TailRecord(self.source.name, origin, "tfevents", mirror_dir)
            outcome = self.tailer.advance(tail, reader, self.clock(), stop)
            if outcome.tail.stopped_at is not None:  # at a corrupt record: health shows the run
                report.failed_runs.append(run.run_id)
            report.points += outcome.points
            report.bytes_written += outcome.bytes_written
