"""A batch checks each directory's path once, when it is built and again when it is written, and
lists each directory once: what a directory swapped for a link, or a name already taken on disk,
meets. In-process on temp files (helpers.failing_files), milliseconds each."""

from __future__ import annotations

import errno
import os
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.failing_files import Rig, file_start, scalar_records, scratch
from tbmirror.errors import MirrorError, UnsafePathError
from tbmirror.journal import WriteFault
from tbmirror.journal.files import ParallelSyncs
from tbmirror.mirror.events import EventsFileLostError

OWNER = "src"
RUN_DIR = f"{OWNER}/exp/r1"


@pytest.fixture
def tmp_path(tmp_path: Path) -> Iterator[Path]:
    with scratch(tmp_path) as directory:
        yield directory


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    rig = Rig.open(tmp_path)
    yield rig
    rig.journal.close()


def swap_for_link(directory: Path, target: Path) -> None:
    """Replace `directory` (made if missing) by a symbolic link to `target`."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.rename(directory.with_name(directory.name + ".moved"))
    directory.symlink_to(target, target_is_directory=True)


def test_a_directory_swapped_for_a_link_while_its_batch_is_built_is_refused_at_the_write(
    rig: Rig, tmp_path: Path
) -> None:
    """Checked when the batch is built, and again, once per directory, before its writes."""
    outside = tmp_path / "outside"
    outside.mkdir()
    with pytest.raises(WriteFault), rig.journal.batch(OWNER) as batch:
        batch.create(RUN_DIR, file_start(1.0), "events.out.tfevents.1.a")
        batch.create(RUN_DIR, file_start(1.0), "events.out.tfevents.1.b")
        swap_for_link(rig.root / RUN_DIR, outside)
    assert list(outside.iterdir()) == []
    assert "write_at" not in [op for op, _ in rig.files.steps]
    assert rig.journal.store.files() == {}


def test_a_link_out_of_the_root_in_place_of_a_written_directory_is_refused(
    rig: Rig, tmp_path: Path
) -> None:
    with rig.journal.batch(OWNER) as batch:
        name = batch.create(RUN_DIR, file_start(1.0))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / name).write_bytes(file_start(1.0))  # the same length: only the path tells
    swap_for_link(rig.root / RUN_DIR, outside)
    with pytest.raises(UnsafePathError), rig.journal.batch(OWNER) as batch:
        batch.append(f"{RUN_DIR}/{name}", scalar_records(range(3), 1.0))
    assert (outside / name).read_bytes() == file_start(1.0)


def test_a_name_taken_on_disk_is_refused_and_told_apart_from_an_empty_directory(
    rig: Rig, tmp_path: Path
) -> None:
    """The directory is listed once per batch; what the listing names is looked at closely."""
    run = rig.root / RUN_DIR
    run.mkdir(parents=True)
    (tmp_path / "outside").write_bytes(b"secret")
    (run / "link").symlink_to(tmp_path / "outside")
    (run / "dangling").symlink_to(tmp_path / "missing")
    (run / "empty-dir").mkdir()
    (run / "full-dir").mkdir()
    (run / "full-dir" / "x").write_bytes(b"")
    (run / "empty-file").write_bytes(b"")
    with rig.journal.batch(OWNER) as batch:
        for name in ("link", "dangling", "empty-dir", "full-dir", "empty-file"):
            with pytest.raises(MirrorError, match="exists already"):
                batch.create(RUN_DIR, file_start(1.0), name)
        occupied = {
            name: batch.occupied(f"{RUN_DIR}/{name}")
            for name in ("link", "dangling", "empty-dir", "full-dir", "empty-file", "free")
        }
        assert occupied == {"link": True, "dangling": True, "empty-dir": False,
                            "full-dir": True, "empty-file": True, "free": False}  # fmt: skip
        name = batch.create(RUN_DIR, file_start(1.0), "free")
        assert batch.occupied(f"{RUN_DIR}/{name}")  # this batch's own, before it is written
        with pytest.raises(MirrorError, match="exists already"):
            batch.create(RUN_DIR, file_start(1.0), "free")
    assert (tmp_path / "outside").read_bytes() == b"secret"
    assert (run / "free").read_bytes() == file_start(1.0)


def test_a_listing_that_fails_is_not_taken_for_an_empty_directory(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of file descriptors (or an I/O error) when the directory is listed: the name is not
    taken for free, so a committed file of that name is not written over."""
    with rig.journal.batch(OWNER) as batch:
        batch.create(RUN_DIR, file_start(1.0), "copy.tfevents")
    committed = rig.read(f"{RUN_DIR}/copy.tfevents")

    def out_of_descriptors(path: object) -> list[str]:
        raise OSError(errno.EMFILE, "Too many open files")

    with monkeypatch.context() as patched:
        patched.setattr(os, "listdir", out_of_descriptors)
        for attempt in ("create", "occupied"):
            with (
                pytest.raises(OSError, match="Too many open files"),
                rig.journal.batch(OWNER) as batch,
            ):
                if attempt == "create":
                    batch.create(RUN_DIR, b"\0" * 40, "copy.tfevents")
                else:
                    batch.occupied(f"{RUN_DIR}/copy.tfevents")
    assert rig.read(f"{RUN_DIR}/copy.tfevents") == committed
    assert rig.journal.store.files() == {f"{RUN_DIR}/copy.tfevents": len(committed)}


