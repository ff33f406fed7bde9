"""The tailer driven in-process: a source file in memory, the journal on temp files over a failing
file layer. Copies of tfevents files must equal their source byte for byte, each record once,
whatever the disk did meanwhile; converted CSV logs must equal a fault-free run's copy. A torn
last record waits, a corrupt one stops the file, a rewritten file is mirrored anew.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from helpers.failing_files import (
    Crash,
    FailingFiles,
    Rig,
    file_start,
    scalar_records,
    scratch,
    steps_in,
)
from tbmirror.engine.tailing import (
    CHUNK_BYTES,
    FINGERPRINT_BYTES,
    RECHECK_BYTES,
    Tailer,
    TailOutcome,
)
from tbmirror.journal import WriteFault, recover
from tbmirror.mirror import events
from tbmirror.model import TailRecord

SOURCE = "up"
ORIGIN = "job/events.out.tfevents.1700000000.trainer"
NAME = "events.out.tfevents.1700000000.trainer"
MIRROR_DIR = f"{SOURCE}/job"
CSV_ORIGIN = "job/metrics.csv"
CSV_DIR = f"{SOURCE}/job/metrics.csv"


@pytest.fixture
def tmp_path(tmp_path: Path) -> Iterator[Path]:
    """Each test's directory, where fsync is cheap (see helpers.failing_files.scratch)."""
    with scratch(tmp_path) as directory:
        yield directory


class MemoryFile:
    """A source file in memory (a FileReader) that tests grow, change or replace."""

    def __init__(self, data: bytes = b"", identity: str | None = "8:1") -> None:
        self.data = bytearray(data)
        self._identity = identity

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def identity(self) -> str | None:
        return self._identity

    def read(self, start: int, end: int) -> bytes:
        return bytes(self.data[start:end])


def tfevents(steps: range, wall_time: float = 1.0) -> bytes:
    """A training job's events file holding `steps` (the start too when steps start at 0)."""
    head = file_start(wall_time) if steps.start == 0 else b""
    return head + scalar_records(steps, wall_time)


def csv_lines(steps: range) -> bytes:
    return "".join(f"{step},{step / 4}\n" for step in steps).encode()


def tail_pass(rig: Rig, reader: MemoryFile, now: float, kind: str = "tfevents") -> TailOutcome:
    """What an engine does for one file in a pass: settle the source, take the file's record as
    stored (a new one if none), advance."""
    origin, directory = (ORIGIN, MIRROR_DIR) if kind == "tfevents" else (CSV_ORIGIN, CSV_DIR)
    rig.journal.settle(SOURCE)
    stored = rig.journal.tails(SOURCE, origin).get(origin)
    tail = stored or TailRecord(SOURCE, origin, kind, directory)
    return Tailer(rig.journal).advance(tail, reader, now)


def copy_of(rig: Rig, kind: str = "tfevents") -> bytes:
    """The committed mirror copy of the tailed file (checked to be the only events file)."""
    origin = ORIGIN if kind == "tfevents" else CSV_ORIGIN
    tail = rig.journal.tails(SOURCE)[origin]
    assert tail.mirror_file is not None
    assert rig.events_files(tail.mirror_dir) == [tail.mirror_file]
    return rig.read(f"{tail.mirror_dir}/{tail.mirror_file}")


def test_a_tfevents_file_is_copied_verbatim_as_it_grows(tmp_path: Path) -> None:
    rig = Rig.open(tmp_path)
    source = MemoryFile(tfevents(range(10)))
    outcome = tail_pass(rig, source, 100.0)
    assert (outcome.points, outcome.bytes_written) == (11, source.size)
    source.data += tfevents(range(10, 20))
    tail_pass(rig, source, 200.0)
    assert copy_of(rig) == source.data
    tail = rig.journal.tails(SOURCE)[ORIGIN]
    assert (tail.mirror_file, tail.offset, tail.seen_size, tail.points) == (
        NAME,
        source.size,
        source.size,
        21,
    )
    assert tail_pass(rig, source, 300.0).bytes_written == 0  # unchanged: nothing read
    rig.check_store_matches_disk(SOURCE)


