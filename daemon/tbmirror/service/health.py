"""The daemon's HTTP endpoint (127.0.0.1 by default; health.host):

- GET /healthz: the whole verdict as JSON, 200 or 503 (sources, writes, TensorBoard);
- GET /readyz: 200 while TensorBoard answers its probes (or is disabled), else 503: whether the
  dashboard can take traffic; a stale source does not make it unready;
- GET /livez: 200 while the daemon's main loop has ticked within LIVENESS_SECONDS, else 503:
  whether restarting the process could help;
- GET /metrics: Prometheus.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tbmirror.app import Fault
from tbmirror.config import HealthSettings
from tbmirror.model import SourceStatus
from tbmirror.service.metrics import DaemonMetrics

LIVENESS_SECONDS = 60.0  # the main loop ticks every second; a minute without a tick is stuck
LONG_STEP_SECONDS = 600.0  # how long a long step of the main loop (see heartbeat) keeps it alive


@contextlib.contextmanager
def heartbeat(
    beat: Callable[[], None], limit: float = LONG_STEP_SECONDS, interval: float = 1.0
) -> Iterator[None]:
    """Call `beat` every `interval` seconds from a thread while the block runs, for at most
    `limit` seconds: a long but known step of the main loop (a reload restarting TensorBoard or
    recovering an added source) keeps /livez alive, one stuck beyond `limit` does not."""
    done = threading.Event()
    deadline = time.monotonic() + limit

    def run() -> None:
        while not done.wait(interval) and time.monotonic() < deadline:
            beat()

    thread = threading.Thread(target=run, name="heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


@dataclass(frozen=True)
class SourceView:
    """What health needs of one scheduled source."""

    status: SourceStatus
    poll_interval: float
    running_since: float | None  # wall time the pass in flight began, if one is
    progress_at: float | None = None  # wall time of its last progress (an answer, a file)


class HealthReport:
    """What /healthz says, built from the daemon's live state.

    A source is degraded when no pass of it succeeded for `stale_after` (since the daemon
    started, before its first success), while a pass has made no progress for that long (no
    answer, no file done), when every run
    or file of its last pass failed, when `failure_threshold` passes in a row failed, or while
    writes of its mirror fail. The daemon is healthy when TensorBoard is up and every source is.
    """

    def __init__(
        self,
        settings: HealthSettings,
        sources: Callable[[], dict[str, SourceView]],
        write_faults: Callable[[], dict[str, Fault]],
        tensorboard: Callable[[], dict[str, Any] | None],
        clock: Callable[[], float] = time.time,
        last_tick: Callable[[], float] = time.monotonic,
    ) -> None:
        """`last_tick`: the monotonic time the daemon's main loop last went round."""
        self.settings, self._sources, self._tensorboard = settings, sources, tensorboard
        self._write_faults, self._clock, self._last_tick = write_faults, clock, last_tick
        self._started = clock()

    def ready(self) -> tuple[bool, dict[str, Any]]:
        """(TensorBoard answers or is disabled, body): /readyz."""
        tensorboard = self._tensorboard()
        ready = tensorboard is None or bool(tensorboard["up"])
        return ready, {"ready": ready, "tensorboard": tensorboard}

    def live(self) -> tuple[bool, dict[str, Any]]:
        """(the main loop ticked within LIVENESS_SECONDS, body): /livez."""
        since = time.monotonic() - self._last_tick()
        alive = since <= LIVENESS_SECONDS
        return alive, {"alive": alive, "last_tick_seconds_ago": round(since, 1)}

    def build(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, body)."""
        now = self._clock()
        faults = self._write_faults()
        sources = {}
        healthy = True
        for name, view in sorted(self._sources().items()):
            problems = self._problems(view, faults.get(name), now)
            healthy &= not problems
            status, fault = view.status, faults.get(name)
            sources[name] = {
                "healthy": not problems,
                "problems": problems,
                "last_success": _iso(status.last_success),
                "lag_seconds": round(now - status.last_success, 3) if status.last_success else None,
                "consecutive_errors": status.consecutive_errors,
                "last_error": status.last_error,
                "failed_runs": status.failed_runs,
                "pass_running_seconds": (
                    round(now - view.running_since, 1) if view.running_since else None
                ),
                "write_fault": None if fault is None else {
                    "cause": fault.cause, "path": fault.path, "since": _iso(fault.since)
                },
            }  # fmt: skip
        tensorboard = self._tensorboard()
        if tensorboard is not None:
            healthy &= bool(tensorboard["up"])
        body = {"status": "ok" if healthy else "degraded", "tensorboard": tensorboard}
        body["sources"] = sources
        return healthy, body

    def _problems(self, view: SourceView, fault: Fault | None, now: float) -> list[str]:
        """Why one source is degraded (none: healthy), one short phrase each."""
        status = view.status
        stale_after = self.settings.stale_after_for(view.poll_interval)
        problems = []
        since = status.last_success or self._started
        if now - since > stale_after:
            problems.append(f"no successful pass for {now - since:.0f} s")
        if view.running_since is not None:
            moved = max(view.running_since, view.progress_at or 0.0)
            if now - moved > stale_after:  # a long pass that moves is fine; a stuck one is not
                problems.append(f"a pass has made no progress for {now - moved:.0f} s")
        if status.consecutive_errors >= self.settings.failure_threshold:
            problems.append(f"{status.consecutive_errors} passes in a row failed")
        if status.all_failed:
            problems.append(f"every run of the last pass failed ({status.failed_runs})")
        if fault is not None:
            problems.append(f"writes fail ({fault.cause})")
        return problems


class HealthServer:
    """A small threaded HTTP server; `start` binds (raising OSError if it cannot)."""

    def __init__(self, settings: HealthSettings, report: HealthReport, metrics: DaemonMetrics):
        report_, metrics_ = report, metrics

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                verdicts = {"/healthz": report_.build, "/readyz": report_.ready,
                            "/livez": report_.live}  # fmt: skip
                if path in verdicts:
                    ok, body = verdicts[path]()
                    self._send(200 if ok else 503, "application/json", json.dumps(body).encode())
                elif path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(metrics_.registry))
                else:
                    hint = b"not found: try /healthz, /readyz, /livez or /metrics\n"
                    self._send(404, "text/plain", hint)

            def _send(self, code: int, content_type: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.settings = settings
        self._server = ThreadingHTTPServer((settings.host, settings.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, tz=UTC).isoformat()
