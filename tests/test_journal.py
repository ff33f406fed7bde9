"""The journal driven in-process on temp files over a failing file layer: ENOSPC at a write (at
once or half-way through), EIO/EDQUOT at an fsync, SQLITE_FULL at the commit, and a crash between
any two steps of the protocol, of a directory move, and recovery after each. Milliseconds each.

The records written here carry the time of the pass that planned them, as the engines' do, so a
journal that cut a failed batch back and let the next pass plan it anew would write other bytes
than a fault-free run, and other bytes than a reader may already have read: the byte-for-byte
comparisons below catch it.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import replace
from pathlib import Path
from typing import Any

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
from tbmirror.journal import Journal, WriteFault, recover
from tbmirror.mirror.events import EventsFileLostError
from tbmirror.model import Cursor, MetricPoint, RunRecord, TailRecord

OWNER, OTHER = "src", "second"
EXP = f"{OWNER}/exp"
RUN = "r1"
RUN_DIR = f"{EXP}/{RUN}"
TAG = "loss"
PARTIAL = 30  # bytes a write gets out before the disk is full: part of a record
COPY_DIR = f"{RUN_DIR}/artifacts"
COPY_NAME = "events.out.tfevents.100.worker"
COPY_ORIGIN = f"{RUN}/artifacts/{COPY_NAME}"

State = tuple[dict[str, int], dict[str, RunRecord], dict[str, Cursor], dict[str, TailRecord]]


@pytest.fixture
def tmp_path(tmp_path: Path) -> Iterator[Path]:
    """Each test's directory, where fsync is cheap (see helpers.failing_files.scratch)."""
    with scratch(tmp_path) as directory:
        yield directory


# -- a minimal engine -----------------------------------------------------------------------------


def cursor_at(count: int) -> Cursor:
    return Cursor(count, MetricPoint(count, count - 1, (count - 1) / 7), count - 1)


def sync_pass(
    journal: Journal,
    available: int,
    wall_time: float,
    owner: str = OWNER,
    run_id: str = RUN,
    run_dir: str | None = None,
) -> None:
    """One pass of a minimal engine over series TAG, whose points 0..available-1 exist: settle,
    plan from the committed cursor, write the new points (stamped `wall_time`) in one batch."""
    journal.settle(owner)
    run = journal.runs(owner).get(run_id) or RunRecord(
        owner, run_id, "1", None, run_dir or f"{owner}/exp/{run_id}", run_id, "RUNNING"
    )
    done = journal.cursors(owner, run_id).get(TAG, Cursor()).count
    data = scalar_records(range(done, available), wall_time)
    with journal.batch(owner) as batch:
        if run.events_file is None:
            run = replace(run, events_file=batch.create(run.dir, file_start(wall_time) + data))
        elif data:
            batch.append(run.events_path or "", data)
        batch.put_run(replace(run, reconciled_at=wall_time))
        batch.put_cursors(owner, run_id, {TAG: cursor_at(available)})


def state(journal: Journal, owner: str = OWNER) -> State:
    """What the store says of `owner`'s mirror (and of RUN's series)."""
    return (
        journal.store.files(),
        journal.runs(owner),
        journal.cursors(owner, RUN),
        journal.tails(owner),
    )


def run_file(rig: Rig, run_dir: str = RUN_DIR) -> tuple[str | None, bytes]:
    """(name, bytes) of the one events file in a run directory; (None, b"") if it has none."""
    names = rig.events_files(run_dir)
    assert len(names) <= 1, names
    return (names[0], rig.read(f"{run_dir}/{names[0]}")) if names else (None, b"")


def reference(directory: Path, passes: list[tuple[int, float]]) -> bytes:
    """RUN's events file after `passes` (available, wall time) on a disk that never fails."""
    rig = Rig.open(directory)
    for available, wall_time in passes:
        sync_pass(rig.journal, available, wall_time)
    data = run_file(rig)[1]
    rig.journal.close()
    return data


def events_named(
    logs: list[MutableMapping[str, Any]], *names: str
) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["event"] in names]


# -- failed batches -------------------------------------------------------------------------------