FAULTS: dict[str, Callable[[FailingFiles], object]] = {
    "ENOSPC-half-way": lambda files: files.fail("write_at", errno.ENOSPC, partial=40),
    "EIO-at-fsync": lambda files: files.fail("fsync", errno.EIO),
    "SQLITE_FULL-at-commit": lambda files: files.fail("commit"),
}
COPY_FAULTS = [
    pytest.param(phase, fault, id=f"{phase}-{fault}")
    for phase in ("first-copy", "later-copy")
    for fault in FAULTS
]


@pytest.mark.parametrize(("phase", "fault"), COPY_FAULTS)
def test_a_write_fault_during_a_copy_is_completed_byte_for_byte(
    tmp_path: Path, phase: str, fault: str
) -> None:
    """ENOSPC (half a record written), EIO at fsync or SQLITE_FULL while copying: the pass fails
    with WriteFault, and keeps failing while the source grows on; once the disk works, the next
    pass (record reloaded after the settle) leaves a copy identical to the source, under its own
    name, holding what a reader saw meanwhile as its prefix."""
    rig = Rig.open(tmp_path)
    source = MemoryFile(tfevents(range(5)))
    if phase == "later-copy":
        tail_pass(rig, source, 100.0)
    committed = source.size if phase == "later-copy" else 0
    source.data += tfevents(range(5, 10))
    FAULTS[fault](rig.files)
    with pytest.raises(WriteFault):
        tail_pass(rig, source, 200.0)
    assert rig.events_files(MIRROR_DIR) == [NAME]
    seen = rig.read(f"{MIRROR_DIR}/{NAME}")  # what TensorBoard may have read
    if fault == "ENOSPC-half-way":
        assert seen == source.data[: committed + 40]  # a torn record, left as it is
    else:
        assert seen == source.data  # every record written, none committed
    assert rig.journal.store.file_length(f"{MIRROR_DIR}/{NAME}") == (committed or None)
    source.data += tfevents(range(10, 15))
    with pytest.raises(WriteFault):
        tail_pass(rig, source, 300.0)
    assert list(rig.journal.faults()) == [SOURCE]
    rig.files.heal()
    outcome = tail_pass(rig, source, 400.0)
    assert outcome.restarted is None
    assert copy_of(rig) == source.data and copy_of(rig).startswith(seen)
    assert steps_in(copy_of(rig)) == list(range(15))
    tail = rig.journal.tails(SOURCE)[ORIGIN]
    assert (tail.mirror_file, tail.offset, tail.generation) == (NAME, source.size, 0)
    assert rig.journal.faults() == {}
    rig.check_store_matches_disk(SOURCE)


@pytest.mark.parametrize("phase", ["first-copy", "later-copy"])
def test_a_record_read_before_the_settle_does_not_copy_twice(tmp_path: Path, phase: str) -> None:
    """A caller that took the file's record from the store while a batch of its source was still
    pending (a cache filled before the settle) and advances once the disk works: the advance's own
    batch completes the pending one first, and what that held must not be copied again (into a
    second file, or twice into the same one)."""
    rig = Rig.open(tmp_path)
    source = MemoryFile(tfevents(range(5)))
    if phase == "later-copy":
        tail_pass(rig, source, 100.0)
        source.data += tfevents(range(5, 10))
    rig.files.fail("fsync", errno.EIO, times=1)
    with pytest.raises(WriteFault):
        tail_pass(rig, source, 200.0)
    stale = rig.journal.tails(SOURCE).get(ORIGIN) or TailRecord(
        SOURCE, ORIGIN, "tfevents", MIRROR_DIR
    )
    Tailer(rig.journal).advance(stale, source, 300.0)
    assert rig.events_files(MIRROR_DIR) == [NAME]
    assert copy_of(rig) == source.data
    rig.check_store_matches_disk(SOURCE)


