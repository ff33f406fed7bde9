"""Safe paths under the mirror root.

Every directory name tbmirror derives from outside input (source, experiment and run names) goes
through `sanitize_component`, and every path it touches goes through `MirrorLayout.resolve`, which
refuses anything that would leave the root. Relative paths are POSIX strings ("team/exp/run").
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path, PurePosixPath

from tbmirror.errors import UnsafePathError

MAX_COMPONENT_BYTES = 120
_REPLACEMENT = "_"
_FORBIDDEN = {"/", "\\"}


def sanitize_component(name: str) -> str:
    """Turn any string into one safe, non-empty directory name.

    NFC-normalised; `/`, `\\`, NUL, control, format and unpaired-surrogate characters become `_`;
    surrounding white space is dropped; a leading `.` becomes `_` (so neither `.`, `..` nor a
    hidden directory can result); at most MAX_COMPONENT_BYTES bytes of UTF-8.
    """
    if name.isascii() and name.isprintable():  # the usual name: NFC already, no C* character
        cleaned = name.replace("/", _REPLACEMENT).replace("\\", _REPLACEMENT).strip()
    else:
        text = unicodedata.normalize("NFC", name)
        cleaned = "".join(
            _REPLACEMENT
            if ch in _FORBIDDEN or unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn")
            else ch
            for ch in text
        ).strip()
    if cleaned.startswith("."):
        cleaned = _REPLACEMENT + cleaned[1:]
    return _truncate_utf8(cleaned, MAX_COMPONENT_BYTES) or _REPLACEMENT


def disambiguate(component: str, identifier: str, width: int = 8) -> str:
    """`component` made distinct by a suffix of `identifier`'s first `width` characters."""
    suffix = "-" + sanitize_component(identifier)[:width]
    return _truncate_utf8(component, MAX_COMPONENT_BYTES - len(suffix.encode())) + suffix


def _truncate_utf8(text: str, limit: int) -> str:
    encoded = text.encode("utf-8")
    if len(encoded) <= limit:
        return text
    return encoded[:limit].decode("utf-8", errors="ignore").rstrip()


def join(*components: str) -> str:
    """Join already-sanitised components into a relative path, refusing anything unsafe."""
    if not components:
        raise UnsafePathError("no path components")
    for component in components:
        if (
            not component
            or component in (".", "..")
            or "/" in component
            or "\\" in component
            or "\x00" in component
        ):
            raise UnsafePathError(f"unsafe path component {component!r}")
    return "/".join(components)


ARCHIVE = ".archive"  # first component of archived paths (sanitised names never start with ".")


class MirrorLayout:
    """Maps relative mirror paths to absolute ones, guaranteeing they stay inside the root, or,
    for paths under ARCHIVE (`.archive/<source>/...`), inside the archive."""

    def __init__(self, root: Path, archive: Path | None = None) -> None:
        self.root = Path(os.path.abspath(root))
        self.archive = Path(os.path.abspath(archive)) if archive else None
        self._real_bases: dict[Path, str] = {}  # the root's and the archive's real paths

    def _real_base(self, base: Path) -> str:
        """The real path of the root or the archive, found once (the first time it exists): the
        anchor that every path's real path must stay below."""
        real = self._real_bases.get(base)
        if real is None:
            real = os.path.realpath(base)
            if os.path.isdir(real):
                self._real_bases[base] = real
        return real

    def resolve(self, relative: str) -> Path:
        """Absolute path of `relative`; raises UnsafePathError if it would leave the root (or
        the archive)."""
        pure = PurePosixPath(relative)
        parts = pure.parts
        if not parts or pure.is_absolute():
            raise UnsafePathError(f"not a relative mirror path: {relative!r}")
        base, name = self.root, "the mirror root"
        if parts[0] == ARCHIVE:
            if self.archive is None or len(parts) < 2:
                raise UnsafePathError(f"{relative!r}: no archive is configured")
            base, name, parts = self.archive, "the archive", parts[1:]
        join(*parts)
        path = base.joinpath(*parts)
        real_base = self._real_base(base)
        real_path = _realpath_below(real_base, parts)
        if real_path == real_base or os.path.commonpath([real_base, real_path]) != real_base:
            raise UnsafePathError(f"{relative!r} resolves outside {name}")
        return path


class CheckedPaths:
    """Absolute paths of `layout`, each directory checked (`MirrorLayout.resolve`) once: for a
    span in which nothing but its owner changes the directories it names (one batch). A file's
    path is its checked directory joined with its name, which is not checked for a link: what
    opens it must not follow one (O_NOFOLLOW, as the journal's file layer opens)."""

    def __init__(self, layout: MirrorLayout) -> None:
        self.layout = layout
        self._directories: dict[str, Path] = {}

    def directory(self, relative_dir: str) -> Path:
        """`layout.resolve(relative_dir)`, checked the first time only."""
        directory = self._directories.get(relative_dir)
        if directory is None:
            directory = self._directories[relative_dir] = self.layout.resolve(relative_dir)
        return directory

    def file(self, relative: str) -> Path:
        """The path of the file `relative`, its directory checked once (`directory`)."""
        relative_dir, _, name = relative.rpartition("/")
        if not relative_dir:
            return self.layout.resolve(relative)
        return self.directory(relative_dir) / join(name)


def _realpath_below(real_base: str, parts: tuple[str, ...]) -> str:
    """os.path.realpath of `parts` below `real_base`, itself a real path: the parts appended when
    none of them is a symbolic link (one lstat each), realpath's own answer otherwise."""
    path = real_base
    for part in parts:
        path = os.path.join(path, part)
        if os.path.islink(path):
            return os.path.realpath(os.path.join(real_base, *parts))
    return path


def archived(relative: str) -> str:
    """Where a root path goes in the archive."""
    return f"{ARCHIVE}/{relative}"


def is_archived(relative: str) -> bool:
    return relative.split("/", 1)[0] == ARCHIVE


def within(relative: str, directory: str) -> bool:
    """Whether `relative` is `directory` or below it."""
    return relative == directory or relative.startswith(directory + "/")


def owner_of(relative: str) -> str:
    """The source a root or archive path belongs to (its first component below either)."""
    parts = relative.split("/")
    return parts[1] if parts[0] == ARCHIVE and len(parts) > 1 else parts[0]
