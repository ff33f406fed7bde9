"""A file layer (and store commit) that fails on demand, for in-process tests of the journal.

`FailingFiles` wraps `OsFiles`: a `Rule` makes the n-th matching call raise an OSError (ENOSPC at a
write, EIO or EDQUOT at an fsync, ...), optionally after writing only part of the data (a full
disk), or "crash" before or after the call with `Crash`, a BaseException the journal must not
swallow. `attach(store)` adds the step "commit" (one store transaction) to the same rules: an
error there is SQLITE_FULL at the end of the transaction (rolled back), a crash "before" dies
inside it (rolled back), "after" once it is committed. Every step taken is logged in `steps`.

`Rig` is a journal on temp files over such a layer, which can "restart" after a crash; `scratch`
gives it a directory where fsync is cheap; `scalar_records` and `steps_in` make and read records.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tensorboard.compat.proto.event_pb2 import Event

from tbmirror.journal.files import FileLayer, OsFiles
from tbmirror.journal.journal import Journal
from tbmirror.journal.store import Store
from tbmirror.mirror import events, summaries
from tbmirror.mirror.layout import MirrorLayout

Op = Literal[
    "write_at", "fsync", "fsync_dir", "truncate", "make_dirs", "rename", "unlink", "commit"
]


class Crash(BaseException):
    """The process died here (a BaseException, so no `except Exception` can swallow it)."""


@dataclass
class Rule:
    """Fail the `nth` matching call (counted from when the rule was set) and the `times - 1`
    after it (`times=None`: until cleared)."""

    op: Op
    error: int | None = errno.ENOSPC  # errno of the OSError raised (None with `crash`)
    nth: int = 1
    times: int | None = 1
    partial: int | None = None  # write_at: bytes written before the error
    crash: Literal["before", "after"] | None = None
    where: str | None = None  # only paths containing this
    seen: int = 0
    fired: int = 0

    def matches(self, op: Op, path: Path | None) -> bool:
        if op != self.op or (self.where is not None and self.where not in str(path)):
            return False
        self.seen += 1
        if self.seen < self.nth or (self.times is not None and self.fired >= self.times):
            return False
        self.fired += 1
        return True


def full_error() -> sqlite3.OperationalError:
    """What SQLite raises when its disk is full."""
    error = sqlite3.OperationalError("database or disk is full")
    error.sqlite_errorcode, error.sqlite_errorname = 13, "SQLITE_FULL"
    return error


class FailingFiles:
    """`OsFiles` (or `inner`) with failures and crashes injected by `Rule`s."""

    def __init__(self, inner: FileLayer | None = None) -> None:
        self.inner: FileLayer = inner or OsFiles()
        self.rules: list[Rule] = []
        self.steps: list[tuple[Op, str]] = []

    # -- configuring --------------------------------------------------------------------------

    def fail(
        self,
        op: Op,
        error: int = errno.ENOSPC,
        *,
        nth: int = 1,
        times: int | None = None,
        partial: int | None = None,
        where: str | None = None,
    ) -> Rule:
        """Make `op` raise OSError(`error`) from its `nth` call on (`times` calls; None: all)."""
        rule = Rule(op, error, nth, times, partial, None, where)
        self.rules.append(rule)
        return rule

    def crash(
        self, op: Op, when: Literal["before", "after"], *, nth: int = 1, where: str | None = None
    ) -> Rule:
        """Die (raise Crash) before or after the `nth` call of `op`."""
        rule = Rule(op, None, nth, 1, None, when, where)
        self.rules.append(rule)
        return rule

    def heal(self) -> None:
        """The disk works again."""
        self.rules.clear()

    def attach(self, store: Store) -> None:
        """Route `store`'s transactions through the rules as the step "commit"."""
        transaction = store.transaction

        @contextmanager
        def checked() -> Iterator[None]:
            rule = self._rule("commit", store.path)
            with transaction():
                yield
                if rule is not None and rule.crash == "before":
                    raise Crash("commit")
                if rule is not None and rule.crash is None:
                    raise full_error()
            if rule is not None and rule.crash == "after":
                raise Crash("commit")

        store.transaction = checked  # type: ignore[method-assign]

    # -- the FileLayer ------------------------------------------------------------------------

    def write_at(self, path: Path, offset: int, data: bytes, create: bool) -> None:
        rule = self._rule("write_at", path)
        if rule is not None and rule.crash is None and rule.partial is not None:
            _write_part(path, offset, data[: rule.partial], create)
        self._run(rule, "write_at", path, lambda: self.inner.write_at(path, offset, data, create))

    def fsync(self, path: Path) -> None:
        self._run(self._rule("fsync", path), "fsync", path, lambda: self.inner.fsync(path))

    def fsync_dir(self, path: Path) -> None:
        rule = self._rule("fsync_dir", path)
        self._run(rule, "fsync_dir", path, lambda: self.inner.fsync_dir(path))

    def truncate(self, path: Path, length: int) -> None:
        rule = self._rule("truncate", path)
        self._run(rule, "truncate", path, lambda: self.inner.truncate(path, length))

    def make_dirs(self, path: Path) -> None:
        rule = self._rule("make_dirs", path)
        self._run(rule, "make_dirs", path, lambda: self.inner.make_dirs(path))

    def rename(self, old: Path, new: Path) -> None:
        self._run(self._rule("rename", old), "rename", old, lambda: self.inner.rename(old, new))

    def unlink(self, path: Path) -> None:
        self._run(self._rule("unlink", path), "unlink", path, lambda: self.inner.unlink(path))

    def size(self, path: Path) -> int | None:
        return self.inner.size(path)

    # -- inside -------------------------------------------------------------------------------

    def _rule(self, op: Op, path: Path) -> Rule | None:
        self.steps.append((op, os.fspath(path)))
        return next((rule for rule in self.rules if rule.matches(op, path)), None)

    def _run(self, rule: Rule | None, op: Op, path: Path, call: Callable[[], None]) -> None:
        if rule is None:
            call()
        elif rule.crash == "before":
            raise Crash(f"before {op} {path}")
        elif rule.crash == "after":
            call()
            raise Crash(f"after {op} {path}")
        else:
            assert rule.error is not None
            raise OSError(rule.error, os.strerror(rule.error), os.fspath(path))


