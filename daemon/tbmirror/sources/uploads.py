"""An upload directory: the files training jobs write into it, found and read safely.

`UploadTree` decides which files are mirrored and as what (tfevents, CSV, JSON lines), lists them
and opens them for reading (`LocalFile`) without ever leaving the tree: symlinks are not followed
at all (one that leads out of the tree is reported; one inside would only mirror a file twice),
and an opened file's real path is checked. It reads; it never writes.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

from tbmirror.config import UploadsSourceSettings
from tbmirror.errors import UnsafePathError

Kind = Literal["tfevents", "csv", "jsonl"]
Problem = Callable[[str, str], None]  # (relative path, what is wrong)


@dataclass(frozen=True)
class UploadFile:
    """A file to mirror: its path relative to the tree, its real path inside the tree, its kind."""

    relative: str
    real: str
    kind: Kind


class UploadTree:
    """The watched directory of one uploads source."""

    def __init__(self, settings: UploadsSourceSettings) -> None:
        self.settings = settings
        self.root = os.path.abspath(settings.path)
        self._patterns: list[tuple[Kind, list[str]]] = [
            ("tfevents", settings.tfevents_patterns),
            ("csv", settings.csv_patterns),
            ("jsonl", settings.jsonl_patterns),
        ]

    @property
    def real_root(self) -> str:
        return os.path.realpath(self.root)

    def kind_of(self, relative: str) -> Kind | None:
        """What `relative` is mirrored as, or None (not included, excluded or no known kind)."""
        if not _matches(relative, self.settings.include) or _matches(
            relative, self.settings.exclude
        ):
            return None
        for kind, patterns in self._patterns:
            if _matches(relative, patterns):
                return kind
        return None

    def relative(self, path: str) -> str | None:
        """`path` (absolute, as a watcher reports it) relative to the tree; None if outside."""
        relative = os.path.relpath(os.path.abspath(path), self.root)
        if relative == "." or relative.startswith(".." + os.sep) or relative == "..":
            return None
        return relative.replace(os.sep, "/")

    def scan(self, under: str = "", problem: Problem | None = None) -> Iterator[UploadFile]:
        """Every file to mirror at or below the relative directory `under`.

        Symlinks that lead out of the tree, and directories that cannot be read, are reported to
        `problem`; no symlink is followed.
        """
        start = self.resolve(under) if under else self.real_root
        if start is None or not os.path.isdir(start):
            return
        pending = [(under, start)]
        while pending:
            relative_dir, real_dir = pending.pop()
            try:
                entries = sorted(os.scandir(real_dir), key=lambda entry: entry.name)
            except OSError as error:
                _report(problem, relative_dir or ".", error)
                continue
            for entry in entries:
                relative = f"{relative_dir}/{entry.name}" if relative_dir else entry.name
                try:
                    if entry.is_symlink():
                        if not self._inside(os.path.realpath(entry.path)):
                            _report(problem, relative, "symlink leads out of the upload directory")
                        continue
                    mode = entry.stat(follow_symlinks=False).st_mode
                except OSError as error:
                    _report(problem, relative, error)
                    continue
                if stat.S_ISDIR(mode):
                    pending.append((relative, entry.path))
                elif stat.S_ISREG(mode):
                    kind = self.kind_of(relative)
                    if kind is not None:
                        yield UploadFile(relative, entry.path, kind)

    def file(self, relative: str) -> UploadFile | None:
        """The file at `relative` if it is one to mirror and (its real path) is inside the tree."""
        kind = self.kind_of(relative)
        real = self.resolve(relative) if kind else None
        if kind is None or real is None or not os.path.isfile(real):
            return None
        return UploadFile(relative, real, kind)

    def resolve(self, relative: str) -> str | None:
        """The real path of `relative`, or None if it leaves the tree or passes a symlink."""
        real_root = self.real_root
        path = os.path.normpath(os.path.join(real_root, relative))
        if os.path.realpath(path) != path or not _below(real_root, path):
            return None
        return path

    def _inside(self, real: str) -> bool:
        return _below(self.real_root, real)


class LocalFile:
    """A read-only handle on one upload file (a `tailing.FileReader`); close it after use.

    Size and identity are those of the opened file when it was opened. Whatever was swapped on
    the way (a parent directory replaced by a symlink, the file by a FIFO or a device), the file
    opened is checked to be a regular file inside `real_root` (on Linux, through
    /proc/self/fd), else UnsafePathError. Opening never blocks (O_NONBLOCK: a FIFO without a
    writer would hold open() forever); on a regular file that flag changes nothing.
    """

    def __init__(self, real_path: str, real_root: str) -> None:
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        self._fd = os.open(real_path, flags)
        try:
            info = os.fstat(self._fd)
            if not stat.S_ISREG(info.st_mode):
                raise UnsafePathError(f"{real_path} is not a regular file")
            os.set_blocking(self._fd, True)
            opened = _opened_path(self._fd)
            if opened is not None and os.path.commonpath([real_root, opened]) != real_root:
                raise UnsafePathError(f"{real_path} led out of the upload directory to {opened}")
        except BaseException:
            os.close(self._fd)
            raise
        self.size = info.st_size
        self.identity: str | None = f"{info.st_dev}:{info.st_ino}"

    def read(self, start: int, end: int) -> bytes:
        chunks = []
        position = start
        while position < end:
            chunk = os.pread(self._fd, min(end - position, 1 << 24), position)
            if not chunk:
                break
            chunks.append(chunk)
            position += len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> LocalFile:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _below(real_root: str, real: str) -> bool:
    """Whether the real path `real` is inside (not at) the real path `real_root`."""
    return real != real_root and os.path.commonpath([real_root, real]) == real_root


def _opened_path(fd: int) -> str | None:
    """The path the kernel has for an open file (Linux); None where that cannot be told."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def _matches(relative: str, patterns: list[str]) -> bool:
    name = relative.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(relative, p) or fnmatch.fnmatchcase(name, p) for p in patterns)


def _report(problem: Problem | None, relative: str, error: OSError | str) -> None:
    if problem is not None:
        message = error if isinstance(error, str) else (error.strerror or str(error))
        problem(relative, message)
