"""A throw-away local `mlflow server` on 127.0.0.1 (sqlite store, one worker).

Used by `tbmirror demo`, the tests and the benchmarks. Needs the `mlflow` package in this
interpreter (the `demo` and `test` extras install it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import httpx

from tbmirror.errors import TbmirrorError
from tbmirror.processes import free_port, sigint_deferred

STOP_GRACE_SECONDS = 2.0
SERVED_ROOT = "mlflow-artifacts:/"  # the artifact root of a server that serves its own store


class LocalMlflowServer:
    """`mlflow server` with its sqlite store and artifacts under `directory`, without MLflow's
    job runner (tbmirror runs no MLflow jobs; it is eight more processes).

    Runs' artifact URIs are plain paths under `directory/artifacts`; with `serve_artifacts`,
    as `mlflow server` gives them by default, `mlflow-artifacts:/<experiment>/<run>/artifacts`
    in the server's own store (kept in `directory/artifacts`, served through its
    `mlflow-artifacts` endpoints).

    The server runs in its own process group; `stop` ends the whole group.
    """

    def __init__(
        self,
        directory: Path,
        port: int | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        serve_artifacts: bool = False,
    ) -> None:
        self.directory = directory
        self.serve_artifacts = serve_artifacts
        self.extra_args = list(extra_args)
        self.env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ, **(env or {})}
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = directory / f"mlflow-server-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120, stop: threading.Event | None = None) -> LocalMlflowServer:
        """Start the server and wait until `/health` answers; `stop` set meanwhile (Ctrl-C) ends
        the wait, stops the server and raises KeyboardInterrupt."""
        self.directory.mkdir(parents=True, exist_ok=True)
        artifacts = str(self.directory / "artifacts")
        where = (
            ["--default-artifact-root", SERVED_ROOT, "--artifacts-destination", artifacts]
            if self.serve_artifacts
            else ["--default-artifact-root", artifacts]
        )
        command = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{self.directory / 'mlflow.db'}",
            *where,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--workers", "1",
            *self.extra_args,
        ]  # fmt: skip
        with self.log_path.open("ab") as log, sigint_deferred():
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=self.env
            )
        stop = stop or threading.Event()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if stop.is_set():
                self.stop()
                raise KeyboardInterrupt
            if self.process.poll() is not None:
                raise TbmirrorError(
                    f"mlflow server exited with code {self.process.returncode}; "
                    f"see {self.log_path} (is the 'mlflow' package installed?)"
                )
            try:
                health = httpx.get(f"{self.url}/health", timeout=2, trust_env=False)  # our child
                if health.status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            stop.wait(0.5)
        self.stop()
        raise TbmirrorError(f"mlflow server did not answer within {timeout:.0f} s")

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """End the server's whole process group, even if its `mlflow server` parent already
        exited (its workers may not have): SIGTERM, then SIGKILL once the server no longer
        listens (it has shut down: the parent would linger seconds more for nothing) or after
        `grace` s."""
        process = self.process
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and self._listening():
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def _listening(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
        except OSError:
            return False
        return True

    def __enter__(self) -> LocalMlflowServer:
        try:
            return self.start()
        except BaseException:  # Ctrl-C while it starts: nothing is left running
            self.stop()
            raise

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()
