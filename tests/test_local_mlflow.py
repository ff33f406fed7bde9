"""The throw-away `mlflow server` of the demo, tests and benchmarks: `stop` ends its whole
process group, also when the `mlflow server` parent is already gone and its worker still
serves. (Started from the session's migrated store: conftest's MlflowServer, which changes
only how the store begins, not how the server starts or stops.)"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from pathlib import Path

import pytest

from conftest import MlflowServer, wait_until

pytestmark = pytest.mark.e2e  # starts real processes (tests/conftest.py, REAL_PROCESS_FIXTURES)


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_stop_ends_the_workers_of_a_parent_that_already_exited(tmp_path: Path) -> None:
    server = MlflowServer(tmp_path / "mlflow").start()
    try:
        assert server.process is not None
        pgid = server.process.pid
        os.kill(pgid, signal.SIGKILL)  # the parent only: its worker keeps the port
        server.process.wait(10)
        assert listening(server.port), "the worker went with its parent: nothing to test"
        server.stop()
        wait_until(lambda: not group_alive(pgid), 10, f"process group {pgid} to end")
        assert not listening(server.port)
    finally:
        if server.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.process.pid, signal.SIGKILL)
