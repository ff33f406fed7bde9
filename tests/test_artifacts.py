"""tfevents artifacts of MLflow runs: tailed with HTTP Range requests into the run's directory.

A recording proxy sits between tbmirror and the real `mlflow server`: it forwards every request
unchanged and notes each download's Range header and the bytes that came back, which the
server's own access log does not show.
"""

from __future__ import annotations

import http.server
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import (
    DaemonProcess,
    MlflowServer,
    TensorBoard,
    daemon_config,
    mlflow_source,
    new_run,
    tb_run,
    tbmirror,
    wait_until,
    write_config,
)
from helpers.scripted_mlflow import ScriptedMlflow
from test_uploads import write_tfevents


class RecordingProxy(http.server.ThreadingHTTPServer):
    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream = httpx.Client(base_url=upstream, timeout=30)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.downloads: list[tuple[str | None, int, int]] = []  # (Range, status, bytes)
        self.lock = threading.Lock()


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    server: RecordingProxy

    def do_GET(self) -> None:
        self._forward("GET")

    def do_POST(self) -> None:
        self._forward("POST")

    def _forward(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
        answer = self.server.upstream.request(
            method, self.path, content=self.rfile.read(length), headers=headers
        )
        if self.path.startswith("/get-artifact"):
            with self.server.lock:
                self.server.downloads.append(
                    (self.headers.get("Range"), answer.status_code, len(answer.content))
                )
        self.send_response(answer.status_code)
        for key, value in answer.headers.items():
            if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(answer.content)))
        self.end_headers()
        self.wfile.write(answer.content)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def proxy(mlflow_server: MlflowServer) -> Iterator[RecordingProxy]:
    server = RecordingProxy(mlflow_server.url)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.upstream.close()


@pytest.fixture
def sync(
    tmp_path: Path,
    mirror_root: Path,
    proxy: RecordingProxy,
    source_name: str,
    experiment_name: str,
) -> Callable[[], str]:
    """sync() runs `tbmirror sync` of this test's experiment through the proxy; its log."""
    config = write_config(
        tmp_path / "tbmirror.yaml",
        mirror_root,
        [mlflow_source(source_name, proxy.url, [experiment_name])],
    )

    def run() -> str:
        result = tbmirror("sync", "--config", str(config))
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stderr

    return run


def test_a_growing_tfevents_artifact_is_fetched_by_its_new_bytes_only(
    tmp_path: Path,
    mirror_root: Path,
    mlflow_server: MlflowServer,
    proxy: RecordingProxy,
    sync: Callable[[], str],
    source_name: str,
    experiment_name: str,
) -> None:
    from tensorboardX import SummaryWriter

    client = mlflow_server.client()
    run_id = new_run(client, experiment_name, "trainer")  # stays RUNNING: checked every pass
    client.log_metric(run_id, "mlflow_metric", 1.0, step=0)
    logdir = Path(tempfile.mkdtemp())
    writer = SummaryWriter(str(logdir))
    [events_file] = list(logdir.iterdir())

    def log_points(start: int, count: int, last: bool = False) -> int:
        for step in range(start, start + count):
            writer.add_scalar("tb/loss", step / 3, step)
        writer.close() if last else writer.flush()  # tensorboardX's flush leaves some queued
        client.log_artifact(run_id, str(events_file), "tensorboard")  # replaces the old one
        return events_file.stat().st_size

    try:
        first_size = log_points(0, 900)
        sync()
        assert len(proxy.downloads) == 1 and proxy.downloads[0][2] == first_size

        before = len(proxy.downloads)
        second_size = log_points(900, 100, last=True)
        sync()
        new = proxy.downloads[before:]
        assert all(status == 206 and ranged for ranged, status, _ in new), new
        # The new bytes, the 1 KiB before them (still ours?) and the first 1 KiB (same file?).
        assert sum(size for _, _, size in new) == second_size - first_size + 2048, new
        assert sum(size for _, _, size in new) < second_size / 4

        before = len(proxy.downloads)
        sync()  # nothing changed: the listing says so, nothing is downloaded
        assert proxy.downloads[before:] == []

        mirrored = mirror_root / source_name / experiment_name / "trainer" / "tensorboard"
        assert [p.read_bytes() for p in mirrored.iterdir()] == [events_file.read_bytes()]
        board = TensorBoard(mirror_root / source_name, tmp_path / "tensorboard.log")
        try:
            points = board.wait_scalars(
                tb_run(experiment_name, "trainer", "tensorboard"), "tb/loss", 1000
            )
            assert [int(p[1]) for p in points] == list(range(1000))
            assert board.wait_scalars(tb_run(experiment_name, "trainer"), "mlflow_metric", 1)
        finally:
            board.stop()
    finally:
        writer.close()
        shutil.rmtree(logdir)


