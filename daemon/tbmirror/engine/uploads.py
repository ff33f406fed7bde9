"""The sync engine of an upload directory: its files -> copies and conversions in the mirror.

A file at `<path>/<dir>/<name>` is mirrored under `<root>/<source>/<dir>/`: a tfevents file as a
verbatim copy (same name), a CSV or JSON-lines log as an events file of its own in a run directory
named after it (`<dir>/<name>/`, so its tags never mix with a job's own tfevents). Two source
directories (or logs) whose sanitised names meet get distinct run directories (`-<hash8>`).
Tailing is tailing.py's, the exactly-once protocol the journal's. A file deleted from the upload
directory stays mirrored.

`run_pass` rescans the whole tree (the safety net, on the scheduler's clock) and records the
source's status; `sync_paths` brings just the files a watcher saw change up to date. The files of
one pass or batch share journal batches (a BatchStream: BATCH_BYTES or BATCH_FILES, and the end).
One file that fails is reported and the others go on. Not thread-safe: the scheduler runs one
pass or batch at a time per source (`runs_mirrored` may be read from any thread).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterable

import structlog

from tbmirror.config import UploadsSourceSettings
from tbmirror.engine.base import PassReport, Progress, WatchSpec
from tbmirror.engine.tailing import CHUNK_BYTES, Tailer
from tbmirror.errors import SourceError, TbmirrorError, UnexpectedError
from tbmirror.journal import BatchStream, Journal, WriteFault
from tbmirror.mirror import layout
from tbmirror.model import TailRecord
from tbmirror.sources.uploads import LocalFile, Problem, UploadFile, UploadTree

log = structlog.get_logger(__name__)

BATCH_BYTES = CHUNK_BYTES  # a journal batch gathers a pass's files up to this many new bytes
BATCH_FILES = 1000  # or this many files' steps (TensorBoard sees them at its end)


class UploadEngine:
    """The Engine (engine/base.py) of one uploads source."""

    def __init__(
        self,
        settings: UploadsSourceSettings,
        journal: Journal,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.name = settings.name
        self.tree = UploadTree(settings)
        self.journal = journal
        self.tailer = Tailer(journal, settings.step_columns)
        self.clock = clock
        self._tails: dict[str, TailRecord] | None = None  # by origin
        self._dir_owners: dict[str, str] = {}  # mirror dir -> the source dir or log it holds
        # Problems already logged, by file: as many entries as files with a problem in the tree
        # (a full rescan forgets the files it no longer finds).
        self._warned: dict[str, set[str]] = {}
        self.runs_mirrored = 0  # files of this source with a copy in the mirror
        self.progress_at: float | None = None  # wall time the last file was looked at

    def close(self) -> None:
        """Nothing to release (the watcher belongs to the scheduler)."""

    def watch_spec(self) -> WatchSpec:
        settings = self.settings
        return WatchSpec(
            settings.name, settings.path, settings.observer, settings.polling_interval,
            settings.debounce, self.tree.relative, self.sync_paths,
        )  # fmt: skip

    def run_pass(
        self,
        full: bool = True,
        reconcile_all: bool = False,
        progress: Progress | None = None,
        stop: threading.Event | None = None,
    ) -> PassReport:
        """Rescan the whole upload directory (every pass is full: `full` and `reconcile_all`
        change nothing). Never raises: see the report, which is also the source's status."""
        seen: set[str] = set()

        def scan(problem: Problem) -> Iterable[UploadFile]:
            def noted(relative: str, message: str) -> None:
                seen.add(relative)
                problem(relative, message)

            for upload in self.tree.scan(problem=noted):
                seen.add(upload.relative)
                yield upload

        report = self._run(scan, progress, stop)
        if report.failure is None and (stop is None or not stop.is_set()):
            self._warned = {f: causes for f, causes in self._warned.items() if f in seen}
        error = None if report.failure is None else str(report.failure)
        self.journal.passes.record(
            self.name, error, self.clock(), len(set(report.failed_runs)), report.runs_tried
        )
        return report

    def sync_paths(self, paths: Iterable[str], stop: threading.Event | None = None) -> PassReport:
        """Bring the files (or directories, scanned) at these relative paths up to date."""

        def files(problem: Problem) -> Iterable[UploadFile]:
            for relative in sorted(set(paths)):
                found = self.tree.file(relative)
                if found is not None:
                    yield found
                elif self.tree.resolve(relative) is not None:
                    yield from self.tree.scan(relative, problem)

        return self._run(files, None, stop)

    def _run(
        self,
        files: Callable[[Problem], Iterable[UploadFile]],
        progress: Progress | None,
        stop: threading.Event | None,
    ) -> PassReport:
        report = PassReport(self.name, unit="files")
        started = time.monotonic()
        try:
            real_root = self._check_tree()
            self.journal.settle(self.name)
            if self._tails is None:
                self._load()
            found = list(files(self._warn))
            report.runs_listed = report.runs_tried = len(found)
            stream = self.journal.stream(self.name, BATCH_BYTES, BATCH_FILES)
            for done, upload in enumerate(found, 1):
                if stop is not None and stop.is_set():
                    break
                self._sync_file(upload, real_root, report, stream, stop)
                self.progress_at = time.time()
                if progress:
                    progress(done, len(found))
            stream.flush()
        except TbmirrorError as error:
            if isinstance(error, WriteFault):  # what was cached may lag the store: read it again
                self._tails = None
            report.failure = error
            log.error("source_failed", source=self.name, error=str(error))
        except Exception as error:  # a bug or unexpected data: fail this pass, not the daemon
            self._tails = None
            report.failure = UnexpectedError(error)
            log.exception("source_failed", source=self.name, error=str(report.failure))
        report.seconds = time.monotonic() - started
        return report

    def _check_tree(self) -> str:
        """The tree's real path, found once a pass: the anchor each opened file is checked
        against (the files' real paths were found below it)."""
        if not self.settings.path.is_dir():
            raise SourceError(
                f"source {self.name}: upload directory {self.settings.path} does not exist"
            )
        real_root, mirror = self.tree.real_root, os.path.realpath(self.journal.layout.root)
        if os.path.commonpath([real_root, mirror]) in (real_root, mirror):
            raise SourceError(
                f"source {self.name}: upload directory {real_root} and the mirror root {mirror} "
                "contain each other"
            )
        return real_root

    def _load(self) -> None:
        self._tails = self.journal.tails(self.name)
        self._dir_owners = {t.mirror_dir: _owner(t.origin, t.kind) for t in self._tails.values()}
        self.runs_mirrored = sum(1 for tail in self._tails.values() if tail.mirror_file)

    def _sync_file(
        self,
        upload: UploadFile,
        real_root: str,
        report: PassReport,
        stream: BatchStream,
        stop: threading.Event | None,
    ) -> None:
        assert self._tails is not None
        origin = _origin(upload.relative)
        tail = self._tails.get(origin)
        try:
            with (
                LocalFile(upload.real, real_root) as reader,
                structlog.contextvars.bound_contextvars(source=self.name, file=upload.relative),
            ):
                if reader.size > self.settings.max_file_size:
                    self._warn(
                        upload.relative,
                        f"larger than max_file_size ({reader.size:,} > "
                        f"{self.settings.max_file_size:,} bytes): skipped",
                        cause="too_large",
                    )
                    return
                self._warned.get(upload.relative, set()).discard("too_large")
                if tail is None:
                    tail = TailRecord(self.name, origin, upload.kind, self._mirror_dir(upload))
                outcome = self.tailer.advance(tail, reader, self.clock(), stop, stream)
        except WriteFault:
            raise  # the mirror's disk, not this file: the pass ends
        except Exception as error:  # one bad file never stops the others
            report.failed_runs.append(upload.relative)
            expected = isinstance(error, (OSError, TbmirrorError))
            message = (getattr(error, "strerror", None) if expected else None) or str(error)
            (log.error if expected else log.exception)(
                "upload_failed", source=self.name, file=upload.relative, error=message
            )
            stream.flush()  # what this file added before it failed, so that the store says it
            stored = self.journal.tails(self.name, origin).get(origin)
            self._tails.pop(origin, None)
            if stored is not None:  # what was committed before the failure
                self._tails[origin] = stored
            return
        stored_before = self._tails.get(origin)
        self.runs_mirrored += bool(outcome.tail.mirror_file) - bool(
            stored_before and stored_before.mirror_file
        )
        self._tails[origin] = outcome.tail
        if outcome.tail.stopped_at is not None:  # at a corrupt record: health shows the file
            report.failed_runs.append(upload.relative)
        if outcome.written:
            report.runs_written += 1
            report.points += outcome.points
            report.bytes_written += outcome.bytes_written

    def _mirror_dir(self, upload: UploadFile) -> str:
        """The run directory of a new upload: its own directory (tfevents) or one named after it
        (a converted log), made distinct from a directory that holds another source dir or log."""
        parts = upload.relative.split("/")
        if upload.kind == "tfevents":
            parts = parts[:-1]
        components = [layout.sanitize_component(part) for part in parts]
        owner = _owner(_origin(upload.relative), upload.kind)
        dir = layout.join(self.name, *components)
        if components and self._dir_owners.get(dir, owner) != owner:
            unique = layout.disambiguate(components[-1], hashlib.sha1(owner.encode()).hexdigest())
            dir = layout.join(self.name, *components[:-1], unique)
        self._dir_owners[dir] = owner
        return dir

    def _warn(self, relative: str, problem: str, cause: str | None = None) -> None:
        """Log a problem with one file once per cause (the problem itself by default), not on
        every rescan nor on every append (a file that grows past max_file_size is one cause)."""
        causes = self._warned.setdefault(relative, set())
        if (cause or problem) not in causes:
            causes.add(cause or problem)
            log.warning("upload_skipped", source=self.name, file=relative, problem=problem)


def _origin(relative: str) -> str:
    """A file's key in the state store: its relative path, with bytes that are not UTF-8 (kept by
    os as surrogates, which SQLite cannot store) written as `\\xNN`."""
    return relative.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _owner(origin: str, kind: str) -> str:
    """What a mirror directory holds: a source directory's tfevents files, or one converted log."""
    return origin.rpartition("/")[0] + "/" if kind == "tfevents" else origin
