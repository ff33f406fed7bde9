"""Process locks: on the state store, and on each `<root>/<source>` subtree a process owns.

Several daemons may share one mirror root (sharding by source), each with its own state store; a
process writes, recovers and removes only inside the subtrees it holds. A lock is an flock on a
file that also names its holder (pid and host name), so a second process, on this host or on
another that mounts the same file system, is refused with a message naming it. The OS releases
the locks when the process dies. Across hosts this holds only where the file system carries flock
to its server (NFSv4, CephFS, SMB 3 with Linux's cifs client): docs/operations/scale-out.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from pathlib import Path

from tbmirror.errors import MirrorError

LOCKS_DIR = ".tbmirror-locks"  # in the root, beside the subtrees (which hold mirror data only)
HOLDER_BYTES = 512  # the most of a holder line read back (a host name is at most 253)


def holder_line() -> str:
    """Who holds a lock: this process's pid and host name (a pod's name, in Kubernetes)."""
    return f"pid {os.getpid()} on {socket.gethostname()}"


class PidLock:
    """An exclusive flock on `path` held until `release` (or the process ends)."""

    def __init__(self, path: Path, what: str) -> None:
        """Take the lock; MirrorError naming `what` and the holder (pid and host) if another
        has it."""
        self.path = path
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as error:
            raise MirrorError(f"cannot lock {what} ({path}): {error.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _written_holder(fd) or "unknown holder"
            os.close(fd)
            raise MirrorError(
                f"{what} is in use by another tbmirror process ({holder}); "
                "each source of a mirror root can be mirrored by one process only"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{holder_line()}\n".encode(), 0)
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None


class SubtreeLocks:
    """The `<root>/<source>` subtrees this process owns, each locked by
    `<root>/.tbmirror-locks/<source>.lock` (TensorBoard reads only files named *tfevents*)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._held: dict[str, PidLock] = {}

    def acquire(self, source: str) -> None:
        """Own `source`'s subtree; MirrorError if another process does."""
        if source in self._held:
            return
        directory = self.root / LOCKS_DIR
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise MirrorError(f"cannot create {directory}: {error.strerror}") from None
        what = f"the mirror of source {source}"
        self._held[source] = PidLock(directory / f"{source}.lock", what)

    def release(self, source: str) -> None:
        lock = self._held.pop(source, None)
        if lock is not None:
            lock.release()

    def release_all(self) -> None:
        for source in list(self._held):
            self.release(source)

    def held(self, source: str) -> bool:
        return source in self._held


def holder(path: Path) -> str | None:
    """Who holds the lock file at `path` now, as written ("pid 123 on host"; "pid 123" from
    older versions; "unknown holder" if nothing readable was written), or None if no process
    holds it (asked with a shared lock taken and given back at once; a missing file is never
    created)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        written = _written_holder(fd)
        return f"pid {written}" if written.isdigit() else written or "unknown holder"
    finally:
        os.close(fd)  # gives back the shared lock, if taken
    return None


def _written_holder(fd: int) -> str:
    """The holder line in a lock file (`holder_line`, or a bare pid from older versions), its
    unprintable characters dropped."""
    written = os.pread(fd, HOLDER_BYTES, 0).decode(errors="replace")
    return "".join(c for c in written.strip() if c.isprintable())
