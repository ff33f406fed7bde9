"""The mirror writer: the only code that creates, appends to, moves or removes mirrored files.

Relative run directories come from the sync engine; every path is resolved through MirrorLayout,
so nothing is written outside the root. Each run directory has one active events file.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tensorboard.compat.proto.event_pb2 import Event

from tbmirror.mirror import events, summaries
from tbmirror.mirror.layout import MirrorLayout


@dataclass(frozen=True)
class Appended:
    """Where an append went: the events file name and its new length, and the bytes written."""

    file_name: str
    length: int
    written: int


class MirrorWriter:
    def __init__(self, layout: MirrorLayout) -> None:
        self.layout = layout

    def append(
        self, run_dir: str, file_name: str | None, committed: int, payloads: list[bytes]
    ) -> Appended:
        """Append `payloads` to the run's active file at its committed length, durably.

        With no active file (`file_name` None) a new one is created, starting with the
        file_version record, named after any older file in the directory.
        """
        directory = self.layout.resolve(run_dir)
        if file_name is None:
            directory.mkdir(parents=True, exist_ok=True)
            newest = max((events.file_secs(p.name) for p in _event_files(directory)), default=0)
            file_name = events.new_file_name(not_before_secs=newest + 1 if newest else 0)
            payloads = [summaries.file_version(time.time()), *payloads]
            committed = 0
        return self._write(directory, file_name, committed, events.frame_all(payloads))

    def append_records(self, run_dir: str, file_name: str, committed: int, data: bytes) -> Appended:
        """Append already framed, checked records (a copied events file) at `committed`, durably.

        The file is created (exclusively) when `committed` is 0.
        """
        directory = self.layout.resolve(run_dir)
        if committed == 0:
            directory.mkdir(parents=True, exist_ok=True)
        return self._write(directory, file_name, committed, data)

    def _write(self, directory: Path, file_name: str, committed: int, data: bytes) -> Appended:
        length = events.append_bytes(directory / file_name, committed, data)
        if committed == 0:
            events.fsync_directory(directory)
        return Appended(file_name, length, length - committed)

    def cut_back(self, relative_path: str, committed: int) -> None:
        """Undo an append that will not be committed: truncate, or remove a new file."""
        path = self.layout.resolve(relative_path)
        if committed == 0:
            path.unlink(missing_ok=True)
        elif path.exists():
            events.truncate(path, committed)

    def occupied(self, relative_dir: str) -> bool:
        """True if something non-empty (a file, or a directory with entries) is at that path."""
        path = self.layout.resolve(relative_dir)
        if path.is_dir():
            return any(path.iterdir())
        return path.exists()

    def move(self, old_dir: str, new_dir: str) -> None:
        """Rename a run (or experiment) directory, with everything nested in it."""
        old, new = self.layout.resolve(old_dir), self.layout.resolve(new_dir)
        if not old.exists():
            return
        new.parent.mkdir(parents=True, exist_ok=True)
        os.rename(old, new)
        events.fsync_directory(new.parent)
        if old.parent != new.parent:
            events.fsync_directory(old.parent)

    def remove_file(self, relative_path: str, keep_above: str) -> None:
        """Remove one mirrored file, then every directory it leaves empty below `keep_above`."""
        path = self.layout.resolve(relative_path)
        path.unlink(missing_ok=True)
        self.prune(str(Path(relative_path).parent), keep_above)

    def prune(self, run_dir: str, keep_above: str) -> None:
        """Remove `run_dir` and its ancestors while they are empty, stopping at `keep_above`."""
        stop = self.layout.resolve(keep_above)
        directory = self.layout.resolve(run_dir)
        while directory != stop and stop in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent

    def remove_tree(self, relative_dir: str) -> None:
        shutil.rmtree(self.layout.resolve(relative_dir), ignore_errors=True)

    def scalars(self, run_dir: str, tag: str) -> list[tuple[float, bytes]]:
        """(wall_time, float32_bits(value)) of every `tag` scalar already in the run's files."""
        found: list[tuple[float, bytes]] = []
        wanted = summaries.clean_tag(tag)
        for path in sorted(_event_files(self.layout.resolve(run_dir))):
            for record in events.iter_records(path.read_bytes()):
                event = Event.FromString(record.payload)
                for value in event.summary.value:
                    if value.tag == wanted and value.WhichOneof("value") == "simple_value":
                        found.append((event.wall_time, float32_bits(value.simple_value)))
        return found


def float32_bits(value: float) -> bytes:
    """A value as TensorBoard stores it (float32), as bytes: NaN-safe for matching."""
    with np.errstate(over="ignore"):
        single = np.float32(value)
    return (np.float32(np.nan) if np.isnan(single) else single).tobytes()


def _event_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return [p for p in directory.iterdir() if p.is_file() and "tfevents" in p.name]