FAULTS: dict[str, tuple[Callable[[FailingFiles], object], str]] = {
    "ENOSPC-at-write": (lambda files: files.fail("write_at", errno.ENOSPC), "ENOSPC"),
    "ENOSPC-half-way": (
        lambda files: files.fail("write_at", errno.ENOSPC, partial=PARTIAL),
        "ENOSPC",
    ),
    "EIO-at-fsync": (lambda files: files.fail("fsync", errno.EIO), "EIO"),
    "EDQUOT-at-fsync": (lambda files: files.fail("fsync", errno.EDQUOT), "EDQUOT"),
    "EIO-at-dir-fsync": (lambda files: files.fail("fsync_dir", errno.EIO), "EIO"),
    "SQLITE_FULL-at-commit": (lambda files: files.fail("commit"), "SQLITE_FULL"),
}
FAILED_BATCHES = [
    pytest.param(phase, fault, id=f"{phase}-{fault}")
    for phase in ("create", "append")
    for fault in FAULTS
    if not (phase == "append" and fault == "EIO-at-dir-fsync")  # an append makes no directory
]


@pytest.mark.parametrize(("phase", "fault"), FAILED_BATCHES)
def test_a_failed_batch_is_completed_with_the_same_bytes(
    tmp_path: Path, phase: str, fault: str
) -> None:
    """A batch that fails (creating the run's file, or appending to it) leaves only a prefix of
    its bytes past the committed length and commits nothing; its owner's passes fail while the
    fault lasts; once it clears, the same bytes are completed at the same offsets (same file name),
    committed with the cursors, and the next batch appends after them: the file equals a
    fault-free run's, each point once, and what a reader saw meanwhile is still its prefix."""
    inject, cause = FAULTS[fault]
    rig = Rig.open(tmp_path / "faulty")
    attempts: list[tuple[str, str]] = []
    rig.journal.add_fault_listener(lambda owner, why: attempts.append((owner, why)))
    passes = [(3, 100.0)] if phase == "append" else []
    with capture_logs() as logs:
        for available, wall_time in passes:
            sync_pass(rig.journal, available, wall_time)
        before, (_, committed) = state(rig.journal), run_file(rig)
        inject(rig.files)

        with pytest.raises(WriteFault) as raised:
            sync_pass(rig.journal, 6, 200.0)
        assert (raised.value.owner, raised.value.cause) == (OWNER, cause)
        name, seen = run_file(rig)  # what TensorBoard may have read
        done = 3 if phase == "append" else 0
        meant = scalar_records(range(done, 6), 200.0)
        if phase == "create":
            meant = file_start(200.0) + meant
        assert seen[: len(committed)] == committed
        assert meant.startswith(seen[len(committed) :])
        if fault == "ENOSPC-half-way":
            assert len(seen) == len(committed) + PARTIAL  # a torn record on disk
        assert state(rig.journal) == before
        assert rig.journal.faults()[OWNER].cause == cause

        with pytest.raises(WriteFault):  # the fault lasts: nothing new is planned nor written
            sync_pass(rig.journal, 7, 300.0)
        with pytest.raises(WriteFault), rig.journal.batch(OWNER):
            pytest.fail("a batch began on a state that lags the disk")
        assert run_file(rig) == (name, seen)
        assert state(rig.journal) == before
        assert list(rig.journal.faults()) == [OWNER]

        rig.files.heal()
        sync_pass(rig.journal, 9, 400.0)
        assert rig.journal.faults() == {}

    final_name, final = run_file(rig)
    assert final.startswith(seen)
    assert final == reference(tmp_path / "fault-free", [*passes, (6, 200.0), (9, 400.0)])
    assert steps_in(final) == list(range(9))
    if name is not None:
        assert final_name == name  # completed under its own name, not a "-<sha8>" twin
    run = rig.journal.runs(OWNER)[RUN]
    assert run.events_file == final_name and run.reconciled_at == 400.0
    assert rig.journal.store.file_length(f"{RUN_DIR}/{final_name}") == len(final)
    assert rig.journal.cursors(OWNER, RUN)[TAG] == cursor_at(9)
    rig.check_store_matches_disk(OWNER)
    assert attempts == [(OWNER, cause)] * 2  # the failed batch and one settle: a batch() begun
    # while one is pending is refused without trying to write
    assert [e["event"] for e in events_named(logs, "write_failed", "writes_recovered")] == [
        "write_failed",
        "writes_recovered",
    ]


