"""A source that is down or answers with errors: `sync` names it and exits non-zero, what is
already mirrored stays untouched, and the other sources still sync."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.entities import Metric

from conftest import MlflowServer, free_port, mlflow_source, new_run, tbmirror, write_config


class ErrorServer(http.server.ThreadingHTTPServer):
    """A stand-in for an overloaded tracking server: every request gets 503 + Retry-After: 0.
    (A fake, because a real mlflow server cannot be made to fail on demand.)"""

    requests = 0


class _ErrorHandler(http.server.BaseHTTPRequestHandler):
    def _fail(self) -> None:
        self.server.requests += 1  # type: ignore[attr-defined]
        body = b'{"error_code": "TEMPORARILY_UNAVAILABLE", "message": "try later"}'
        self.send_response(503)
        self.send_header("Retry-After", "0")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _fail

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def error_server() -> Iterator[ErrorServer]:
    server = ErrorServer(("127.0.0.1", 0), _ErrorHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in directory.rglob("*")
        if p.is_file()
    }


def test_failing_sources_are_reported_and_leave_the_mirror_untouched(
    tmp_path: Path,
    mlflow_server: MlflowServer,
    mirror_root: Path,
    error_server: ErrorServer,
    experiment_name: str,
    source_name: str,
) -> None:
    client = mlflow_server.client()
    run_id = new_run(client, experiment_name, "r")
    client.log_batch(
        run_id, metrics=[Metric("m", float(i), 1_700_000_000_000 + i, i) for i in range(5)]
    )
    flaky, good = f"{source_name}-flaky", f"{source_name}-good"
    config = tmp_path / "tbmirror.yaml"
    write_config(config, mirror_root, [mlflow_source(flaky, mlflow_server.url, [experiment_name])])
    assert tbmirror("sync", "--config", str(config)).returncode == 0
    mirrored = snapshot(mirror_root / flaky)
    assert mirrored

    client.log_batch(run_id, metrics=[Metric("m", 9.0, 1_700_000_000_100, 9)])
    down_url = f"http://127.0.0.1:{free_port()}"
    error_url = f"http://127.0.0.1:{error_server.server_address[1]}"
    for broken_url in (down_url, error_url):
        write_config(
            config,
            mirror_root,
            [
                mlflow_source(flaky, broken_url, [experiment_name], max_retries=2),
                mlflow_source(good, mlflow_server.url, [experiment_name]),
            ],
        )
        result = tbmirror("sync", "--config", str(config))
        assert result.returncode == 1, result.stdout + result.stderr
        (failed,) = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
        assert failed.startswith(f"FAIL  {flaky}: GET /api/2.0/mlflow/experiments/get-by-name: ")
        assert failed.count(flaky) == 1, "the source is named once"
        assert f"ok    {good}: 1 run, " in result.stdout
        assert snapshot(mirror_root / flaky) == mirrored
        assert (mirror_root / good / experiment_name / "r").is_dir()
    assert error_server.requests == 3, "one request, retried twice, then the source gives up"
    assert "503 TEMPORARILY_UNAVAILABLE: try later" in result.stdout

    # Back up: the cursors survived, so exactly the one new point is written.
    write_config(config, mirror_root, [mlflow_source(flaky, mlflow_server.url, [experiment_name])])
    result = tbmirror("sync", "--config", str(config))
    assert result.returncode == 0 and ", 1 points, " in result.stdout, result.stdout
