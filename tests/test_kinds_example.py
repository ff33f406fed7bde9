"""The example kind of docs/architecture.md ("Adding a kind of source") works as written: its code
blocks are applied to a copy of the package (new files written, edited lines replaced), and the
real `tbmirror check` and `tbmirror sync` of that copy mirror two CSV files exactly once."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
from tensorboard.compat.proto.event_pb2 import Event

from conftest import REPO, tbmirror

pytestmark = pytest.mark.e2e  # runs `tbmirror check` and `sync` on a copy of the package

DOC = REPO / "docs" / "architecture.md"
BLOCK = re.compile(
    r"\*\*`(?P<path>[^`]+)`\*\* \((?P<how>new|edit)[^)]*\):\n\n```python\n(?P<code>.*?)```", re.S
)
EXAMPLE_FILES = {
    "daemon/tbmirror/config/csvfiles.py": "new",
    "daemon/tbmirror/config/schema.py": "edit",
    "daemon/tbmirror/kinds/csvfiles.py": "new",
    "daemon/tbmirror/app.py": "edit",
}


def _key(line: str) -> str:
    """What an edited line replaces: the line of the file that starts the same way (up to
    `import` in an import, up to `=` in an assignment)."""
    if " import " in line:
        return line.split(" import ")[0] + " import "
    return line.split("=")[0] + "="


def _edit(text: str, lines: list[str], where: str) -> str:
    """`text` with each of `lines` in place of the line it replaces (a new import goes before the
    first tbmirror import)."""
    rows = text.splitlines()
    for line in lines:
        matches = [index for index, row in enumerate(rows) if row.startswith(_key(line))]
        if not matches and line.startswith("from tbmirror."):
            first = min(index for index, row in enumerate(rows) if row.startswith("from tbmirror."))
            rows.insert(first, line)
            continue
        assert len(matches) == 1, f"{where}: {line!r} should replace one line, found {matches}"
        rows[matches[0]] = line
    return "\n".join(rows) + "\n"


@pytest.fixture
def package_with_example(tmp_path: Path) -> Path:
    """A copy of the package with the documented kind added; its parent goes on PYTHONPATH."""
    copy = tmp_path / "package"
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "daemon" / "tbmirror", copy / "tbmirror", ignore=skip)
    blocks = list(BLOCK.finditer(DOC.read_text()))
    assert {block["path"]: block["how"] for block in blocks} == EXAMPLE_FILES, "the doc changed"
    for block in blocks:
        target = copy / block["path"].removeprefix("daemon/")
        if block["how"] == "new":
            assert not target.exists(), f"{block['path']} already exists in the package"
            target.write_text(block["code"])
        else:
            lines = block["code"].strip().splitlines()
            target.write_text(_edit(target.read_text(), lines, block["path"]))
    return copy


def _scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of every `tag` scalar in a run directory's events files, in file order."""
    found = []
    for path in sorted(run_dir.glob("*tfevents*")):
        for record in RawEventFileLoader(str(path)).Load():
            event = Event.FromString(record)
            found += [(event.step, v.simple_value) for v in event.summary.value if v.tag == tag]
    return found


def test_the_documented_kind_registers_and_mirrors_exactly_once(
    tmp_path: Path, package_with_example: Path
) -> None:
    env = {"PYTHONPATH": str(package_with_example)}
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "train.csv").write_text("step,loss\n0,1.0\n1,0.5\n")
    (logs / "eval.csv").write_text("step,accuracy\n0,0.25\n")
    root = tmp_path / "root"
    source = {"name": "local", "type": "csvfiles", "poll_interval": "1s",
              "files": [str(logs / "train.csv"), str(logs / "eval.csv")]}  # fmt: skip
    config = tmp_path / "config.yaml"
    document = {"mirror": {"root": str(root), "state": str(tmp_path / "state.db")}}
    config.write_text(yaml.safe_dump({**document, "sources": [source]}))

    imported = subprocess.run(
        [sys.executable, "-c", "import tbmirror; print(tbmirror.__file__)"],
        capture_output=True, text=True, env={**os.environ, **env}, check=True,
    )  # fmt: skip
    assert imported.stdout.startswith(str(package_with_example)), "the copy is not what runs"
    where = tbmirror("check", "--offline", "--config", str(config), env=env)
    assert where.returncode == 0, where.stdout + where.stderr
    assert "local (csvfiles)" in where.stdout, where.stdout
    checked = tbmirror("check", "--config", str(config), env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "2 files" in checked.stdout, checked.stdout

    synced = tbmirror("sync", "--config", str(config), env=env)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert _scalars(root / "local" / "train", "loss") == [(0, 1.0), (1, 0.5)]
    assert _scalars(root / "local" / "eval", "accuracy") == [(0, 0.25)]

    with (logs / "train.csv").open("a") as log:
        log.write("2,0.125\n")
    synced = tbmirror("sync", "--config", str(config), env=env)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert _scalars(root / "local" / "train", "loss") == [(0, 1.0), (1, 0.5), (2, 0.125)]
    assert _scalars(root / "local" / "eval", "accuracy") == [(0, 0.25)]

    (logs / "eval.csv").unlink()
    missing = tbmirror("check", "--config", str(config), env=env)
    assert missing.returncode != 0 and f"missing: {logs / 'eval.csv'}" in missing.stdout


def test_without_the_example_the_kind_is_unknown(tmp_path: Path) -> None:
    """The installed package does not know `csvfiles`: the test above ran the copy."""
    config = tmp_path / "config.yaml"
    source = {"name": "local", "type": "csvfiles", "files": [str(tmp_path / "a.csv")]}
    document = {"mirror": {"root": str(tmp_path / "root"), "state": str(tmp_path / "state.db")}}
    config.write_text(yaml.safe_dump({**document, "sources": [source]}))
    checked = tbmirror("check", "--offline", "--config", str(config))
    assert checked.returncode != 0
    assert "sources[0].type: expected one of 'mlflow', 'uploads'" in checked.stderr, checked.stderr
