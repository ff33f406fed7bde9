"""`tbmirror demo` as a newcomer runs it: the seed's sweep and a live training run show up in
TensorBoard, and Ctrl-C leaves nothing running."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from conftest import TensorBoardReader, pid_alive, wait_until
from tbmirror.demo import SWEEP_EXPERIMENT, log_sweep
from tbmirror.local_mlflow import LocalMlflowServer
from tbmirror.processes import free_port, stop_process_group

pytestmark = pytest.mark.e2e  # starts real processes (tests/conftest.py, REAL_PROCESS_FIXTURES)


def test_demo_shows_the_sweep_and_a_live_run_and_stops_cleanly(tmp_path: Path) -> None:
    port, health_port = free_port(), free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tbmirror",
            "demo",
            "--dir",
            str(tmp_path / "demo"),
            "--port",
            str(port),
            "--health-port",
            str(health_port),
        ],
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "demo.log").open("wb"),
        text=True,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(6)]
        assert lines[0].startswith(f"Starting MLflow and TensorBoard in {tmp_path / 'demo'}")
        assert lines[1].startswith("MLflow:      http://127.0.0.1:")
        assert lines[2].startswith(f"TensorBoard: http://127.0.0.1:{port}/")
        assert lines[3] == f"Health:      http://127.0.0.1:{health_port}/healthz\n"
        assert lines[4].startswith(f"Data:        {tmp_path / 'demo'} (kept, and reused")
        mlflow_url = lines[1].split()[1]
        assert httpx.get(lines[3].split()[1], timeout=10).status_code in (200, 503)
        board = TensorBoardReader(f"http://127.0.0.1:{port}")
        sweep = {f"demo/tensorboard-demo/ridge-sweep/alpha0.{i}" for i in range(1, 8)}
        live = "demo/training-loop/live-training"
        wait_until(lambda: sweep | {live} <= set(board.runs()), 60, "the demo's runs")
        assert len(board.wait_scalars("demo/tensorboard-demo/ridge-sweep", "mse", 7)) == 7
        first = wait_until(lambda: len(board.scalars(live, "train/loss")), 30, "live points")
        wait_until(
            lambda: len(board.scalars(live, "train/loss")) >= first + 3, 30, "more live points"
        )
        groups = wait_until(
            lambda: len(board.session_groups()) >= 8 and board.session_groups(), 30, "sessions"
        )
        assert {g["sessions"][0]["name"] for g in groups} >= sweep
        assert {f"alpha{i / 10}" for i in range(1, 8)} <= {g["name"] for g in groups}
        parent = "demo/tensorboard-demo/ridge-sweep"
        wait_until(lambda: board.images(live, "predictions"), 30, "the live run's plots")
        wait_until(lambda: board.image_tags(parent) == ["mse_vs_alpha.png"], 30, "the figure")
        [table] = wait_until(lambda: board.text(parent, "results.json (table)"), 30, "the table")
        assert table["text"].count("<tr>") == 8  # the header and the seven alphas

        process.send_signal(signal.SIGINT)
        said, _ = process.communicate(timeout=60)  # a deadline, not a speed claim
        assert process.returncode == 0
        assert "stopping..." in said.splitlines(), said
        for url in (mlflow_url, f"http://127.0.0.1:{port}"):
            try:
                httpx.get(url, timeout=2)
            except httpx.HTTPError:
                continue
            raise AssertionError(f"{url} still answers after the demo stopped")
    finally:
        stop_process_group(process)
    assert not pid_alive(process.pid)


def processes_mentioning(text: str) -> list[str]:
    """Command lines of the running processes that mention `text`."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            line = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in line:
            found.append(line)
    return found


def test_ctrl_c_while_the_demo_starts_stops_its_mlflow_server(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    process = subprocess.Popen(
        [sys.executable, "-m", "tbmirror", "demo", "--dir", str(demo),
         "--port", str(free_port()), "--health-port", str(free_port())],
        stdout=subprocess.PIPE, stderr=(tmp_path / "demo.log").open("wb"), text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        assert process.stdout.readline().startswith("Starting MLflow and TensorBoard in ")
        wait_until(lambda: processes_mentioning(f"{demo}/mlflow/mlflow.db"), 60, "mlflow server")
        process.send_signal(signal.SIGINT)
        said, _ = process.communicate(timeout=90)  # a deadline, not a speed claim
        assert process.returncode == 130 and said.splitlines() == ["stopping..."], said
        assert processes_mentioning(str(demo)) == []
    finally:
        stop_process_group(process)


class _StopAfter(threading.Event):
    """A stop event that reads as set from its `checks + 1`-th look on: Ctrl-C at an exact step."""

    def __init__(self, checks: int) -> None:
        super().__init__()
        self.checks_left = checks

    def is_set(self) -> bool:
        self.checks_left -= 1
        return self.checks_left < 0


def test_a_sweep_cut_short_by_ctrl_c_is_logged_whole_by_the_next_demo(fluent_mlflow: str) -> None:
    """The demo's sweep, logged into the worker's server under the demo's own experiment (one
    left by an earlier run of this test is renamed out of the way)."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(fluent_mlflow)
    earlier = client.get_experiment_by_name(SWEEP_EXPERIMENT)
    if earlier is not None:
        client.rename_experiment(earlier.experiment_id, f"{SWEEP_EXPERIMENT}-{time.time_ns()}")
    with pytest.raises(KeyboardInterrupt):
        log_sweep(fluent_mlflow, _StopAfter(3))  # the parent and two of its seven children
    experiment = client.get_experiment_by_name(SWEEP_EXPERIMENT)
    assert experiment is not None
    cut = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in cut) == ["alpha0.1", "alpha0.2", "ridge-sweep"]

    log_sweep(fluent_mlflow, threading.Event())
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(
        ["ridge-sweep"] + [f"alpha0.{i}" for i in range(1, 8)]
    )
    assert {r.info.status for r in runs} == {"FINISHED"}
    deleted = client.search_runs([experiment.experiment_id], run_view_type=ViewType.DELETED_ONLY)
    assert {r.info.run_id for r in deleted} == {r.info.run_id for r in cut}

    log_sweep(fluent_mlflow)  # a whole sweep is there: nothing more is logged
    assert len(client.search_runs([experiment.experiment_id])) == 8


def test_ctrl_c_while_mlflow_starts_ends_the_wait_and_the_server(tmp_path: Path) -> None:
    stop = threading.Event()
    stop.set()
    server = LocalMlflowServer(tmp_path / "mlflow")
    with pytest.raises(KeyboardInterrupt):
        server.start(stop=stop)
    assert server.process is not None and server.process.poll() is not None
    assert processes_mentioning(str(tmp_path / "mlflow")) == []