@pytest.mark.parametrize("phase", ["first-copy", "later-copy"])
def test_a_csv_copy_after_a_write_fault_equals_a_fault_free_one(tmp_path: Path, phase: str) -> None:
    """Converted lines carry the time they were read: the copy completed after a fault holds the
    points as first encoded, so it equals the copy a disk that never failed would hold."""

    def run(directory: Path, fail: bool) -> bytes:
        rig = Rig.open(directory)
        source = MemoryFile(b"step,loss\n" + csv_lines(range(3)))
        if phase == "later-copy":
            tail_pass(rig, source, 50.0, "csv")
            source.data += csv_lines(range(3, 6))
        if fail:
            rig.files.fail("write_at", errno.ENOSPC, partial=25)
            with pytest.raises(WriteFault):
                tail_pass(rig, source, 100.0, "csv")
            rig.files.heal()
        else:
            tail_pass(rig, source, 100.0, "csv")
        source.data += csv_lines(range(6, 8))
        tail_pass(rig, source, 200.0, "csv")
        rig.check_store_matches_disk(SOURCE)
        assert rig.journal.tails(SOURCE)[CSV_ORIGIN].offset == source.size
        return copy_of(rig, "csv")

    faulty, fault_free = run(tmp_path / "faulty", True), run(tmp_path / "fault-free", False)
    assert faulty == fault_free
    expected = list(range(3)) + ([] if phase == "first-copy" else list(range(3, 6)))
    assert steps_in(faulty) == [*expected, 6, 7]


@pytest.mark.parametrize("cut", [5, 20], ids=["in-the-header", "in-the-payload"])
def test_a_torn_last_record_waits_for_its_rest(tmp_path: Path, cut: int) -> None:
    rig = Rig.open(tmp_path)
    whole, last = tfevents(range(5)), scalar_records([5], 1.0)
    source = MemoryFile(whole + last[:cut])
    tail_pass(rig, source, 100.0)
    assert copy_of(rig) == whole
    tail = rig.journal.tails(SOURCE)[ORIGIN]
    assert (tail.offset, tail.seen_size, tail.stopped_at) == (len(whole), source.size, None)
    assert tail_pass(rig, source, 200.0).bytes_written == 0
    source.data += last[cut:]
    assert tail_pass(rig, source, 300.0).bytes_written == len(last)
    assert copy_of(rig) == source.data


def test_a_corrupt_record_stops_the_file_until_it_reads_right(tmp_path: Path) -> None:
    """A record whose CRC fails stops the copy before it (warned once); it is read again each
    time, and once its bytes are right (a share showed zeros first) the copy goes on."""
    rig = Rig.open(tmp_path)
    good, bad = tfevents(range(5)), bytearray(scalar_records([5], 1.0))
    rest = scalar_records(range(6, 9), 1.0)
    right = bytes(bad)
    bad[-6] ^= 0xFF  # a payload byte: the payload CRC fails
    source = MemoryFile(good + bad + rest)
    with capture_logs() as logs:
        tail_pass(rig, source, 100.0)
        assert copy_of(rig) == good
        assert rig.journal.tails(SOURCE)[ORIGIN].stopped_at == len(good)
        assert tail_pass(rig, source, 200.0).bytes_written == 0
        assert copy_of(rig) == good
        source.data[len(good) : len(good) + len(bad)] = right
        tail_pass(rig, source, 300.0)
    assert copy_of(rig) == source.data
    assert steps_in(copy_of(rig)) == list(range(9))
    assert rig.journal.tails(SOURCE)[ORIGIN].stopped_at is None
    names = [entry["event"] for entry in logs if entry["event"].startswith("corrupt_record")]
    assert names == ["corrupt_record_file_stopped", "corrupt_record_resolved"]