def test_an_fsync_error_writes_the_bytes_again(tmp_path: Path) -> None:
    """After EIO at fsync the kernel may have dropped the dirty pages (Linux marks them clean):
    settling writes the batch's bytes again before it fsyncs, rather than only fsyncing again."""
    rig = Rig.open(tmp_path)
    sync_pass(rig.journal, 3, 100.0)
    name, committed = run_file(rig)
    rig.files.fail("fsync", errno.EIO, times=1)
    with pytest.raises(WriteFault):
        sync_pass(rig.journal, 6, 200.0)
    os.truncate(rig.root / RUN_DIR / str(name), len(committed))  # the pages never reached disk
    rig.journal.settle(OWNER)
    assert run_file(rig) == (name, committed + scalar_records(range(3, 6), 200.0))
    rig.check_store_matches_disk(OWNER)


def test_each_cause_is_logged_once_and_every_attempt_reported(tmp_path: Path) -> None:
    """`write_failed` once per cause however many attempts fail, the fault listener once per
    failed attempt, `faults()` keeps the first cause and its time, `writes_recovered` once."""
    rig = Rig.open(tmp_path)
    attempts: list[str] = []
    rig.journal.add_fault_listener(lambda owner, why: attempts.append(why))
    sync_pass(rig.journal, 3, 100.0)
    rig.files.fail("write_at", errno.ENOSPC, times=2)
    rig.files.fail("fsync", errno.EIO, times=2)
    with capture_logs() as logs:
        rig.clock.now = 5_000.0
        with pytest.raises(WriteFault):
            sync_pass(rig.journal, 6, 200.0)
        for _ in range(3):
            rig.clock.now += 10
            with pytest.raises(WriteFault):
                rig.journal.settle(OWNER)
            fault = rig.journal.faults()[OWNER]
            assert (fault.cause, fault.since) == ("ENOSPC", 5_000.0)
        rig.clock.now = 5_042.0
        rig.journal.settle(OWNER)
    assert attempts == ["ENOSPC", "ENOSPC", "EIO", "EIO"]
    logged = events_named(logs, "write_failed", "writes_recovered")
    assert [(e["event"], e.get("cause")) for e in logged] == [
        ("write_failed", "ENOSPC"),
        ("write_failed", "EIO"),
        ("writes_recovered", None),
    ]
    assert logged[-1]["after_seconds"] == 42.0
    assert rig.journal.faults() == {}


def test_one_owners_fault_does_not_hold_up_another(tmp_path: Path) -> None:
    """While one owner's batch is pending, another owner's batches are written and committed."""
    rig = Rig.open(tmp_path)
    sync_pass(rig.journal, 3, 100.0, owner=OTHER)
    rig.files.fail("write_at", errno.ENOSPC, where=f"{rig.root / OTHER}/")
    with pytest.raises(WriteFault):
        sync_pass(rig.journal, 6, 200.0, owner=OTHER)
    sync_pass(rig.journal, 3, 200.0)
    sync_pass(rig.journal, 5, 300.0)
    assert list(rig.journal.faults()) == [OTHER]
    with pytest.raises(WriteFault):
        rig.journal.settle(OTHER)
    rig.files.heal()
    rig.journal.settle(OTHER)
    assert rig.journal.faults() == {}
    assert steps_in(run_file(rig)[1]) == list(range(5))
    assert steps_in(run_file(rig, f"{OTHER}/exp/{RUN}")[1]) == list(range(6))
    rig.check_store_matches_disk(OWNER)
    rig.check_store_matches_disk(OTHER)


def test_an_error_while_building_a_batch_discards_it_whole(tmp_path: Path) -> None:
    rig = Rig.open(tmp_path)
    sync_pass(rig.journal, 3, 100.0)
    before, file_before = state(rig.journal), run_file(rig)
    run = rig.journal.runs(OWNER)[RUN]
    with pytest.raises(ValueError), rig.journal.batch(OWNER) as batch:
        batch.append(run.events_path or "", scalar_records(range(3, 6), 200.0))
        batch.put_cursors(OWNER, RUN, {TAG: cursor_at(6)})
        batch.create(f"{EXP}/r2", file_start(200.0))
        raise ValueError("planning failed")
    rig.journal.settle(OWNER)
    assert (state(rig.journal), run_file(rig)) == (before, file_before)
    assert rig.events_files(f"{EXP}/r2") == []
    assert rig.journal.faults() == {}


