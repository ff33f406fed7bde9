"""The sync engine of an upload directory: its files -> copies and conversions in the mirror.

A file at `<path>/<dir>/<name>` is mirrored under `<root>/<source>/<dir>/`: a tfevents file as a
verbatim copy (same name), a CSV or JSON-lines log as an events file of its own in a run directory
named after it (`<dir>/<name>/`, so its tags never mix with a job's own tfevents). Tailing and the
exactly-once protocol are tailing.py's. A file deleted from the upload directory stays mirrored.

`run_pass` rescans the whole tree (the safety net, on the scheduler's clock); `sync_paths` brings
just the files a watcher saw change up to date. One file that fails is reported and the others go
on. Not thread-safe: the scheduler runs one pass or batch at a time per source.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

import structlog

from tbmirror.config import UploadsSourceSettings
from tbmirror.errors import SourceError, TbmirrorError
from tbmirror.mirror import layout
from tbmirror.mirror.writer import MirrorWriter
from tbmirror.report import PassReport, record_status
from tbmirror.sources.uploads import LocalFile, UploadFile, UploadTree
from tbmirror.state import State, TailRecord
from tbmirror.tailing import Tailer

log = structlog.get_logger(__name__)

Progress = Callable[[int, int], None]


class UploadSync:
    def __init__(
        self,
        settings: UploadsSourceSettings,
        state: State,
        writer: MirrorWriter,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.name = settings.name
        self.tree = UploadTree(settings)
        self.state = state
        self.tailer = Tailer(state, writer, settings.step_columns)
        self.clock = clock
        self._tails: dict[str, TailRecord] | None = None
        self._warned: set[tuple[str, str]] = set()  # (file, problem) already logged

    @property
    def runs_mirrored(self) -> int:
        """Files of this source with a copy in the mirror."""
        return sum(1 for tail in (self._tails or {}).values() if tail.mirror_file)

    def close(self) -> None:
        """Nothing to release (the watcher belongs to the scheduler)."""

    def run_pass(
        self,
        full: bool = True,
        reconcile_all: bool = False,
        progress: Progress | None = None,
        stop: threading.Event | None = None,
    ) -> PassReport:
        """Rescan the whole upload directory. Never raises: see the report."""
        return self._run(lambda problem: self.tree.scan(problem=problem), progress, stop)

    def sync_paths(self, paths: Iterable[str], stop: threading.Event | None = None) -> PassReport:
        """Bring the files (or directories, scanned) at these relative paths up to date."""

        def files(problem: Callable[[str, str], None]) -> Iterable[UploadFile]:
            for relative in sorted(set(paths)):
                found = self.tree.file(relative)
                if found is not None:
                    yield found
                elif self.tree.resolve(relative) is not None:
                    yield from self.tree.scan(relative, problem)

        return self._run(files, None, stop)

    def _run(
        self,
        files: Callable[[Callable[[str, str], None]], Iterable[UploadFile]],
        progress: Progress | None,
        stop: threading.Event | None,
    ) -> PassReport:
        report = PassReport(self.name, unit="files")
        started = time.monotonic()
        try:
            if not self.tree.settings.path.is_dir():
                raise SourceError(
                    f"source {self.name}: upload directory {self.settings.path} does not exist"
                )
            if self._tails is None:
                self._tails = self.state.tails(self.name)

            def problem(relative: str, message: str) -> None:
                self._warn(relative, message)

            found = list(files(problem))
            report.runs_listed = len(found)
            for done, upload in enumerate(found, 1):
                if stop is not None and stop.is_set():
                    break
                self._sync_file(upload, report)
                if progress:
                    progress(done, len(found))
        except TbmirrorError as error:
            report.error = str(error)
            log.error("source_failed", source=self.name, error=report.error)
        except Exception as error:  # a bug or unexpected data: fail this pass, not the daemon
            self._tails = None
            report.error = f"unexpected {type(error).__name__}: {error}"
            log.exception("source_failed", source=self.name, error=report.error)
        report.seconds = time.monotonic() - started
        record_status(self.state, report, self.clock())
        return report

    def _sync_file(self, upload: UploadFile, report: PassReport) -> None:
        assert self._tails is not None
        tail = self._tails.get(upload.relative)
        try:
            with LocalFile(upload.real) as reader:
                if reader.size > self.settings.max_file_size:
                    self._warn(
                        upload.relative,
                        f"larger than max_file_size ({reader.size:,} > "
                        f"{self.settings.max_file_size:,} bytes): skipped",
                    )
                    return
                if tail is None:
                    tail = TailRecord(
                        self.name, upload.relative, upload.kind, _mirror_dir(self.name, upload)
                    )
                outcome = self.tailer.advance(tail, reader, self.clock())
        except (OSError, TbmirrorError) as error:
            report.failed_runs.append(upload.relative)
            message = getattr(error, "strerror", None) or str(error)
            log.error("upload_failed", source=self.name, file=upload.relative, error=message)
            stored = self.state.tails(self.name, upload.relative).get(upload.relative)
            self._tails.pop(upload.relative, None)
            if stored is not None:  # what was committed before the failure
                self._tails[upload.relative] = stored
            return
        self._tails[upload.relative] = outcome.tail
        if outcome.written:
            report.runs_written += 1
            report.points += outcome.points
            report.bytes_written += outcome.bytes_written
            log.debug("upload_synced", source=self.name, file=upload.relative,
                      points=outcome.points, bytes=outcome.bytes_written)  # fmt: skip

    def _warn(self, relative: str, problem: str) -> None:
        """Log a problem with one file once (per process), not on every rescan."""
        if (relative, problem) not in self._warned:
            self._warned.add((relative, problem))
            log.warning("upload_skipped", source=self.name, file=relative, problem=problem)


def _mirror_dir(source: str, upload: UploadFile) -> str:
    """The run directory of an upload: its own directory, or for a converted log one after it."""
    parts = upload.relative.split("/")
    if upload.kind == "tfevents":
        parts = parts[:-1]
    return layout.join(source, *(layout.sanitize_component(part) for part in parts))
