"""The shipped systemd unit passes `systemd-analyze verify` with no warning at all."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.e2e  # starts real processes (tests/conftest.py, REAL_PROCESS_FIXTURES)

UNIT = REPO / "systemd" / "tbmirror.service"


def verify(text: str, directory: Path) -> str:
    """systemd-analyze verify on `text` with ExecStart pointed at this checkout's tbmirror."""
    executable = Path(sys.executable).with_name("tbmirror")
    unit = directory / "tbmirror.service"
    unit.write_text(text.replace("/opt/tbmirror/venv/bin/tbmirror", str(executable)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    return (result.stdout + result.stderr).strip() + ("" if result.returncode == 0 else " (failed)")


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_unit_verifies_cleanly(tmp_path: Path) -> None:
    text = UNIT.read_text()
    for line in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "Restart=on-failure",
                 "StateDirectory=tbmirror", "KillMode=control-group", "WatchdogSec="):  # fmt: skip
        assert line in text
    assert verify(text, tmp_path) == ""
    # The check can fail: a misspelt key is reported.
    assert "Unknown key" in verify(text.replace("ProtectSystem=", "ProtectSystm="), tmp_path)