def test_a_pending_batch_whose_file_was_deleted_does_not_stop_its_owner(tmp_path: Path) -> None:
    """A file removed by hand (or by a cleanup job) while its owner's batch is pending: once the
    disk works again the owner writes again, with the lost run reset rather than every later
    pass failing with ENOENT until the daemon is restarted."""
    rig = Rig.open(tmp_path)
    sync_pass(rig.journal, 3, 100.0)
    sync_pass(rig.journal, 3, 100.0, run_id="r2")
    rig.files.fail("write_at", errno.ENOSPC)
    with pytest.raises(WriteFault):
        sync_pass(rig.journal, 6, 200.0)
    name, _ = run_file(rig)
    os.unlink(rig.root / RUN_DIR / str(name))
    rig.files.heal()
    for _ in range(2):  # one pass may still report the fault; the next must write
        try:
            sync_pass(rig.journal, 6, 300.0, run_id="r2")
            break
        except WriteFault:
            continue
    assert rig.journal.faults() == {}
    assert steps_in(run_file(rig, f"{EXP}/r2")[1]) == list(range(6))


# -- crashes --------------------------------------------------------------------------------------

F1_DIR, F2_DIR = RUN_DIR, f"{EXP}/r2"
# The protocol's steps for the batch of `crashing_batch`, in order (two files, one discarded).
PROTOCOL = [
    ("write_at", 1),
    ("make_dirs", 1),
    ("write_at", 2),
    ("fsync", 1),
    ("fsync", 2),
    ("fsync_dir", 1),
    ("fsync_dir", 2),
    ("commit", 1),
    ("unlink", 1),
]
CRASH_POINTS = [
    pytest.param("write_at", 1, "before", id="before-any-write"),
    *(pytest.param(op, nth, "after", id=f"after-{op}-{nth}") for op, nth in PROTOCOL),
    pytest.param("commit", 1, "before", id="inside-the-commit"),
]


def with_copy(rig: Rig) -> str:
    """RUN with points 0..2, and a tailed tfevents copy in its directory; returns the copy's
    relative path."""
    sync_pass(rig.journal, 3, 100.0)
    data = file_start(50.0) + scalar_records(range(4), 50.0)
    with rig.journal.batch(OWNER) as batch:
        name = batch.create(COPY_DIR, data, COPY_NAME)
        batch.put_tail(
            TailRecord(OWNER, COPY_ORIGIN, "tfevents", COPY_DIR, name, len(data), len(data))
        )
    return f"{COPY_DIR}/{name}"


def crashing_batch(journal: Journal) -> tuple[bytes, bytes]:
    """Append points 3..5 to RUN, create run r2's file, forget the tailed copy (its file is
    discarded). Returns (the bytes appended to RUN, r2's file)."""
    run = journal.runs(OWNER)[RUN]
    appended = scalar_records(range(3, 6), 200.0)
    created = file_start(200.0) + scalar_records(range(2), 200.0)
    with journal.batch(OWNER) as batch:
        batch.append(run.events_path or "", appended)
        batch.put_cursors(OWNER, RUN, {TAG: cursor_at(6)})
        name = batch.create(F2_DIR, created)
        batch.put_run(RunRecord(OWNER, "r2", "1", None, F2_DIR, "r2", "RUNNING", name))
        batch.forget_tail(journal.tails(OWNER)[COPY_ORIGIN])
    return appended, created


def test_a_batch_takes_the_protocol_steps_in_order(tmp_path: Path) -> None:
    """Write every file, fsync each, fsync the new directories, commit, then remove: the crash
    points below are the gaps between these steps."""
    rig = Rig.open(tmp_path)
    copy = with_copy(rig)
    rig.files.steps.clear()
    crashing_batch(rig.journal)
    counts: dict[str, int] = {}
    taken = []
    for op, _ in rig.files.steps:
        counts[op] = counts.get(op, 0) + 1
        taken.append((op, counts[op]))
    assert taken == PROTOCOL
    assert rig.files.steps[-1] == ("unlink", str(rig.root / copy))
    assert not (rig.root / COPY_DIR).exists()  # emptied directories pruned below the owner


