"""Kill a `tbmirror` process at an exact step of the journal's protocol.

The package's test hook (`tbmirror.journal.journal.protocol_step`): with
`TBMIRROR_TEST_STOP_AT=<step>` in its environment a process stops itself (SIGSTOP) the first time
it reaches `step`; `kill_at_step` waits for that (with a deadline), then SIGKILLs it. So a
test that needs a kill between an append and its commit gets one every time, not by chance.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

BATCH_STEPS = ("batch_written", "batch_synced", "batch_committed")  # in protocol order


def process_state(pid: int) -> str:
    """The state letter of /proc/<pid>/stat (R, S, T for stopped, Z for exited, ...)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0]


def kill_at_step(
    command: list[str], step: str, log_path: Path, timeout: float = 120
) -> subprocess.Popen[bytes]:
    """Start `command` (its output appended to `log_path`), wait until it stops itself at `step`,
    SIGKILL it. Fails, with the end of its output, if it exits
    first or is not there within `timeout` s."""
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=log,
            env={**os.environ, "TBMIRROR_TEST_STOP_AT": step},
        )
    deadline = time.monotonic() + timeout
    try:
        while (state := process_state(process.pid)) != "T":
            if state == "Z" or time.monotonic() > deadline:
                how = "exited" if state == "Z" else f"still in state {state} after {timeout} s"
                tail = log_path.read_text(errors="replace")[-2000:]
                raise AssertionError(f"{command[-3:]} {how} before reaching {step}:\n{tail}")
            time.sleep(0.01)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    return process


def recovered_events(text: str) -> list[dict[str, Any]]:
    """The `recovered` log events (JSON lines) in `text`, in order."""
    return [
        json.loads(line)
        for line in text.splitlines()
        if line.startswith("{") and '"event": "recovered"' in line
    ]


def files_cut(event: dict[str, Any]) -> int:
    """Files a `recovered` event cut back or removed: what a kill before a commit leaves."""
    return int(event["truncated"]) + int(event["orphans_removed"])
