"""The file layer under the journal: the few system calls the exactly-once protocol is made of.

A `FileLayer` is passed into the journal, so tests can hand in one that fails (ENOSPC at a write,
EIO at an fsync) or "crashes" between two steps. `OsFiles` is the real one. Paths are absolute
(already checked by MirrorLayout); symlinks are never followed into a file we write.
"""

from __future__ import annotations

import ctypes
import os
import stat
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Protocol


class FileLayer(Protocol):
    def write_at(self, path: Path, offset: int, data: bytes, create: bool) -> None:
        """Write `data` at `offset`, then cut the file to end there. `create`: the file may be
        created (and may already exist, from an earlier try of the same write); otherwise it must
        exist. Nothing is made durable here (writing back may start: a hint for the fsync)."""
        ...

    def fsync(self, path: Path) -> None:
        """Make a file's bytes durable."""
        ...

    def fsync_dir(self, path: Path) -> None:
        """Make a directory's entries (created, renamed, removed) durable."""
        ...

    def truncate(self, path: Path, length: int) -> None:
        """Cut a file back to `length` bytes, durably."""
        ...

    def make_dirs(self, path: Path) -> None: ...

    def rename(self, old: Path, new: Path) -> None: ...

    def unlink(self, path: Path) -> None:
        """Remove a file; a missing one is fine."""
        ...

    def size(self, path: Path) -> int | None:
        """A regular file's size; None if it is missing or not a regular file."""
        ...


class OsFiles:
    """The real file layer (POSIX)."""

    def write_at(self, path: Path, offset: int, data: bytes, create: bool) -> None:
        flags = os.O_WRONLY | os.O_NOFOLLOW | (os.O_CREAT if create else 0)
        fd = os.open(path, flags, 0o644)
        try:
            view = memoryview(data)
            position = offset
            while view:
                written = os.pwrite(fd, view, position)
                view, position = view[written:], position + written
            os.ftruncate(fd, offset + len(data))
            if _sync_file_range is not None:  # the batch's fsyncs then find most bytes written
                _sync_file_range(fd, offset, len(data), _SYNC_FILE_RANGE_WRITE)
        finally:
            os.close(fd)

    def fsync(self, path: Path) -> None:
        _fsync(path, os.O_RDONLY | os.O_NOFOLLOW)

    def fsync_dir(self, path: Path) -> None:
        _fsync(path, os.O_RDONLY | os.O_DIRECTORY)

    def truncate(self, path: Path, length: int) -> None:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
        try:
            os.ftruncate(fd, length)
            os.fsync(fd)
        finally:
            os.close(fd)

    def make_dirs(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)

    def rename(self, old: Path, new: Path) -> None:
        os.rename(old, new)

    def unlink(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def size(self, path: Path) -> int | None:
        try:
            found = os.lstat(path)
        except OSError:
            return None
        return found.st_size if stat.S_ISREG(found.st_mode) else None


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_SYNC_FILE_RANGE_WRITE = 2  # start writing dirty pages back, wait for nothing


def _writeback_starter() -> Callable[[int, int, int, int], int] | None:
    """Linux's sync_file_range(2) (a hint; its errors show at the fsync), None elsewhere."""
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    function.restype = ctypes.c_int
    return function


_sync_file_range = _writeback_starter()


class ParallelSyncs:
    """Runs a batch's fsyncs several at a time. Why at once: on a journaling file system an
    fsync waits for a commit and a disk cache flush, which fsyncs in flight together share; one
    after another, a batch of small files pays one each. Thread-safe; `close` when done."""

    THREADS = 8  # fsyncs in flight at once

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None  # made on first use

    def each(
        self, sync: Callable[[Path], None], paths: list[Path]
    ) -> list[tuple[Path, Future[None]]]:
        """`sync` every path and wait for all; each path with its outcome (`result()` raises
        its error), in order. Each thread takes the next path when it is done with one: one
        hand-off per thread, not per path (a batch of small files has hundreds)."""
        if len(paths) < 2:
            return [(path, _done(sync, path)) for path in paths]
        with self._guard:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.THREADS, thread_name_prefix="fsync")
            pool = self._pool
        outcomes: list[Future[None] | None] = [None] * len(paths)
        unclaimed = iter(range(len(paths)))
        claiming = threading.Lock()

        def work() -> None:
            while True:
                with claiming:
                    index = next(unclaimed, None)
                if index is None:
                    return
                outcomes[index] = _done(sync, paths[index])

        workers = [pool.submit(work) for _ in range(min(self.THREADS, len(paths)))]
        wait(workers)
        for worker in workers:
            worker.result()  # (`_done` keeps every error: nothing to raise here but a bug)
        finished = [outcome for outcome in outcomes if outcome is not None]
        assert len(finished) == len(paths), "every path is claimed once"
        return list(zip(paths, finished, strict=True))

    def close(self) -> None:
        with self._guard:
            if self._pool is not None:
                self._pool.shutdown()


def _done(sync: Callable[[Path], None], path: Path) -> Future[None]:
    """`sync(path)` called here and now, its outcome as a finished future."""
    outcome: Future[None] = Future()
    try:
        sync(path)
    except BaseException as error:  # kept for result() to raise, as the pool's threads do
        outcome.set_exception(error)
    else:
        outcome.set_result(None)
    return outcome