@pytest.mark.parametrize(("op", "nth", "when"), CRASH_POINTS)
def test_a_crash_at_any_step_recovers_to_what_was_committed(
    tmp_path: Path, op: Any, nth: int, when: Any
) -> None:
    """The process dies at one step of a batch; the next start's recovery leaves disk and store
    agreeing on exactly the committed state (uncommitted bytes cut, an uncommitted created file
    removed, a committed batch's discarded file removed), and the next pass writes the rest
    once."""
    rig = Rig.open(tmp_path)
    copy = with_copy(rig)
    before, (f1_name, f1) = state(rig.journal), run_file(rig)
    copy_bytes = rig.read(copy)
    rig.files.crash(op, when, nth=nth)
    with pytest.raises(Crash):
        crashing_batch(rig.journal)
    orphan = bool(rig.events_files(F2_DIR))

    rig = rig.restart()
    report = recover(rig.journal, [OWNER])

    committed = (op, when) in (("commit", "after"), ("unlink", "after"))
    appended = scalar_records(range(3, 6), 200.0)
    if committed:
        assert run_file(rig) == (f1_name, f1 + appended)
        assert run_file(rig, F2_DIR)[1] == file_start(200.0) + scalar_records(range(2), 200.0)
        assert rig.journal.runs(OWNER)["r2"].events_file == run_file(rig, F2_DIR)[0]
        assert rig.journal.cursors(OWNER, RUN)[TAG] == cursor_at(6)
        assert COPY_ORIGIN not in rig.journal.tails(OWNER)
        assert not (rig.root / copy).exists()
    else:
        assert state(rig.journal) == before
        assert run_file(rig) == (f1_name, f1)
        assert run_file(rig, F2_DIR) == (None, b"")
        assert rig.read(copy) == copy_bytes
        assert report.orphans_removed == int(orphan)
    rig.check_store_matches_disk(OWNER)

    sync_pass(rig.journal, 8, 300.0)  # the source is asked again from the committed cursor
    assert steps_in(run_file(rig)[1]) == list(range(8))
    rig.check_store_matches_disk(OWNER)


def test_a_crash_during_recovery_is_finished_by_the_next_start(tmp_path: Path) -> None:
    """Recovery itself dies half-way (after cutting a file back, before resetting a lost run):
    the next start finishes the job."""
    rig = Rig.open(tmp_path)
    sync_pass(rig.journal, 3, 100.0)
    sync_pass(rig.journal, 3, 100.0, run_id="r2")
    name, committed = run_file(rig)
    with (rig.root / RUN_DIR / str(name)).open("ab") as file:
        file.write(scalar_records(range(3, 5), 200.0))  # a batch that never committed
    lost_name, _ = run_file(rig, F2_DIR)
    os.unlink(rig.root / F2_DIR / str(lost_name))
    rig = rig.restart()
    rig.files.crash("commit", "before")
    with pytest.raises(Crash):
        recover(rig.journal, [OWNER])
    rig = rig.restart()
    recover(rig.journal, [OWNER])
    assert run_file(rig) == (name, committed)
    assert rig.journal.runs(OWNER)["r2"].events_file is None
    rig.check_store_matches_disk(OWNER)


# -- moves ----------------------------------------------------------------------------------------

NEW_DIR = f"{EXP}/renamed"
CHILD = "child"


def with_tree(rig: Rig) -> dict[str, bytes]:
    """RUN with a tailed copy and a nested child run; returns every file under RUN_DIR by
    path relative to it."""
    with_copy(rig)
    sync_pass(rig.journal, 2, 100.0, run_id=CHILD, run_dir=f"{RUN_DIR}/{CHILD}")
    return tree(rig.root / RUN_DIR)


def tree(directory: Path) -> dict[str, bytes]:
    return {
        os.path.relpath(os.path.join(where, name), directory): Path(where, name).read_bytes()
        for where, _, names in os.walk(directory)
        for name in names
    }


