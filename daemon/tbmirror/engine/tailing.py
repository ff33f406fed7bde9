"""Tailing: mirroring a growing file from a source, exactly once, however it changes.

Shared by upload directories and the tfevents artifacts of MLflow runs. A `TailRecord` (model.py)
says how many bytes of one source file are mirrored. `Tailer.advance` brings one file up to date:

1. A file shorter than what we mirrored, or whose mirrored bytes changed (the fingerprints of the
   first and the last FINGERPRINT_BYTES before the offset; "replaced" when its inode changed too)
   is mirrored again from the start, into a new mirror file: TensorBoard, which remembers how far
   it read each file, is never shown bytes that changed under it. The old copy is removed after
   the commit. A new inode with the same bytes (a remount) is the same file.
2. New bytes are read (CHUNK_BYTES at a time; the last FINGERPRINT_BYTES before the offset come
   along for the check) and only what is complete is taken: for tfevents, whole records whose CRCs
   check out and whose payloads parse, copied verbatim (so the copy's length equals the offset);
   for CSV and JSON lines, whole lines, converted to scalars. A partial last record or line waits
   for its rest; one longer than CHUNK_BYTES is read with a larger window (for tfevents, up to
   events.MAX_RECORD_BYTES: a longer length is corrupt). A corrupt record stops the file there,
   with one warning; it is read again (RECHECK_BYTES) each time the file is looked at, since a
   network share may show a region as zeros before its bytes arrive.
3. The records and the new TailRecord go to the journal as one batch per read window (journal/):
   appended, fsynced, then committed together; a write fault is the journal's to complete. An
   uploads pass hands in a BatchStream instead: its many small files share batches.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

import structlog

from tbmirror.errors import TbmirrorError
from tbmirror.journal import Batch, BatchStream, Journal
from tbmirror.mirror import events, layout, summaries
from tbmirror.mirror.convert import DEFAULT_STEP_COLUMNS, LineConverter
from tbmirror.mirror.events import EventsFileLostError
from tbmirror.model import TailRecord

log = structlog.get_logger(__name__)

FINGERPRINT_BYTES = 1024
CHUNK_BYTES = 16 * 1024 * 1024
RECHECK_BYTES = 64 * 1024  # read at a corrupt record each time its file is looked at
RECORD_OVERHEAD = 16  # a record's framing: length, its CRC, the payload's CRC


class FileReader(Protocol):
    """One source file as it is now: its size, identity (None if it has none) and bytes."""

    @property
    def size(self) -> int: ...

    @property
    def identity(self) -> str | None: ...

    def read(self, start: int, end: int) -> bytes:
        """Bytes `start` to `end` (exclusive; fewer at the end of the file)."""
        ...


@dataclass
class TailOutcome:
    """What one `advance` did: the record as now committed, and the records (tfevents) or scalar
    points (CSV/JSON lines) mirrored."""

    tail: TailRecord
    points: int = 0
    bytes_written: int = 0
    restarted: str | None = None  # why the file was mirrored again from the start

    @property
    def written(self) -> bool:
        return self.bytes_written > 0


@dataclass
class _Taken:
    """The complete part of newly read bytes: what to append and how many source bytes it covers.

    tfevents: `records`, verbatim; CSV/JSON lines: `payloads` (events to frame), `converter` state.
    """

    consumed: int
    points: int
    records: bytes = b""
    payloads: list[bytes] = field(default_factory=list)
    converter: str | None = None
    corrupt_at: int | None = None  # offset in the new bytes of a record that does not check out


class _Restart(TbmirrorError):
    """The file must be mirrored again from the start, for the reason given."""


class Tailer:
    """Advances tailed files into the mirror; the TailRecord passed in is all the state."""

    def __init__(self, journal: Journal, step_columns: tuple[str, ...] | list[str] = ()) -> None:
        self.journal = journal
        self.step_columns = tuple(step_columns) or DEFAULT_STEP_COLUMNS

    def advance(
        self,
        tail: TailRecord,
        reader: FileReader,
        now: float,
        stop: threading.Event | None = None,
        stream: BatchStream | None = None,
    ) -> TailOutcome:
        """Mirror what `reader` has beyond `tail` (a stored record or a new one); commit it, or
        with a `stream`, add it to the stream's batch (committed when the stream flushes).

        Raises TbmirrorError or OSError for this file only (WriteFault: writing failed, for the
        whole source); what was committed (or added to `stream`) stays. A stream's owner settles
        before the stream begins (a batch of the stream that fails ends it with WriteFault).
        """
        if stream is None and self.journal.settle(tail.source):  # the caller's read may be stale
            tail = self.journal.tails(tail.source, tail.origin).get(tail.origin, tail)
        outcome = TailOutcome(tail)
        unchanged = reader.size == tail.seen_size and reader.identity == tail.identity
        if unchanged and tail.stopped_at is None:
            return outcome
        old_copy: str | None = None
        reason = self._rewritten(tail, reader)
        if reason is not None:
            log.warning("tailed_file_restarted", source=tail.source, file=tail.origin, why=reason)
            outcome.restarted, old_copy, tail = reason, tail.mirror_path, tail.restarted()
        window = CHUNK_BYTES if tail.stopped_at is None else RECHECK_BYTES
        while True:
            try:
                tail, progress = self._step(tail, reader, now, outcome, old_copy, window, stream)
            except (_Restart, EventsFileLostError) as error:
                if outcome.restarted:
                    raise  # changed again while being mirrored anew: the next look retries
                why = str(error) if isinstance(error, _Restart) else "mirror copy lost"
                log.warning("tailed_file_restarted", source=tail.source, file=tail.origin, why=why)
                outcome.restarted = why
                old_copy, tail = old_copy or tail.mirror_path, tail.restarted()
                continue
            outcome.tail, old_copy = tail, None
            if progress != "done" and stop is not None and stop.is_set():
                return outcome  # what was read is committed; the rest waits for the next look
            if progress == "grow":  # one record or line longer than the window: read more
                window = _grown(window, tail.kind)
            elif progress == "more":  # past a re-checked corrupt record: full chunks again
                window = max(window, CHUNK_BYTES)
            else:
                return outcome

    def _rewritten(self, tail: TailRecord, reader: FileReader) -> str | None:
        """Why the mirrored bytes can no longer be trusted (the head; `_step` checks the bytes
        just before the offset), or None if they still match.

        Another identity alone is no reason: the file is compared by its bytes, so a remount
        that renumbers inodes (rclone, blobfuse) does not make every file be mirrored again.
        """
        if reader.size < tail.offset:
            return "truncated"
        if tail.offset > FINGERPRINT_BYTES:
            head = reader.read(0, FINGERPRINT_BYTES)
            if len(head) == FINGERPRINT_BYTES and _digest(head) != tail.head_digest:
                return _changed(tail, reader)  # (a short answer proves nothing either way)
        return None

    def _step(
        self,
        tail: TailRecord,
        reader: FileReader,
        now: float,
        outcome: TailOutcome,
        old_copy: str | None,
        window: int,
        stream: BatchStream | None,
    ) -> tuple[TailRecord, Literal["more", "grow", "done"]]:
        """Read up to `window` new bytes, take what is complete, append, commit.

        Returns the new record and what next: "more" (the window was full), "grow" (nothing
        complete in a full window), "done".
        """
        overlap = min(tail.offset, FINGERPRINT_BYTES)
        start = tail.offset - overlap
        end = min(tail.offset + window, reader.size)  # no further than the size looked at
        data = reader.read(start, end)
        if len(data) <= overlap and end - start > overlap:  # a short answer: look again later
            return tail, "done"
        if tail.offset and _digest(data[:overlap]) != tail.tail_digest:
            raise _Restart(_changed(tail, reader))
        new = data[overlap:]
        taken = self._take(tail, new, now)
        offset = tail.offset + taken.consumed
        short = len(data) < end - start  # fewer bytes than the size looked at: not all seen yet
        updated = replace(
            tail,
            offset=offset,
            seen_size=tail.seen_size if short else reader.size,
            identity=reader.identity,
            converter=taken.converter if taken.converter is not None else tail.converter,
            points=tail.points + taken.points,
        )
        if taken.consumed:
            head_end = min(offset, FINGERPRINT_BYTES)
            if start == 0:
                updated.head_digest = _digest(data[:head_end])
            tail_start = offset - min(offset, FINGERPRINT_BYTES)
            updated.tail_digest = _digest(data[tail_start - start : offset - start])
        updated.stopped_at = None if taken.corrupt_at is None else offset
        if updated.stopped_at is not None and updated.stopped_at != tail.stopped_at:
            log.warning("corrupt_record_file_stopped", source=tail.source, file=tail.origin,
                        offset=updated.stopped_at)  # fmt: skip
        elif tail.stopped_at is not None and updated.stopped_at is None:
            log.info("corrupt_record_resolved", source=tail.source, file=tail.origin)
        written = 0
        if updated != tail or taken.records or taken.payloads or old_copy is not None:
            with self._batch(tail.source, stream) as batch:
                written = self._append(batch, updated, taken, now)  # first: it may raise
                batch.put_tail(updated)
                if old_copy and old_copy != updated.mirror_path:
                    batch.discard_file(old_copy, keep_above=tail.mirror_dir)
        outcome.bytes_written += written
        outcome.points += taken.points if written else 0
        if updated.stopped_at is not None:
            return updated, "done"
        if short:  # a server that sent less than asked (a capped range): on, while it moves
            return updated, "more" if taken.consumed else "done"
        if len(new) < window:
            return updated, "done"
        return updated, "more" if taken.consumed else "grow"

    def _take(self, tail: TailRecord, new: bytes, now: float) -> _Taken:
        if tail.kind == "tfevents":
            return _whole_records(new)
        state = json.loads(tail.converter) if tail.converter else None
        converter = LineConverter(tail.kind, self.step_columns, state=state)  # type: ignore[arg-type]
        payloads, consumed = converter.feed(new, now)
        return _Taken(
            consumed, converter.points, payloads=payloads, converter=json.dumps(converter.state())
        )

    def _batch(self, owner: str, stream: BatchStream | None) -> AbstractContextManager[Batch]:
        return stream.batch() if stream is not None else self.journal.batch(owner)

    def _copy_name(self, tail: TailRecord, batch: Batch) -> str:
        """The name of a copied tfevents file: the source's own, made safe and distinct."""
        name = layout.sanitize_component(os.path.basename(tail.origin))
        if "tfevents" not in name:
            name = events.EVENTS_PREFIX + name  # TensorBoard reads only files named so
        if tail.generation:
            name = f"{name}.{tail.generation}"
        if batch.occupied(f"{tail.mirror_dir}/{name}"):
            name = layout.disambiguate(name, hashlib.sha1(tail.origin.encode()).hexdigest())
        return name

    def _append(self, batch: Batch, tail: TailRecord, taken: _Taken, now: float) -> int:
        """Add what was taken to the tail's copy (created, and named in `tail`, if it has none);
        returns the bytes added."""
        if not taken.records and not taken.payloads:
            return 0
        if tail.mirror_path is not None:
            data = taken.records or events.frame_all(taken.payloads)
            batch.append(tail.mirror_path, data)
        elif taken.records:  # a verbatim copy, under the source file's own name
            data = taken.records
            tail.mirror_file = batch.create(tail.mirror_dir, data, self._copy_name(tail, batch))
        else:
            data = events.frame_all([summaries.file_version(now), *taken.payloads])
            tail.mirror_file = batch.create(tail.mirror_dir, data)
        return len(data)

    def forget(self, tail: TailRecord, keep_above: str) -> None:
        """Drop a tailed file, remove its copy and the directories that leaves empty (up to
        `keep_above`)."""
        with self.journal.batch(tail.source) as batch:
            batch.forget_tail(tail, keep_above)


def _whole_records(new: bytes) -> _Taken:
    """The whole, valid records at the start of `new` (verbatim), stopping at a corrupt one."""
    from tbmirror.mirror import records  # (protobuf: only a pass that reads tfevents pays it)

    found = records.scan(new)
    return _Taken(
        found.end,
        found.count,
        records=new[: found.end],
        corrupt_at=found.end if found.corrupt else None,
    )


def _grown(window: int, kind: str) -> int:
    """The next window for a record or line longer than `window`: twice as long, but for
    tfevents never past the longest record (a longer length stops the file as corrupt)."""
    if kind == "tfevents":
        return min(window * 2, events.MAX_RECORD_BYTES + RECORD_OVERHEAD)
    return window * 2


def _changed(tail: TailRecord, reader: FileReader) -> str:
    """How a file whose mirrored bytes differ changed: replaced (another inode) or rewritten."""
    replaced = tail.identity is not None and reader.identity != tail.identity
    return "replaced" if replaced else "rewritten"


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