class CountingFile(MemoryFile):
    """A MemoryFile that counts the bytes read from it."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.bytes_read = 0

    def read(self, start: int, end: int) -> bytes:
        data = super().read(start, end)
        self.bytes_read += len(data)
        return data


@pytest.mark.parametrize("path", ["compiled", "python"])
def test_a_forged_record_length_stops_the_file_and_growth_costs_only_new_bytes(
    tmp_path: Path, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 28 defect 3: a header claiming 2^40 bytes (its length CRC right) is corruption: the
    file stops there with one warning after one window, and the file growing by 48 MiB behind it
    costs a re-check of RECHECK_BYTES, not a read of the rest (on main the window doubled to
    the end of the file and was read again each time the file grew)."""
    if path == "python":
        monkeypatch.setattr(events, "compiled", None)
    rig = Rig.open(tmp_path)
    good = tfevents(range(5))
    header = struct.pack("<Q", 2**40)
    forged = header + struct.pack("<I", events.masked_crc(header))
    source = CountingFile(good + forged + bytes(40 * 1024**2))
    with capture_logs() as logs:
        outcome = tail_pass(rig, source, 100.0)
        assert outcome.tail.stopped_at == len(good)
        assert source.bytes_read <= CHUNK_BYTES + FINGERPRINT_BYTES, source.bytes_read
        source.data += bytes(48 * 1024**2)
        source.bytes_read = 0
        assert tail_pass(rig, source, 200.0).tail.stopped_at == len(good)
        assert source.bytes_read <= RECHECK_BYTES + FINGERPRINT_BYTES, source.bytes_read
    assert copy_of(rig) == good
    warned = [entry for entry in logs if entry["event"] == "corrupt_record_file_stopped"]
    assert [entry["offset"] for entry in warned] == [len(good)]


@pytest.mark.parametrize(
    ("identity", "reason"), [("8:1", "rewritten"), ("8:2", "replaced")], ids=["same", "new-inode"]
)
def test_a_rewritten_file_is_mirrored_anew_under_a_new_name(
    tmp_path: Path, identity: str, reason: str
) -> None:
    """Only the head of the mirrored bytes changed (its first record, more than
    FINGERPRINT_BYTES before the offset) and the file grew: a new copy `<name>.1` holds the new
    content; the old copy, which a reader may have read, is removed, never rewritten."""
    rig = Rig.open(tmp_path)
    source = MemoryFile(tfevents(range(60)))
    assert source.size > 2 * FINGERPRINT_BYTES
    tail_pass(rig, source, 100.0)
    head = file_start(2.0)
    assert len(head) == len(file_start(1.0))
    rewritten = MemoryFile(head + source.data[len(head) :] + tfevents(range(60, 65)), identity)
    outcome = tail_pass(rig, rewritten, 200.0)
    assert outcome.restarted == reason
    tail = rig.journal.tails(SOURCE)[ORIGIN]
    assert (tail.mirror_file, tail.generation, tail.offset) == (f"{NAME}.1", 1, rewritten.size)
    assert copy_of(rig) == rewritten.data
    assert rig.journal.store.files() == {f"{MIRROR_DIR}/{NAME}.1": rewritten.size}
    rig.check_store_matches_disk(SOURCE)


def test_a_rewrite_met_by_a_write_fault_removes_the_old_copy_only_once_committed(
    tmp_path: Path,
) -> None:
    rig = Rig.open(tmp_path)
    source = MemoryFile(tfevents(range(40)))
    tail_pass(rig, source, 100.0)
    old_copy = copy_of(rig)
    rewritten = MemoryFile(tfevents(range(45), wall_time=2.0))
    rig.files.fail("commit")
    with pytest.raises(WriteFault):
        tail_pass(rig, rewritten, 200.0)
    assert rig.read(f"{MIRROR_DIR}/{NAME}") == old_copy  # still what the store says
    rig.files.heal()
    tail_pass(rig, rewritten, 300.0)
    assert rig.events_files(MIRROR_DIR) == [f"{NAME}.1"]
    assert copy_of(rig) == rewritten.data
    rig.check_store_matches_disk(SOURCE)


def test_a_lost_copy_is_mirrored_anew(tmp_path: Path) -> None:
    rig = Rig.open(tmp_path)
    source = MemoryFile(tfevents(range(5)))
    tail_pass(rig, source, 100.0)
    (rig.root / MIRROR_DIR / NAME).unlink()
    source.data += tfevents(range(5, 8))
    outcome = tail_pass(rig, source, 200.0)
    assert outcome.restarted == "mirror copy lost"
    assert rig.journal.tails(SOURCE)[ORIGIN].mirror_file == f"{NAME}.1"
    assert copy_of(rig) == source.data
    rig.check_store_matches_disk(SOURCE)