def assert_moved(rig: Rig, files: dict[str, bytes], old: str = RUN_DIR, new: str = NEW_DIR) -> None:
    """Everything that was under `old` is under `new`, on disk and in every table."""
    assert not (rig.root / old).exists()
    assert tree(rig.root / new) == files
    dirs = {run.run_id: run.dir for run in rig.journal.runs(OWNER).values()}
    assert dirs == {RUN: new, CHILD: f"{new}/{CHILD}"}
    assert rig.journal.tails(OWNER)[COPY_ORIGIN].mirror_dir == f"{new}/artifacts"
    assert all(not path.startswith(old + "/") for path in rig.journal.store.files())
    assert rig.journal.store.moves() == []
    rig.check_store_matches_disk(OWNER)


def test_a_move_takes_runs_tails_and_files_along(tmp_path: Path) -> None:
    rig = Rig.open(tmp_path)
    files = with_tree(rig)
    rig.journal.move(OWNER, RUN_DIR, NEW_DIR)
    assert_moved(rig, files)
    sync_pass(rig.journal, 5, 200.0)
    assert steps_in(run_file(rig, NEW_DIR)[1]) == list(range(5))


def test_a_failed_rename_is_finished_by_the_next_settle(tmp_path: Path) -> None:
    rig = Rig.open(tmp_path)
    files = with_tree(rig)
    rig.files.fail("rename", errno.ENOSPC)
    with pytest.raises(WriteFault) as raised:
        rig.journal.move(OWNER, RUN_DIR, NEW_DIR)
    assert raised.value.cause == "ENOSPC"
    assert rig.journal.store.moves() == [(RUN_DIR, NEW_DIR)]
    assert tree(rig.root / RUN_DIR) == files
    with pytest.raises(WriteFault):
        sync_pass(rig.journal, 5, 200.0)
    assert list(rig.journal.faults()) == [OWNER]
    rig.files.heal()
    rig.journal.settle(OWNER)
    assert rig.journal.faults() == {}
    assert_moved(rig, files)


MOVE_CRASHES = [
    pytest.param("commit", 1, "before", id="recording-the-move"),
    pytest.param("commit", 1, "after", id="after-recording-the-move"),
    pytest.param("rename", 1, "before", id="before-the-rename"),
    pytest.param("rename", 1, "after", id="after-the-rename"),
    pytest.param("fsync_dir", 1, "after", id="after-the-dir-fsync"),
    pytest.param("commit", 2, "before", id="updating-the-tables"),
    pytest.param("commit", 2, "after", id="after-updating-the-tables"),
]


@pytest.mark.parametrize(("op", "nth", "when"), MOVE_CRASHES)
def test_a_crash_during_a_move_is_rolled_forward_by_recovery(
    tmp_path: Path, op: Any, nth: int, when: Any
) -> None:
    rig = Rig.open(tmp_path)
    files = with_tree(rig)
    rig.files.crash(op, when, nth=nth)
    with pytest.raises(Crash):
        rig.journal.move(OWNER, RUN_DIR, NEW_DIR)
    rig = rig.restart()
    recover(rig.journal, [OWNER])
    if (op, nth, when) == ("commit", 1, "before"):  # never recorded: nothing moved
        assert tree(rig.root / RUN_DIR) == files
        assert rig.journal.runs(OWNER)[RUN].dir == RUN_DIR
        rig.check_store_matches_disk(OWNER)
    else:
        assert_moved(rig, files)


def test_a_move_into_an_empty_directory_takes_the_files_along(tmp_path: Path) -> None:
    """An empty directory at the new place (a recovery removed the orphan file in it, a user
    made it) is not a move already done: the files go along, no run is left behind."""
    rig = Rig.open(tmp_path)
    files = with_tree(rig)
    (rig.root / NEW_DIR).mkdir()
    rig.journal.move(OWNER, RUN_DIR, NEW_DIR)
    assert_moved(rig, files)


# -- resets ---------------------------------------------------------------------------------------


