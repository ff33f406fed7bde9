"""Safe paths: sanitised components and a root that nothing escapes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tbmirror.errors import UnsafePathError
from tbmirror.mirror.layout import (
    MAX_COMPONENT_BYTES,
    MirrorLayout,
    disambiguate,
    join,
    sanitize_component,
)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("run-1", "run-1"),
        ("..", "_."),
        (".", "_"),
        ("../../etc", "_._.._etc"),
        ("a/b\\c", "a_b_c"),
        ("nul\x00byte", "nul_byte"),
        ("  spaced  ", "spaced"),
        ("", "_"),
        ("   ", "_"),
        (".hidden", "_hidden"),
        ("zero\u200bwidth", "zero_width"),
        ("ünïcödé 损失", "ünïcödé 损失"),
        ("e\u0301", "é"),
    ],
)
def test_sanitize_component(name: str, expected: str) -> None:
    assert sanitize_component(name) == expected


def test_long_names_are_bounded_in_bytes_on_a_character_boundary() -> None:
    for name in ("x" * 5000, "损" * 5000, "é" * 999):
        component = sanitize_component(name)
        assert 0 < len(component.encode()) <= MAX_COMPONENT_BYTES
        component.encode("utf-8")
    suffixed = disambiguate(sanitize_component("损" * 5000), "0123456789abcdef")
    assert suffixed.endswith("-01234567") and len(suffixed.encode()) <= MAX_COMPONENT_BYTES


def test_printable_ascii_names_are_cleaned_as_any_other() -> None:
    """The shortcut for printable ASCII names (no normalisation, no category look-ups) gives
    what the rule says: every character of the name that is not a separator kept."""
    for code in range(0x20, 0x7F):
        name = f"a{chr(code)}b"
        expected = "a_b" if chr(code) in "/\\" else name
        assert sanitize_component(name) == expected
    assert sanitize_component(" .x/y\\z ") == "_x_y_z"
    for control in ("\t", "\x7f", "\x1b"):  # not printable: the general path
        assert sanitize_component(f"a{control}b") == "a_b"


def test_join_refuses_unsafe_components() -> None:
    assert join("team", "exp", "run") == "team/exp/run"
    for bad in ("..", ".", "", "a/b", "a\\b", "a\x00b"):
        with pytest.raises(UnsafePathError):
            join("team", bad)
    with pytest.raises(UnsafePathError):
        join()


def test_resolve_stays_inside_the_root_even_through_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "team").mkdir(parents=True)
    layout = MirrorLayout(root)
    assert layout.resolve("team/exp/run") == root / "team" / "exp" / "run"
    for bad in ("../x", "/etc/passwd", "team/../../x"):
        with pytest.raises(UnsafePathError):
            layout.resolve(bad)
    os.symlink(tmp_path, root / "team" / "escape")
    with pytest.raises(UnsafePathError, match="outside the mirror root"):
        layout.resolve("team/escape/run")


def test_a_symlinked_run_directory_or_file_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "team" / "exp").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, root / "team" / "exp" / "run")
    os.symlink(outside / "file", root / "team" / "exp" / "events.out.tfevents.1")
    layout = MirrorLayout(root)
    for relative in ("team/exp/run", "team/exp/events.out.tfevents.1"):
        with pytest.raises(UnsafePathError):
            layout.resolve(relative)


def test_resolve_judges_every_path_as_realpath_does(tmp_path: Path) -> None:
    """resolve resolves only the components below the root (the root's real path first): with
    links inside and out, dangling and chained, behind a symlinked root, it accepts and refuses
    exactly the paths whose os.path.realpath is inside the root."""
    real_root = tmp_path / "real-root"
    (real_root / "team" / "exp").mkdir(parents=True)
    (real_root / "team" / "file").write_bytes(b"")
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(real_root, tmp_path / "root")  # the configured root is a link
    os.symlink("exp", real_root / "team" / "inside")  # relative, inside
    os.symlink(real_root / "team" / "inside", real_root / "team" / "chained")
    os.symlink(outside, real_root / "team" / "out")
    os.symlink(tmp_path / "missing", real_root / "team" / "dangling")
    os.symlink("../..", real_root / "team" / "up")
    layout = MirrorLayout(tmp_path / "root")
    for relative in ("team", "team/exp/run", "team/inside/run", "team/chained/x/y", "team/out/x",
                     "team/dangling", "team/up", "team/up/real-root/team", "team/file/x",
                     "team/nothing/x"):  # fmt: skip
        real = os.path.realpath(tmp_path / "root" / relative)
        inside = os.path.commonpath([real, real_root]) == str(real_root) and real != str(real_root)
        if inside:
            assert layout.resolve(relative) == tmp_path / "root" / relative
        else:
            with pytest.raises(UnsafePathError):
                layout.resolve(relative)