def test_a_name_listed_in_another_case_or_form_is_asked_of_the_file_system(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A case-insensitive root (CIFS, casefolded ext4) takes `Theirs` and `THEIRS` for one name,
    as a normalising one takes both Unicode forms of `é`: a name listed in another case or form
    is looked up on disk. Here, a file system that tells them apart allows the new name; one
    that does not (stood in for by its `lexists`: no such root can be mounted here) refuses it."""
    run = rig.root / RUN_DIR
    run.mkdir(parents=True)
    (run / "Theirs.tfevents").write_bytes(b"theirs")
    (run / "e\u0301.tfevents").write_bytes(b"decomposed")

    def folded(name: str) -> str:
        return unicodedata.normalize("NFC", name).casefold()

    def insensitive_lexists(path: str | os.PathLike[str]) -> bool:
        name, parent = Path(path).name, Path(path).parent
        return parent.is_dir() and folded(name) in {folded(n) for n in os.listdir(parent)}

    with monkeypatch.context() as patched:
        patched.setattr(os.path, "lexists", insensitive_lexists)
        with rig.journal.batch(OWNER) as batch:
            for name in ("THEIRS.tfevents", "\u00e9.tfevents"):
                assert batch.occupied(f"{RUN_DIR}/{name}")
                with pytest.raises(MirrorError, match="exists already"):
                    batch.create(RUN_DIR, file_start(1.0), name)
    with rig.journal.batch(OWNER) as batch:
        for name in ("THEIRS.tfevents", "\u00e9.tfevents"):
            assert not batch.occupied(f"{RUN_DIR}/{name}")
            batch.create(RUN_DIR, file_start(1.0), name)
    assert (run / "Theirs.tfevents").read_bytes() == b"theirs"
    assert (run / "e\u0301.tfevents").read_bytes() == b"decomposed"
    assert rig.read(f"{RUN_DIR}/THEIRS.tfevents") == file_start(1.0)


def test_a_directory_swapped_for_a_link_before_appended_bytes_are_written_faults_the_batch(
    rig: Rig, tmp_path: Path
) -> None:
    """The batch is kept (pending) and the fault said, as for any failed write, so that its owner
    reads back what is committed: no byte it had taken is skipped."""
    with rig.journal.batch(OWNER) as batch:
        name = batch.create(RUN_DIR, file_start(1.0))
    outside = tmp_path / "outside"
    outside.mkdir()
    with pytest.raises(WriteFault), rig.journal.batch(OWNER) as batch:
        batch.append(f"{RUN_DIR}/{name}", scalar_records(range(3), 1.0))
        swap_for_link(rig.root / RUN_DIR, outside)
    assert list(outside.iterdir()) == []
    assert rig.journal.store.files() == {f"{RUN_DIR}/{name}": len(file_start(1.0))}
    with pytest.raises(WriteFault):
        rig.journal.settle(OWNER)  # still in the way: still pending


def test_a_file_swapped_for_a_link_is_lost_not_followed(rig: Rig, tmp_path: Path) -> None:
    with rig.journal.batch(OWNER) as batch:
        name = batch.create(RUN_DIR, file_start(1.0))
    outside = tmp_path / "outside"
    outside.write_bytes(file_start(1.0))
    (rig.root / RUN_DIR / name).unlink()
    (rig.root / RUN_DIR / name).symlink_to(outside)
    with pytest.raises(EventsFileLostError), rig.journal.batch(OWNER) as batch:
        batch.append(f"{RUN_DIR}/{name}", scalar_records(range(3), 1.0))
    assert outside.read_bytes() == file_start(1.0)


def test_new_files_of_many_directories_are_written_with_one_check_each(rig: Rig) -> None:
    """Every file written, every new directory's entries made durable once."""
    with rig.journal.batch(OWNER) as batch:
        for job in range(3):
            for index in range(4):
                batch.create(f"{OWNER}/job-{job}", file_start(1.0), f"events.out.tfevents.{index}")
    steps = rig.files.steps
    assert sum(op == "write_at" for op, _ in steps) == 12
    assert sum(op == "fsync" for op, _ in steps) == 12
    assert sum(op == "make_dirs" for op, _ in steps) == 3
    synced_dirs = sorted(os.path.relpath(path, rig.root) for op, path in steps if op == "fsync_dir")
    assert synced_dirs == [".", OWNER, *(f"{OWNER}/job-{job}" for job in range(3))]
    rig.check_store_matches_disk(OWNER)


def test_parallel_syncs_report_each_paths_outcome_in_order(tmp_path: Path) -> None:
    paths = [tmp_path / f"f{index}" for index in range(40)]
    synced: list[Path] = []

    def sync(path: Path) -> None:
        if path.name in ("f3", "f17"):
            raise OSError(errno.EIO, "injected", str(path))
        synced.append(path)

    syncs = ParallelSyncs()
    try:
        outcomes = syncs.each(sync, paths)
    finally:
        syncs.close()
    assert [path for path, _ in outcomes] == paths
    failed = [path.name for path, outcome in outcomes if outcome.exception() is not None]
    assert failed == ["f3", "f17"] and sorted(synced) == sorted(set(paths) - {paths[3], paths[17]})