def test_reset_run_forgets_what_was_written(tmp_path: Path) -> None:
    """Cursors, events file (row and file), tailed artifacts (rows and copies) go; the run and
    its directory stay; the next pass writes the run anew from its first point."""
    rig = Rig.open(tmp_path)
    copy = with_copy(rig)
    run = rig.journal.runs(OWNER)[RUN]
    with rig.journal.batch(OWNER) as batch:
        reset = batch.reset_run(run)
    assert rig.journal.runs(OWNER)[RUN] == reset
    assert (reset.events_file, reset.dir, reset.status) == (None, RUN_DIR, "")
    assert rig.journal.cursors(OWNER, RUN) == {}
    assert rig.journal.tails(OWNER) == {}
    assert rig.journal.store.files() == {}
    assert rig.events_files(RUN_DIR) == [] and not (rig.root / copy).exists()
    assert (rig.root / RUN_DIR).is_dir()
    rig.check_store_matches_disk(OWNER)
    sync_pass(rig.journal, 2, 500.0)
    assert run_file(rig)[1] == file_start(500.0) + scalar_records(range(2), 500.0)


def test_restart_tail_mirrors_again_into_a_new_copy(tmp_path: Path) -> None:
    rig = Rig.open(tmp_path)
    copy = with_copy(rig)
    tail = rig.journal.tails(OWNER)[COPY_ORIGIN]
    with rig.journal.batch(OWNER) as batch:
        restarted = batch.restart_tail(tail)
    stored = rig.journal.tails(OWNER)[COPY_ORIGIN]
    assert stored == restarted
    assert (stored.generation, stored.offset, stored.mirror_file) == (1, 0, None)
    assert (stored.mirror_dir, stored.kind) == (COPY_DIR, "tfevents")
    assert not (rig.root / copy).exists() and copy not in rig.journal.store.files()
    rig.check_store_matches_disk(OWNER)


@pytest.mark.parametrize("damage", ["shortened", "lost", "replaced-by-a-directory"])
def test_recovery_resets_a_run_whose_file_was_damaged(tmp_path: Path, damage: str) -> None:
    rig = Rig.open(tmp_path)
    copy = with_copy(rig)
    sync_pass(rig.journal, 3, 100.0, run_id="r2")
    name, data = run_file(rig)
    path = rig.root / RUN_DIR / str(name)
    if damage == "shortened":
        os.truncate(path, len(data) - 1)
    else:
        path.unlink()
        if damage == "replaced-by-a-directory":
            path.mkdir()
    rig = rig.restart()
    report = recover(rig.journal, [OWNER])
    assert report.runs_reset == 1
    run = rig.journal.runs(OWNER)[RUN]
    assert run.events_file is None and rig.journal.cursors(OWNER, RUN) == {}
    assert rig.journal.tails(OWNER) == {} and not (rig.root / copy).exists()
    assert steps_in(run_file(rig, F2_DIR)[1]) == [0, 1, 2]  # the other run is untouched
    if damage != "replaced-by-a-directory":
        assert rig.events_files(RUN_DIR) == []
        rig.check_store_matches_disk(OWNER)
    sync_pass(rig.journal, 4, 300.0)
    assert f"{RUN_DIR}/{rig.journal.runs(OWNER)[RUN].events_file}" in rig.journal.store.files()
    assert steps_in(rig.read(rig.journal.runs(OWNER)[RUN].events_path or "")) == [0, 1, 2, 3]


def test_recovery_restarts_a_tail_whose_copy_was_shortened(tmp_path: Path) -> None:
    rig = Rig.open(tmp_path)
    copy = with_copy(rig)
    os.truncate(rig.root / copy, 10)
    rig = rig.restart()
    assert recover(rig.journal, [OWNER]).runs_reset == 1
    tail = rig.journal.tails(OWNER)[COPY_ORIGIN]
    assert (tail.generation, tail.offset, tail.mirror_file) == (1, 0, None)
    assert not (rig.root / copy).exists()
    assert steps_in(run_file(rig)[1]) == [0, 1, 2]  # the run is untouched
    rig.check_store_matches_disk(OWNER)