@pytest.mark.parametrize("when", ["after-write", "inside-the-commit"])
def test_a_crash_during_a_copy_is_recovered_and_copied_once(tmp_path: Path, when: str) -> None:
    """The process dies half-way through a copy: recovery cuts the uncommitted bytes, the next
    pass reads them again from the source: the copy equals the source, each record once."""
    rig = Rig.open(tmp_path)
    source = MemoryFile(tfevents(range(5)))
    tail_pass(rig, source, 100.0)
    source.data += tfevents(range(5, 10))
    if when == "after-write":
        rig.files.crash("write_at", "after")
    else:
        rig.files.crash("commit", "before")
    with pytest.raises(Crash):
        tail_pass(rig, source, 200.0)
    rig = rig.restart()
    assert recover(rig.journal, [SOURCE]).truncated == 1
    tail_pass(rig, source, 300.0)
    assert copy_of(rig) == source.data
    assert steps_in(copy_of(rig)) == list(range(10))
    rig.check_store_matches_disk(SOURCE)


class CappedFile(MemoryFile):
    """A server that answers at most `cap` bytes of any range (a proxy capping range sizes)."""

    def __init__(self, data: bytes, cap: int) -> None:
        super().__init__(data, identity=None)
        self.cap = cap

    def read(self, start: int, end: int) -> bytes:
        return super().read(start, min(end, start + self.cap))


def test_a_server_that_sends_less_than_asked_is_read_on_to_the_end(tmp_path: Path) -> None:
    """Short answers are not the end of the file: the copy reaches the listed size in one look
    (or, if nothing whole came, a later one), and nothing is taken twice."""
    rig = Rig.open(tmp_path)
    data = tfevents(range(200))
    source = CappedFile(data, cap=1500)
    tail_pass(rig, source, 100.0)
    assert copy_of(rig) == data
    assert rig.journal.tails(SOURCE)[ORIGIN].seen_size == len(data)

    stingy = CappedFile(data + tfevents(range(200, 400)), cap=20)  # not one whole record
    tail_pass(rig, stingy, 200.0)
    assert copy_of(rig) == data, "nothing whole arrived: nothing taken"
    assert rig.journal.tails(SOURCE)[ORIGIN].seen_size == len(data), "looked at again later"
    stingy.cap = 10**6
    tail_pass(rig, stingy, 300.0)
    assert copy_of(rig) == bytes(stingy.data)


def test_files_advanced_through_a_stream_share_its_batches(tmp_path: Path) -> None:
    """An uploads pass: many small files share one batch (one commit, one fsync per file) until
    it holds flush_blocks steps; the copies are as without a stream, and a copy name taken
    earlier in the open batch counts as taken (two names that sanitise alike get distinct
    copies)."""
    rig = Rig.open(tmp_path)
    names = [f"events.out.tfevents.{i}.host" for i in range(5)]
    names += ["events.out.tfevents.9.a\\b", "events.out.tfevents.9.a_b"]
    sources = {f"job/{n}": MemoryFile(tfevents(range(10), i)) for i, n in enumerate(names)}

    def stream_pass(now: float, flush_blocks: int) -> list[str]:
        rig.files.steps.clear()
        stored = rig.journal.tails(SOURCE)
        stream = rig.journal.stream(SOURCE, 10**9, flush_blocks)
        for origin, reader in sources.items():
            tail = stored.get(origin) or TailRecord(SOURCE, origin, "tfevents", MIRROR_DIR)
            Tailer(rig.journal).advance(tail, reader, now, stream=stream)
        stream.flush()
        return [op for op, _ in rig.files.steps]

    steps = stream_pass(100.0, flush_blocks=len(names))
    assert (steps.count("commit"), steps.count("fsync")) == (1, len(names))
    assert len(rig.events_files(MIRROR_DIR)) == len(names)
    for source in sources.values():
        source.data += tfevents(range(10, 20))
    steps = stream_pass(200.0, flush_blocks=1)  # every file's step ends its batch
    assert (steps.count("commit"), steps.count("fsync")) == (len(names), len(names))
    tails = rig.journal.tails(SOURCE)
    for origin, source in sources.items():
        tail = tails[origin]
        assert rig.read(f"{MIRROR_DIR}/{tail.mirror_file}") == source.data
        assert tail.offset == source.size
    rig.check_store_matches_disk(SOURCE)
