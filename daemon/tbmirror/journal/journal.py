"""The journal: the one owner of the exactly-once protocol (after Vector's file checkpointer).

Every change to the mirror is a `Batch`, owned by one source (its `<root>/<source>` subtree):
1. The batch collects appends (whole framed records, per file) and store changes (runs, cursors,
   tails, experiments, files to discard). Nothing reaches the disk while it is built; an error
   raised while building it discards it whole.
2. At its end the journal writes each file's new bytes at the file's committed length, fsyncs every
   file it touched once (and the directories of the files it created; several fsyncs in flight at
   once, all done before the next step), then commits the store changes and the files' new
   lengths in one SQLite transaction. Only then are discarded files removed.
3. If a write, an fsync or the commit fails (ENOSPC, EIO, EDQUOT reported at fsync, SQLITE_FULL),
   the batch is *not* undone. It stays pending for its owner, exact bytes and all, and every later
   batch of that owner first settles it: the same bytes are written again at the same offsets,
   fsynced, and committed. Why: TensorBoard may already have read complete records past the
   committed length, and its fast loader marks a file dead (until restarted) on a record that
   changed under it; our records carry the current time (text, HParams) and later points shift,
   so writing anything but the same bytes there would freeze that run in TensorBoard. Writing the
   same bytes again is harmless, and a torn last record is completed (TensorBoard waits on a torn
   record and reads it again from its start). Until the batch settles, its owner's passes fail
   with `WriteFault` (logged once per cause, counted, shown by /healthz), so nothing new is
   planned on a state that lags the disk. A write fault never restarts TensorBoard.
4. At start-up, before TensorBoard, recovery (recovery.py) cuts every file back to its committed
   length, finishes directory moves in flight, resets runs whose files were lost and removes
   events files no row knows: a batch pending when the process ended is fetched again.

Directory moves (renamed runs and experiments) are recorded as intended, then renamed, then the
tables follow; a failure or a crash in between is rolled forward by the next settle or by recovery.

Thread-safety: batches of different owners may run at once; one owner's batches are serial (the
scheduler runs one pass per source at a time).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import structlog

from tbmirror.errors import MirrorError, UnsafePathError, WriteFault
from tbmirror.journal.faults import Fault, FaultListener, FaultLog
from tbmirror.journal.files import FileLayer, OsFiles, ParallelSyncs
from tbmirror.journal.locks import SubtreeLocks
from tbmirror.journal.passes import PassLog
from tbmirror.journal.store import Store
from tbmirror.mirror import events
from tbmirror.mirror.events import EventsFileLostError
from tbmirror.mirror.layout import CheckedPaths, MirrorLayout, join, owner_of
from tbmirror.model import Cursor, MediaRecord, RunRecord, TailRecord

log = structlog.get_logger(__name__)

StoreChange = Callable[[Store], None]


@dataclass
class _FileWrite:
    """New bytes for one file: `chunks`, in order, go at `committed` (a new file: 0, `created`)."""

    committed: int
    created: bool
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0  # bytes in `chunks`

    def add(self, data: bytes) -> None:
        self.chunks.append(bytes(data))  # (of bytes, no copy; of a buffer, one it cannot change)
        self.size += len(data)

    def data(self) -> bytes:
        """The new bytes, whole (a lone chunk is not copied)."""
        return self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)


class _Listing:
    """The names in one directory on disk, as listed."""

    def __init__(self, directory: Path, names: set[str]) -> None:
        self.directory, self.names = directory, names
        self._folded: set[str] | None = None

    def holds(self, name: str) -> bool:
        """Whether `name` is taken: listed as it is, or listed in another case or Unicode form,
        which a case-insensitive file system takes for the same name (it is then asked)."""
        if name in self.names:
            return True
        if self._folded is None:
            self._folded = {_folded(listed) for listed in self.names}
        return _folded(name) in self._folded and os.path.lexists(self.directory / name)


def _folded(name: str) -> str:
    return unicodedata.normalize("NFC", name).casefold()


class Batch:
    """One unit of the protocol: appends plus the store changes that cover them (see module)."""

    def __init__(self, journal: Journal, owner: str) -> None:
        self._journal = journal
        self.owner = owner
        self._files: dict[str, _FileWrite] = {}
        self._changes: list[StoreChange] = []
        self._discarded: list[tuple[str, str]] = []  # (file, keep_above) removed after commit
        self._pruned: list[tuple[str, str]] = []  # (directory, keep_above) pruned after commit
        self.bytes_written = 0  # new bytes the batch holds, all files together
        self._paths = CheckedPaths(journal.layout)  # (the batch's directories change at its end)
        self._creatable: set[str] = set()  # relative dirs where nothing is in the way
        self._listed: dict[str, _Listing] = {}  # relative dir -> its names on disk (_listing)

    # -- bytes ------------------------------------------------------------------------------

    def append(self, relative_path: str, data: bytes) -> int:
        """Append whole records to a committed file; returns its length after the batch.

        Raises EventsFileLostError if the file has no committed length or is now shorter than it
        (lost or damaged outside tbmirror: its run or tail must be reset).
        """
        write = self._files.get(relative_path)
        if write is None:
            committed = self._journal.store.file_length(relative_path)
            if not committed:
                raise EventsFileLostError(f"{relative_path} has no committed length")
            size = self._journal.files.size(self._paths.file(relative_path))
            if size is None or size < committed:
                raise EventsFileLostError(f"{relative_path} is gone or shorter than committed")
            write = self._files[relative_path] = _FileWrite(committed, created=False)
        write.add(data)
        self.bytes_written += len(data)
        return write.committed + write.size

    def create(self, relative_dir: str, data: bytes, name: str | None = None) -> str:
        """A new file in `relative_dir` holding `data`; returns its name.

        With no `name`, a fresh events file name is chosen whose order is creation order among
        the directory's files. A name in use (on disk or in this batch) is refused.
        """
        directory = self._paths.directory(relative_dir)
        if relative_dir not in self._creatable:
            blocker = _non_directory_in(directory, self._journal.layout.root)
            if blocker is not None:  # refused now, for this run only, not when it is written
                raise MirrorError(f"{os.path.relpath(blocker, self._journal.layout.root)} is in "
                                  f"the way of {relative_dir}: not a directory")  # fmt: skip
            self._creatable.add(relative_dir)
        on_disk = self._listing(relative_dir)
        if name is None:
            newest = max((events.file_secs(n) for n in on_disk.names if "tfevents" in n), default=0)
            name = events.new_file_name(not_before_secs=newest + 1 if newest else 0)
        relative = f"{relative_dir}/{join(name)}"
        if relative in self._files or on_disk.holds(name):
            raise MirrorError(f"{relative} exists already")
        write = self._files[relative] = _FileWrite(0, created=True)
        write.add(data)
        self.bytes_written += len(data)
        return name

    def occupied(self, relative_path: str) -> bool:
        """True if this batch writes a file there, or something non-empty is there on disk."""
        if relative_path in self._files:
            return True
        relative_dir, _, name = relative_path.rpartition("/")
        if relative_dir and not self._listing(relative_dir).holds(name):
            return False
        return _occupied(self._paths.file(relative_path))

    def _listing(self, relative_dir: str) -> _Listing:
        """A directory's names on disk (none if it is missing), listed once per batch: no one but
        the batch's end writes in its owner's subtree (locks.py), and that is later. A listing
        that fails otherwise (no file descriptor left, I/O error, ...) raises: it must never pass
        for an empty directory, whose names a new file could then take."""
        listing = self._listed.get(relative_dir)
        if listing is None:
            directory = self._paths.directory(relative_dir)
            try:
                names = set(os.listdir(directory))
            except (FileNotFoundError, NotADirectoryError):  # (create refuses a non-directory)
                names = set()
            listing = self._listed[relative_dir] = _Listing(directory, names)
        return listing

    # -- store changes ------------------------------------------------------------------------

    def put_run(self, run: RunRecord) -> None:
        run = replace(run)
        self._changes.append(lambda store: store.put_run(run))

    def put_cursors(self, source: str, run_id: str, cursors: dict[str, Cursor]) -> None:
        copied = {key: replace(cursor) for key, cursor in cursors.items()}
        self._changes.append(lambda store: store.put_cursors(source, run_id, copied))

    def put_media(self, records: list[MediaRecord]) -> None:
        copied = list(records)  # frozen records
        self._changes.append(lambda store: store.put_media(copied))

    def put_tail(self, tail: TailRecord) -> None:
        tail = replace(tail)
        self._changes.append(lambda store: store.put_tail(tail))

    def put_experiment(self, source: str, experiment_id: str, name: str, dir: str) -> None:
        self._changes.append(lambda store: store.put_experiment(source, experiment_id, name, dir))

    def forget_experiment(self, source: str, experiment_id: str) -> None:
        self._changes.append(lambda store: store.forget_experiment(source, experiment_id))

    def forget_source_status(self, source: str) -> None:
        self._changes.append(lambda store: store.forget_source_status(source))

    def forget_run(self, run: RunRecord) -> None:
        """Drop a run, its cursors and media rows; its events file (or, without one, its
        directory if empty) goes after the commit. Nested child runs stay."""
        run = replace(run)
        self._changes.append(lambda store: store.forget_run(run))
        if run.events_path:
            self._discard(run.events_path, self.owner)
        else:
            self._pruned.append((run.dir, self.owner))

    def forget_tail(self, tail: TailRecord, keep_above: str | None = None) -> None:
        """Drop a tailed file; its copy goes after the commit, with the directories that leaves
        empty below `keep_above` (default: the owner's directory)."""
        tail = replace(tail)
        self._changes.append(lambda store: store.forget_tail(tail))
        if tail.mirror_path:
            self._discard(tail.mirror_path, keep_above or self.owner)

    def discard_file(self, relative_path: str, keep_above: str) -> None:
        """Forget a file's committed length; it is removed after the commit."""
        self._changes.append(lambda store: store.forget_file(relative_path))
        self._discard(relative_path, keep_above)

    def _discard(self, relative_path: str, keep_above: str) -> None:
        """Remove a file after the commit; what this batch had for it is not written."""
        dropped = self._files.pop(relative_path, None)
        self.bytes_written -= dropped.size if dropped else 0
        self._discarded.append((relative_path, keep_above))

    def reset_run(self, run: RunRecord) -> RunRecord:
        """Forget what was written of a run whose file was lost or damaged: its cursors, media,
        events file, written metadata and tfevents artifacts. The run keeps its directory; the
        next pass writes it again from the source. Returns the reset record."""
        for tail in self._journal.store.tails(run.source, f"{run.run_id}/").values():
            self.forget_tail(tail)
        reset = replace(
            run, events_file=None, text_digest=None, text_step=-1, hparams_written=False,
            end_written=False, status="", reconciled_at=0.0, artifacts_at=0.0, listed=0,
        )  # fmt: skip
        original = replace(run)
        self._changes.append(lambda store: store.forget_cursors(original))
        if run.events_path:
            self.discard_file(run.events_path, keep_above=run.dir)
        self.put_run(reset)
        return reset

    def restart_tail(self, tail: TailRecord) -> TailRecord:
        """Mirror a tailed file again from the start (its copy was lost or damaged)."""
        restarted = tail.restarted()
        if tail.mirror_path:
            self.discard_file(tail.mirror_path, keep_above=tail.mirror_dir)
        self.put_tail(restarted)
        return restarted


class BatchStream:
    """One owner's changes gathered into few batches: each `batch()` block adds to the open
    batch, which the protocol ends (module docstring) once it holds `flush_bytes` new bytes or
    `flush_blocks` blocks, and at `flush()`. A pass over many small files so costs one commit
    for many files and one fsync per file, not a commit and an fsync for each file on its own.

    A block that raises must leave the batch as it was: Batch's methods that can fail (append,
    create) check before they change anything, so call them first. The store and the disk lag
    the open batch: `flush()` before reading state that a block changed.
    """

    def __init__(self, journal: Journal, owner: str, flush_bytes: int, flush_blocks: int) -> None:
        self._journal = journal
        self.owner = owner
        self._flush_bytes = flush_bytes
        self._flush_blocks = flush_blocks
        self._open: Batch | None = None
        self._blocks = 0  # in the open batch

    @contextmanager
    def batch(self) -> Iterator[Batch]:
        """The open batch (a new one if none is), ended after the block if it holds enough.

        Raises WriteFault as `Journal.batch` does.
        """
        if self._open is None:
            self._open, self._blocks = self._journal._begin(self.owner), 0
        yield self._open
        self._blocks += 1
        if self._open.bytes_written >= self._flush_bytes or self._blocks >= self._flush_blocks:
            self.flush()

    def flush(self) -> None:
        """End the open batch, if any: written, fsynced, committed (or WriteFault)."""
        batch, self._open = self._open, None
        if batch is not None:
            self._journal._finish(batch)


class Journal:
    """The store, the mirror root and the file layer, used only through batches (see module)."""

    def __init__(
        self,
        store: Store,
        layout: MirrorLayout,
        files: FileLayer | None = None,
        clock: Callable[[], float] = time.time,
        locks: SubtreeLocks | None = None,
    ) -> None:
        """`locks`: when given, batches, moves and recovery are refused for a source whose
        subtree this process does not own (`own`)."""
        self.store = store
        self.locks = locks
        self.layout = layout
        self.files: FileLayer = files or OsFiles()
        self.clock = clock
        self._guard = threading.Lock()
        self._pending: dict[str, Batch] = {}
        self._faults = FaultLog(clock)
        self._syncs = ParallelSyncs()  # a batch's fsyncs in flight together
        self.passes = PassLog(store)  # how each source's passes went

    @classmethod
    def open(cls, layout: MirrorLayout, state_path: Path) -> Journal:
        """The journal of a mirror root with its store at `state_path` (locked for this process;
        MirrorError if another holds it). Run recovery (recovery.py) before anything reads."""
        return cls(Store(state_path), layout, locks=SubtreeLocks(layout.root))

    def close(self) -> None:
        self._syncs.close()
        if self.locks is not None:
            self.locks.release_all()
        self.store.close()

    def own(self, source: str) -> None:
        """Lock `source`'s subtree for this process (MirrorError naming the holder if another
        process has it)."""
        if self.locks is not None:
            self.locks.acquire(source)

    def disown(self, source: str) -> None:
        """Let go of a source no longer configured (its files stay)."""
        if self.locks is not None:
            self.locks.release(source)

    def _check_owned(self, owner: str) -> None:
        if self.locks is not None and not self.locks.held(owner):
            raise MirrorError(f"source {owner}: its mirror is not owned by this process")

    # -- batches ------------------------------------------------------------------------------

    @contextmanager
    def batch(self, owner: str) -> Iterator[Batch]:
        """A batch of `owner`'s, ended by the protocol when the block ends (module docstring).

        Raises WriteFault when writing fails, and at once while the owner has a batch pending:
        `settle` first, then read the state the batch builds on.
        """
        batch = self._begin(owner)
        yield batch
        self._finish(batch)

    def stream(self, owner: str, flush_bytes: int, flush_blocks: int) -> BatchStream:
        """Batches of `owner`'s shared by many small changes (see BatchStream)."""
        return BatchStream(self, owner, flush_bytes, flush_blocks)

    def _begin(self, owner: str) -> Batch:
        self._check_owned(owner)
        with self._guard:
            pending = owner in self._pending
        if pending:
            fault = self._faults.of(owner)
            raise fault.error(owner) if fault else WriteFault(owner, "pending", "-", "settle first")
        return Batch(self, owner)

    def settle(self, owner: str) -> bool:
        """Complete `owner`'s pending batch and directory moves, if any; True if there were any
        (state read before may be stale). WriteFault if they still cannot be written."""
        with self._guard:
            pending = self._pending.get(owner)
        if pending is not None:
            self._finish(pending)  # heals the fault once written
        moved = self._finish_moves(owner)
        if moved:
            self._faults.healed(owner)
        return pending is not None or moved

    def _finish(self, batch: Batch) -> None:
        paths = CheckedPaths(self.layout)  # each directory checked once, just before the writes
        where = self.store.path.name
        try:
            lost = {
                relative
                for relative, write in batch._files.items()
                if not write.created
                and (self.files.size(paths.file(relative)) or 0) < write.committed
            }  # removed or cut outside tbmirror (while the batch was pending): reset, not written
            written: list[Path] = []
            new_dirs: set[Path] = set()
            made: set[Path] = set()  # directories of new files, made (once each)
            for relative, write in batch._files.items():
                if relative in lost:
                    continue
                where, path = relative, paths.file(relative)
                if write.created and path.parent not in made:
                    new_dirs.update(_entries_to_sync(path.parent, self.layout.root))
                    self.files.make_dirs(path.parent)
                    made.add(path.parent)
                self.files.write_at(path, write.committed, write.data(), write.created)
                written.append(path)
            if written:
                protocol_step("batch_written")
            for path, synced in self._syncs.each(self.files.fsync, written):
                where = os.path.relpath(path, self.layout.root)
                synced.result()
            for directory, synced in self._syncs.each(self.files.fsync_dir, sorted(new_dirs)):
                where = os.path.relpath(directory, self.layout.root)
                synced.result()
            if written:
                protocol_step("batch_synced")
            where = self.store.path.name
            with self.store.transaction():
                for change in batch._changes:
                    change(self.store)
                for relative, write in batch._files.items():
                    if relative not in lost:
                        self.store.put_file(relative, write.committed + write.size)
            if written:
                protocol_step("batch_committed")
        except Exception as error:  # bytes may be out: whatever failed, never write others there
            with self._guard:
                self._pending[batch.owner] = batch
            raise self._faults.failed(batch.owner, where, error) from None
        with self._guard:
            if self._pending.get(batch.owner) is batch:
                del self._pending[batch.owner]
        for relative, keep_above in batch._discarded:
            self._remove_file(relative, keep_above)
        for relative, keep_above in batch._pruned:
            self._prune(relative, keep_above)
        self._faults.healed(batch.owner)
        if lost:
            self.reset_broken(batch.owner, lost)

    def reset_broken(self, owner: str, broken: set[str]) -> int:
        """Reset `owner`'s runs, and restart its tailed files, whose files (relative paths in
        `broken`) were lost or damaged outside tbmirror; returns how many."""
        runs = [run for run in self.store.runs(owner).values() if run.events_path in broken]
        tails = [tail for tail in self.store.tails(owner).values() if tail.mirror_path in broken]
        if not runs and not tails:
            return 0
        with self.batch(owner) as batch:
            for run in runs:
                log.warning("events_file_damaged_run_reset", path=run.events_path)
                batch.reset_run(run)
            for tail in tails:
                log.warning("mirror_copy_damaged_file_restarted", path=tail.mirror_path)
                batch.restart_tail(tail)
        return len(runs) + len(tails)

    # -- moves --------------------------------------------------------------------------------

    def move(self, owner: str, old_dir: str, new_dir: str) -> None:
        """Move a run or experiment directory, with everything nested in it, on disk and in the
        store; rolled forward by the next settle or by recovery if interrupted."""
        self._check_owned(owner)
        self.settle(owner)
        for relative in (old_dir, new_dir):  # a path out of reach (UnsafePathError): no move
            self.layout.resolve(relative)
        try:
            with self.store.transaction():
                self.store.put_move(old_dir, new_dir)
        except sqlite3.Error as error:
            raise self._faults.failed(owner, self.store.path.name, error) from None
        protocol_step("move_recorded")
        self._finish_moves(owner, only=old_dir)
        self._faults.healed(owner)

    def _finish_moves(self, owner: str, only: str | None = None) -> bool:
        """Complete recorded moves below `owner` (or just the one from `only`); True if any."""
        done = False
        for old_dir, new_dir in self.store.moves():
            if only is not None and old_dir != only:
                continue
            if only is None and owner_of(old_dir) != owner:
                continue
            where = old_dir
            try:
                old, new = self.layout.resolve(old_dir), self.layout.resolve(new_dir)
            except UnsafePathError as error:  # its archive is no longer configured: dropped
                log.error("move_dropped", old_dir=old_dir, new_dir=new_dir, error=str(error))
                with self.store.transaction():
                    self.store.forget_move(old_dir)
                continue
            try:
                if os.path.lexists(old) and _occupied(new):  # not ours to replace: no move
                    with self.store.transaction():
                        self.store.forget_move(old_dir)
                    raise MirrorError(f"cannot move {old_dir} to {new_dir}: that is not empty")
                if os.path.lexists(old):  # (an empty directory at `new` is replaced)
                    self.files.make_dirs(new.parent)
                    self.files.rename(old, new)
                    self.files.fsync_dir(new.parent)
                    if old.parent != new.parent:
                        self.files.fsync_dir(old.parent)
                protocol_step("move_renamed")
                where = self.store.path.name
                with self.store.transaction():
                    self.store.move_tree(old_dir, new_dir)
                    self.store.forget_move(old_dir)
                protocol_step("move_applied")
            except (OSError, sqlite3.Error) as error:
                raise self._faults.failed(owner, where, error) from None
            done = True
        return done

    # -- faults -------------------------------------------------------------------------------

    def add_fault_listener(self, listener: FaultListener) -> None:
        self._faults.add_listener(listener)

    def faults(self) -> dict[str, Fault]:
        """Owners whose writes fail now, with the first cause."""
        return self._faults.current()

    # -- removal ------------------------------------------------------------------------------

    def _remove_file(self, relative: str, keep_above: str) -> None:
        """Remove a discarded file and the directories that leaves empty; failures only logged
        (recovery removes an events file no row knows)."""
        try:
            self.files.unlink(self.layout.resolve(relative))
        except OSError as error:
            log.warning("file_not_removed", path=relative, error=error.strerror)
            return
        except UnsafePathError as error:  # in an archive no longer configured
            log.warning("file_not_removed", path=relative, error=str(error))
            return
        self._prune(relative.rpartition("/")[0], keep_above)

    def _prune(self, relative_dir: str, keep_above: str) -> None:
        """Remove `relative_dir` and its ancestors while they are empty, up to `keep_above`."""
        stop = self.layout.resolve(keep_above)
        directory = self.layout.resolve(relative_dir)
        while directory != stop and stop in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent

    # -- reading (what engines may know of the store) ------------------------------------------

    def runs(self, source: str) -> dict[str, RunRecord]:
        return self.store.runs(source)

    def cursors(self, source: str, run_id: str) -> dict[str, Cursor]:
        return self.store.cursors(source, run_id)

    def trial_taken(self, name: str) -> bool:
        return self.store.trial_taken(name)

    def media(self, source: str, run_id: str) -> dict[str, MediaRecord]:
        return self.store.media(source, run_id)

    def tails(self, source: str, origin_prefix: str = "") -> dict[str, TailRecord]:
        return self.store.tails(source, origin_prefix)

    def experiment_dirs(self, source: str) -> dict[str, tuple[str, str]]:
        return self.store.experiment_dirs(source)

    def run_dir_taken(self, dir: str) -> bool:
        return self.store.run_dir_taken(dir)

    def sources(self) -> set[str]:
        return self.store.sources()

    def holdings(self) -> tuple[int, list[tuple[int, int]]]:
        """What the mirror holds, as TensorBoard's memory estimate counts it (Store.holdings)."""
        return self.store.holdings()

    def occupied(self, relative: str) -> bool:
        """True if something non-empty (a file, or a directory with entries) is at that path."""
        return _occupied(self.layout.resolve(relative))


def protocol_step(name: str) -> None:
    """A step of the protocol. A test hook: with TBMIRROR_TEST_STOP_AT=<name> in its environment
    the process stops itself here (SIGSTOP), the first time it gets there, for the test to kill
    it at exactly this step. Steps: move_recorded, move_renamed, move_applied; and, in a batch
    that appends bytes, batch_written (appended, not yet fsynced), batch_synced (fsynced, not
    committed), batch_committed (committed)."""
    if os.environ.get("TBMIRROR_TEST_STOP_AT") == name:
        os.kill(os.getpid(), signal.SIGSTOP)


def _occupied(path: Path) -> bool:
    """True if something non-empty (a file, or a directory with entries) is at `path`."""
    if path.is_dir() and not path.is_symlink():
        return any(path.iterdir())
    return os.path.lexists(path)


def _entries_to_sync(directory: Path, root: Path) -> list[Path]:
    """The directories whose entries a new file in `directory` needs made durable: `directory`,
    and each one that gains a new subdirectory when the missing levels are made."""
    chain = [directory]
    while not os.path.isdir(chain[-1]) and chain[-1] != root:
        chain.append(chain[-1].parent)
    return chain


def _non_directory_in(directory: Path, root: Path) -> Path | None:
    """The nearest existing path at or above `directory` (below `root`) if it is not a directory
    (then nothing can be created there), else None."""
    path = directory
    while path != root and not os.path.lexists(path):
        path = path.parent
    return None if path == root or (os.path.isdir(path) and not os.path.islink(path)) else path