def test_recovery_cuts_and_removes_only_in_owned_directories(tmp_path: Path) -> None:
    """Uncommitted bytes are cut and unknown events files removed under the owned sources; other
    files, and everything under a source not owned, are left alone."""
    rig = Rig.open(tmp_path)
    sync_pass(rig.journal, 3, 100.0)
    sync_pass(rig.journal, 3, 100.0, owner=OTHER)
    name, committed = run_file(rig)
    other_name, other = run_file(rig, f"{OTHER}/exp/{RUN}")
    extra = scalar_records(range(3, 5), 200.0)
    for path in (rig.root / RUN_DIR / str(name), rig.root / OTHER / "exp" / RUN / str(other_name)):
        with path.open("ab") as file:
            file.write(extra)
    orphan = rig.root / EXP / "r9" / "events.out.tfevents.1.host.1.1"
    foreign = rig.root / OTHER / "exp" / "events.out.tfevents.1.host.1.1"
    notes = rig.root / EXP / "notes.txt"
    for path in (orphan, foreign, notes):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    rig = rig.restart()
    report = recover(rig.journal, [OWNER])
    assert (report.truncated, report.bytes_dropped, report.orphans_removed) == (1, len(extra), 1)
    assert run_file(rig) == (name, committed)
    assert not orphan.exists() and foreign.exists() and notes.exists()
    assert run_file(rig, f"{OTHER}/exp/{RUN}") == (other_name, other + extra)
    rig.check_store_matches_disk(OWNER)


def test_a_bug_after_the_bytes_are_out_keeps_the_batch_and_never_writes_other_bytes(
    tmp_path: Path,
) -> None:
    """Not only disk errors: any failure once bytes may be on disk (here a cursor SQLite cannot
    hold) leaves the batch pending, named by its type, and no later batch writes at its offset."""
    rig = Rig.open(tmp_path)
    sync_pass(rig.journal, 3, 100.0)
    name, before = run_file(rig)
    poison = Cursor(4, MetricPoint(1, 2**64, 1.0))  # beyond SQLite's INTEGER
    with pytest.raises(WriteFault) as raised, rig.journal.batch(OWNER) as batch:
        batch.append(f"{RUN_DIR}/{name}", scalar_records(range(3, 4), 200.0))
        batch.put_cursors(OWNER, RUN, {TAG: poison})
    assert raised.value.cause == "OverflowError"
    _, written = run_file(rig)
    assert written == before + scalar_records(range(3, 4), 200.0)  # out, not committed
    for wall_time in (300.0, 400.0):  # every later pass is refused, nothing is written
        with pytest.raises(WriteFault):
            sync_pass(rig.journal, 6, wall_time)
    assert run_file(rig) == (name, written)
    assert list(rig.journal.faults()) == [OWNER]


def test_a_stream_gathers_blocks_into_one_batch_and_a_failed_block_adds_nothing(
    tmp_path: Path,
) -> None:
    rig = Rig.open(tmp_path)
    stream = rig.journal.stream(OWNER, flush_bytes=100, flush_blocks=10)
    with stream.batch() as batch:
        name = batch.create(RUN_DIR, file_start(1.0))
    with pytest.raises(EventsFileLostError), stream.batch() as batch:
        batch.append(f"{RUN_DIR}/missing", scalar_records(range(1), 1.0))
    with stream.batch() as batch:
        batch.append(f"{RUN_DIR}/{name}", scalar_records(range(1), 1.0))
    assert rig.events_files(RUN_DIR) == []  # nothing out before the flush
    with stream.batch() as batch:
        batch.append(f"{RUN_DIR}/{name}", scalar_records(range(1, 2), 1.0))  # past 100 bytes
    written = file_start(1.0) + scalar_records(range(2), 1.0)
    assert rig.read(f"{RUN_DIR}/{name}") == written
    assert rig.journal.store.files() == {f"{RUN_DIR}/{name}": len(written)}
    stream.flush()  # nothing open: nothing done
    assert [op for op, _ in rig.files.steps].count("commit") == 1


def test_a_file_discarded_in_the_batch_that_made_it_is_never_written(tmp_path: Path) -> None:
    rig = Rig.open(tmp_path)
    with rig.journal.batch(OWNER) as batch:
        name = batch.create(RUN_DIR, file_start(1.0))
        batch.discard_file(f"{RUN_DIR}/{name}", keep_above=OWNER)
        assert batch.bytes_written == 0
    assert "write_at" not in [op for op, _ in rig.files.steps]
    assert rig.events_files(RUN_DIR) == [] and rig.journal.store.files() == {}
    rig.check_store_matches_disk(OWNER)