def _write_part(path: Path, offset: int, data: bytes, create: bool) -> None:
    """What a write that runs out of space leaves: the first bytes written, nothing cut."""
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | (os.O_CREAT if create else 0), 0o644)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


# -- a journal on temp files with this layer under it -------------------------------------------


class Clock:
    """A clock that moves only when told."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Rig:
    """A journal over `root` and the store at `state`, on a FailingFiles layer."""

    root: Path
    state: Path
    files: FailingFiles
    journal: Journal
    clock: Clock

    @classmethod
    def open(cls, directory: Path) -> Rig:
        root, state, clock = directory / "root", directory / "state.db", Clock()
        files, store = FailingFiles(), Store(state)
        files.attach(store)
        return cls(root, state, files, Journal(store, MirrorLayout(root), files, clock), clock)

    def restart(self) -> Rig:
        """The process died: the OS closes its store connection and lock; a new process opens
        the same root and state (recovery is the caller's to run)."""
        self.journal.store.close()
        return Rig.open(self.root.parent)

    def read(self, relative: str) -> bytes:
        return (self.root / relative).read_bytes()

    def events_files(self, relative_dir: str) -> list[str]:
        """Names of the events files in a mirror directory, sorted."""
        directory = self.root / relative_dir
        if not directory.is_dir():
            return []
        return sorted(name for name in os.listdir(directory) if "tfevents" in name)

    def check_store_matches_disk(self, owner: str) -> None:
        """Every committed file is on disk at exactly its length; every events file on disk
        under `owner` is committed; every run's and tail's file is committed."""
        committed = {p: n for p, n in self.journal.store.files().items() if p.startswith(owner)}
        for relative, length in committed.items():
            assert (self.root / relative).stat().st_size == length, relative
        on_disk = {
            os.path.relpath(os.path.join(directory, name), self.root)
            for directory, _, names in os.walk(self.root / owner)
            for name in names
            if "tfevents" in name
        }
        assert on_disk == set(committed)
        for run in self.journal.runs(owner).values():
            assert run.events_path is None or run.events_path in committed, run
        for tail in self.journal.tails(owner).values():
            assert tail.mirror_path is None or tail.mirror_path in committed, tail


RAM_DISK = Path("/dev/shm")


@contextmanager
def scratch(tmp_path: Path) -> Iterator[Path]:
    """A fresh directory named after `tmp_path` on a RAM disk (removed afterwards) if there is
    one, else `tmp_path`. The journal fsyncs at every step and SQLite (synchronous=FULL) at every
    commit: on a real disk these tests would take ten times as long, and vary with its load;
    what they check does not depend on the file system."""
    if not (RAM_DISK.is_dir() and os.access(RAM_DISK, os.W_OK)):
        yield tmp_path
        return
    directory = Path(tempfile.mkdtemp(prefix=f"{tmp_path.name}-", dir=RAM_DISK))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# -- records ---------------------------------------------------------------------------------------


def scalar_records(steps: Iterable[int], wall_time: float, tag: str = "loss") -> bytes:
    """Scalar records of `tag` at `steps` (value step / 7), stamped `wall_time`."""
    encoder = summaries.ScalarEncoder(tag)
    return events.frame_all(encoder.encode(wall_time, step, step / 7) for step in steps)


def file_start(wall_time: float) -> bytes:
    """The first record of an events file."""
    return events.frame(summaries.file_version(wall_time))


def steps_in(data: bytes) -> list[int]:
    """The steps of the summary records in events file bytes, in file order."""
    found = [Event.FromString(record.payload) for record in events.iter_records(data)]
    return [event.step for event in found if event.HasField("summary")]