def test_a_rewritten_artifact_is_downloaded_again_and_a_deleted_run_takes_it_along(
    scripted: ScriptedMlflow,
    scripted_sync: Callable[..., Any],
    source_name: str,
    experiment_name: str,
) -> None:
    """In-process, against a scripted MLflow (helpers/scripted_mlflow.py)."""
    from tensorboardX import SummaryWriter

    client, mirror_root = scripted.client(), scripted_sync.root  # type: ignore[attr-defined]

    def sync() -> str:
        return str(scripted_sync([experiment_name]).stderr)

    run_id = new_run(client, experiment_name, "job")

    def upload(values: list[float]) -> bytes:
        logdir = Path(tempfile.mkdtemp())
        try:
            with SummaryWriter(str(logdir)) as writer:
                for step, value in enumerate(values):
                    writer.add_scalar("x", value, step)
            [path] = list(logdir.iterdir())
            named = path.with_name("events.out.tfevents.1.job")
            path.rename(named)
            client.log_artifact(run_id, str(named))  # at the root of the run's artifacts
            return named.read_bytes()
        finally:
            shutil.rmtree(logdir)

    upload([float(i) for i in range(300)])
    sync()
    copies = mirror_root / source_name / experiment_name / "job" / "artifacts"
    rewritten = upload([-1.0] * 400)  # longer, but other bytes from the start
    assert "rewritten" in sync()
    assert [(p.name, p.read_bytes()) for p in copies.iterdir()] == [
        ("events.out.tfevents.1.job.1", rewritten)
    ]
    client.delete_run(run_id)
    sync()
    assert not (mirror_root / source_name / experiment_name / "job").exists()


def test_the_daemon_mirrors_old_runs_metrics_first_and_their_artifacts_in_batches(
    tmp_path: Path,
    mlflow_server: MlflowServer,
    source_name: str,
    experiment_name: str,
    start_daemon: Callable[..., DaemonProcess],
) -> None:
    client = mlflow_server.client()
    logdir = Path(tempfile.mkdtemp())
    try:
        write_tfevents(logdir / "events.out.tfevents.1.old", [1.0, 2.0])
        for index in range(3):  # finished runs, each with metrics and a tfevents artifact
            run_id = new_run(client, experiment_name, f"old{index}")
            client.log_metric(run_id, "m", float(index), step=0)
            client.log_artifact(run_id, str(logdir / "events.out.tfevents.1.old"), "tb")
            client.set_terminated(run_id)
    finally:
        shutil.rmtree(logdir)
    source = mlflow_source(
        source_name, mlflow_server.url, [experiment_name], poll_interval="1s",
        full_listing_interval="1s", artifacts={"batch": 1},
    )  # fmt: skip
    config, _, _ = daemon_config(
        tmp_path / "tbmirror.yaml", tmp_path / "root", [source], tensorboard={"enabled": False}
    )
    daemon = start_daemon(config)
    first = daemon.wait_event("source_synced", source=source_name)
    experiment = tmp_path / "root" / source_name / experiment_name
    # Every run's metric at once, one run's artifact (file_version and 2 scalars) with them.
    assert first["runs"] == 3 and first["points"] == 3 + 3
    copies = sorted(experiment.glob("old*/tb/events.out.tfevents.1.old"))
    assert len(copies) <= 2  # at most one run's artifacts per pass (two passes may be done)
    wait_until(lambda: len(list(experiment.glob("old*/tb/*"))) == 3, 30, "every run's artifact")
    assert daemon.stop() == 0
