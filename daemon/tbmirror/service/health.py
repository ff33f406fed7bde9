"""GET /healthz (JSON, 200 or 503) and GET /metrics (Prometheus) on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tbmirror.config import HealthSettings
from tbmirror.journal import Fault
from tbmirror.model import SourceStatus
from tbmirror.service.metrics import DaemonMetrics


class HealthReport:
    """What /healthz says, built from the daemon's live state."""

    def __init__(
        self,
        settings: HealthSettings,
        statuses: Callable[[], dict[str, SourceStatus]],
        write_faults: Callable[[], dict[str, Fault]],
        tensorboard: Callable[[], dict[str, Any] | None],
    ) -> None:
        self.settings, self._statuses, self._tensorboard = settings, statuses, tensorboard
        self._write_faults = write_faults

    def build(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, body): unhealthy when TensorBoard is down, a source failed too often, or
        writes of a source's mirror fail."""
        now = time.time()
        sources = {}
        healthy = True
        faults = self._write_faults()
        for name, status in sorted(self._statuses().items()):
            fault = faults.get(name)
            ok = status.consecutive_errors < self.settings.failure_threshold and fault is None
            healthy &= ok
            sources[name] = {
                "healthy": ok,
                "last_success": _iso(status.last_success),
                "lag_seconds": round(now - status.last_success, 3) if status.last_success else None,
                "consecutive_errors": status.consecutive_errors,
                "last_error": status.last_error,
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


class HealthServer:
    """A small threaded HTTP server; `start` binds (raising OSError if it cannot)."""

    def __init__(self, settings: HealthSettings, report: HealthReport, metrics: DaemonMetrics):
        report_, metrics_ = report, metrics

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    healthy, body = report_.build()
                    self._send(200 if healthy else 503, "application/json",
                               json.dumps(body).encode())  # fmt: skip
                elif path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(metrics_.registry))
                else:
                    self._send(404, "text/plain", b"not found: try /healthz or /metrics\n")

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
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat()
