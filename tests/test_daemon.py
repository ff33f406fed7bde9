"""`tbmirror run` as a subprocess: live updates, a supervised TensorBoard, SIGHUP reloads, SIGKILL
recovery, an MLflow outage, and the systemd notify protocol."""

from __future__ import annotations

import contextlib
import fcntl
import io
import itertools
import json
import os
import signal
import socket
import time
from datetime import datetime
from pathlib import Path

import httpx
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from conftest import (
    MlflowServer,
    TensorBoardReader,
    daemon_config,
    mlflow_source,
    new_run,
    pid_alive,
    tbmirror,
    wait_until,
)
from helpers.hostile_proxy import HostileProxy, hostile_proxy
from tbmirror.mirror import events, summaries
from tbmirror.service.tensorboard import OUTPUT_READ_BYTES

T0 = 1_700_000_000_000


def log_steps(client: MlflowClient, run_id: str, steps: range, key: str = "loss") -> None:
    client.log_batch(run_id, metrics=[Metric(key, float(s), T0 + 1000 * s, s) for s in steps])


def health(url: str) -> tuple[int, dict]:
    response = httpx.get(f"{url}/healthz", timeout=5)
    return response.status_code, response.json()


def children(pid: int) -> set[int]:
    """The live child processes of `pid` (by the parent pid in /proc/<pid>/stat)."""
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found.add(int(entry.name))
    return found


def restart_gaps(events: list[dict]) -> list[tuple[float, float]]:
    """(seconds between two `tensorboard_restarting` events, the least the backoff allows) for
    each pair in a row: 2**(n-1) s after the n-th failure since TensorBoard was last ready."""
    gaps, failures, last = [], 0, None
    for event in events:
        if event.get("event") == "tensorboard_ready":
            failures, last = 0, None
        elif event.get("event") == "tensorboard_restarting":
            moment = datetime.fromisoformat(event["timestamp"]).timestamp()
            if last is not None:
                gaps.append((moment - last, float(2 ** (failures - 1))))
            failures, last = failures + 1, moment
    return gaps


def test_live_points_and_a_hung_or_killed_tensorboard_comes_back_with_backoff(
    tmp_path: Path, mlflow_server: MlflowServer, start_daemon, experiment_name: str
) -> None:
    """A TensorBoard that stops answering (SIGSTOP: hung, not exited) is killed and started
    again; one that dies again and again before it answers is restarted after 1 s, then 2 s."""
    client = mlflow_server.client()
    run_id = client.create_run(
        client.create_experiment(experiment_name), run_name="live"
    ).info.run_id
    log_steps(client, run_id, range(10))
    config, tb_url, health_url = daemon_config(
        tmp_path / "c.yaml", tmp_path / "root",
        [mlflow_source("live", mlflow_server.url, [experiment_name], poll_interval="1s")],
    )  # fmt: skip
    daemon = start_daemon(config)
    daemon.wait_event("daemon_ready")
    board = TensorBoardReader(tb_url)
    run = f"live/{experiment_name}/live"
    board.wait_scalars(run, "loss", 10)

    log_steps(client, run_id, range(10, 25))
    assert [p[1] for p in board.wait_scalars(run, "loss", 25)] == list(range(25))

    (hung,) = daemon.tensorboard_pids()
    output = os.open(f"/proc/{hung}/fd/1", os.O_RDONLY | os.O_NONBLOCK)  # its pipe to us
    try:
        assert fcntl.fcntl(output, fcntl.F_GETPIPE_SZ) == OUTPUT_READ_BYTES, "room to gather"
    finally:
        os.close(output)
    os.killpg(hung, signal.SIGSTOP)
    daemon.wait_event("tensorboard_unresponsive", timeout=120)
    wait_until(lambda: daemon.tensorboard_pids() - {hung}, 120, "a TensorBoard after the hang")
    assert not pid_alive(hung), "the hung TensorBoard was left running"

    killed = {hung}
    for _ in range(3):  # the one that answers, then two more before they answer
        (pid,) = wait_until(lambda: children(daemon.process.pid) - killed, 120,
                            "a TensorBoard to kill", every=0.02)  # fmt: skip
        os.killpg(pid, signal.SIGKILL)
        killed.add(pid)

    def down() -> dict | None:
        status, body = health(health_url)
        return body if status == 503 else None

    body = wait_until(down, 60, "/healthz to report TensorBoard down", every=0.05)
    assert body["tensorboard"]["up"] is False and body["status"] == "degraded"
    wait_until(lambda: daemon.tensorboard_pids() - killed and board.answers(), 120,
               "a TensorBoard that answers after the kills")  # fmt: skip
    gaps = restart_gaps(daemon.events())
    assert [least for _, least in gaps] == [1.0, 2.0], gaps  # the kills met no ready one
    assert all(gap >= least - 0.1 for gap, least in gaps), f"restarts without backoff: {gaps}"
    wait_until(lambda: health(health_url)[0] == 200, 60, "/healthz 200 again")
    log_steps(client, run_id, range(25, 30))
    board.wait_scalars(run, "loss", 30)
    counted = 'tbmirror_points_written_total{source="live"} 30.0'  # once the pass has ended
    metrics = wait_until(lambda: counted in (text := httpx.get(f"{health_url}/metrics").text)
                         and text, 60, counted)  # fmt: skip
    assert "tbmirror_tensorboard_restarts_total 4.0" in metrics
    assert daemon.stop() == 0


def test_sighup_adds_a_source_and_survives_a_broken_config(
    tmp_path: Path, mlflow_server: MlflowServer, start_daemon, experiment_name: str
) -> None:
    client = mlflow_server.client()
    first = new_run(client, experiment_name, "one")
    second_experiment = f"{experiment_name}-second"
    second = client.create_run(
        client.create_experiment(second_experiment), run_name="two"
    ).info.run_id
    log_steps(client, first, range(3))
    log_steps(client, second, range(4))
    one = mlflow_source("one", mlflow_server.url, [experiment_name], poll_interval="1s")
    two = mlflow_source("two", mlflow_server.url, [second_experiment], poll_interval="1s")
    path = tmp_path / "c.yaml"
    config, tb_url, _ = daemon_config(path, tmp_path / "root", [one])
    daemon = start_daemon(config)
    daemon.wait_event("daemon_ready")
    board = TensorBoardReader(tb_url)
    board.wait_scalars(f"one/{experiment_name}/one", "loss", 3)
    (tensorboard_pid,) = daemon.tensorboard_pids()

    text = path.read_text()
    path.write_text(text.replace("sources:\n", "sources:\n" + _yaml_item(two), 1))
    daemon.signal(signal.SIGHUP)
    daemon.wait_event("reloaded", sources=2)
    board.wait_scalars(f"two/{second_experiment}/two", "loss", 4)

    path.write_text(text.replace("poll_interval: 1s", "poll_interval: whenever"))
    daemon.signal(signal.SIGHUP)
    failed = daemon.wait_event("reload_failed")
    assert "sources[0].poll_interval: expected a duration" in failed["error"]
    log_steps(client, second, range(4, 6))
    board.wait_scalars(f"two/{second_experiment}/two", "loss", 6)
    assert daemon.tensorboard_pids() == {tensorboard_pid}, "a reload must not drop TensorBoard"
    assert daemon.stop() == 0


def _yaml_item(source: dict) -> str:
    lines = [f"  {key}: {value!r}".replace("'", '"') for key, value in source.items()]
    lines[0] = "- " + lines[0][2:]
    return "\n".join(lines).replace('"1s"', "1s") + "\n"


def test_sigkill_leaves_no_tensorboard_and_a_restart_resumes_exactly(
    tmp_path: Path, mlflow_server: MlflowServer, start_daemon, experiment_name: str
) -> None:
    client = mlflow_server.client()
    run_id = new_run(client, experiment_name, "r")
    log_steps(client, run_id, range(2000))
    config, tb_url, _ = daemon_config(
        tmp_path / "c.yaml", tmp_path / "root",
        [mlflow_source("killed", mlflow_server.url, [experiment_name], poll_interval="1s")],
    )  # fmt: skip
    daemon = start_daemon(config)
    daemon.wait_event("daemon_ready")
    (pid,) = daemon.tensorboard_pids()
    log_steps(client, run_id, range(2000, 4000))
    daemon.process.send_signal(signal.SIGKILL)
    daemon.process.wait(5)
    wait_until(lambda: not pid_alive(pid), 30, "TensorBoard to die with the daemon")

    log_steps(client, run_id, range(4000, 5000))
    restarted = start_daemon(config)
    restarted.wait_event("daemon_ready")
    shown = TensorBoardReader(tb_url).wait_scalars(
        f"killed/{experiment_name}/r", "loss", 5000, timeout=60
    )
    assert [p[1] for p in shown] == list(range(5000))
    assert restarted.stop() == 0


def test_an_mlflow_outage_degrades_health_and_loses_nothing(
    tmp_path: Path, mlflow_server: MlflowServer, start_daemon, experiment_name: str
) -> None:
    """The server out of reach for 6 s: the daemon reaches it through a proxy whose port closes
    (connections refused: several failed passes, backing off) and opens again on the same port.
    Meanwhile the training job goes on logging, and all of its points arrive afterwards."""
    client = mlflow_server.client()
    run_id = client.create_run(client.create_experiment(experiment_name), run_name="r").info.run_id
    log_steps(client, run_id, range(5))
    with hostile_proxy(mlflow_server.url) as door:  # (closed again on the way out)
        config, tb_url, health_url = daemon_config(
            tmp_path / "c.yaml", tmp_path / "root",
            [mlflow_source("outage", door.url, [experiment_name], poll_interval="1s",
                           max_retries=0)],
        )  # fmt: skip
        daemon = start_daemon(config)
        daemon.wait_event("daemon_ready")
        board = TensorBoardReader(tb_url)
        run = f"outage/{experiment_name}/r"
        board.wait_scalars(run, "loss", 5)

        door.close()
        stopped = time.monotonic()
        log_steps(client, run_id, range(5, 50))
        wait_until(
            lambda: health(health_url)[0] == 503, 20, "/healthz to report the source degraded"
        )
        source = health(health_url)[1]["sources"]["outage"]
        assert source["healthy"] is False and source["consecutive_errors"] >= 2
        assert "cannot connect" in source["last_error"]
        time.sleep(max(0.0, 6 - (time.monotonic() - stopped)))
        assert daemon.process.poll() is None and board.answers()

        with HostileProxy(mlflow_server.url, port=int(door.url.rsplit(":", 1)[1])):
            shown = board.wait_scalars(run, "loss", 50, timeout=120)
            assert [p[1] for p in shown] == list(range(50))
            wait_until(lambda: health(health_url)[0] == 200, 30, "/healthz to recover")
            assert daemon.stop() == 0


def test_notify_socket_gets_ready_and_watchdog_and_sigterm_exits_promptly(
    tmp_path: Path, mlflow_server: MlflowServer, start_daemon, experiment_name: str
) -> None:
    mlflow_server.client().create_experiment(experiment_name)
    config, _, _ = daemon_config(
        tmp_path / "c.yaml", tmp_path / "root",
        [mlflow_source("notify", mlflow_server.url, [experiment_name], poll_interval="1s")],
    )  # fmt: skip
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(60)
        daemon = start_daemon(config, env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000000"})
        messages: list[str] = []
        while not any("WATCHDOG=1" in m for m in messages[1:]) or len(messages) < 4:
            assert len(messages) < 100, messages  # (a recv waits 60 s at most)
            messages.append(sock.recv(4096).decode())
        assert messages[0].startswith("READY=1\nSTATUS=1 source, ")
        assert any("source, " in m and "runs" in m for m in messages)
        daemon.signal(signal.SIGTERM)
        assert daemon.process.wait(60) == 0
        sock.settimeout(1)
        rest = []
        with contextlib.suppress(TimeoutError):
            for _ in range(100):  # until nothing more comes within 1 s
                rest.append(sock.recv(4096).decode())
        assert any("STOPPING=1" in m for m in rest)


def test_a_busy_tensorboard_port_is_one_clear_error(
    tmp_path: Path, mlflow_server: MlflowServer, start_daemon
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config, _, _ = daemon_config(
            tmp_path / "c.yaml", tmp_path / "root",
            [mlflow_source("busy", mlflow_server.url, ["x"])], tensorboard={"port": port},
        )  # fmt: skip
        daemon = start_daemon(config)
        assert daemon.process.wait(30) == 1
    output = daemon.log_path.read_text()
    assert f"tbmirror: TensorBoard port {port} on 127.0.0.1 is already in use" in output
    assert "Traceback" not in output


def test_status_command_reads_the_state_store_while_the_daemon_runs(
    tmp_path: Path, mlflow_server: MlflowServer, start_daemon, experiment_name: str
) -> None:
    client = mlflow_server.client()
    run_id = new_run(client, experiment_name, "r")
    log_steps(client, run_id, range(7))
    config, _, _ = daemon_config(
        tmp_path / "c.yaml", tmp_path / "root",
        [mlflow_source("status", mlflow_server.url, [experiment_name], poll_interval="1s")],
        tensorboard={"enabled": False},
    )  # fmt: skip
    daemon = start_daemon(config)
    daemon.wait_event("source_synced", points=7)
    result = tbmirror("status", "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)
    assert (row["source"], row["experiment"], row["runs"], row["points"]) == (
        "status", experiment_name, 1, 7,
    )  # fmt: skip
    assert row["consecutive_errors"] == 0 and row["lag_seconds"] < 60
    table = tbmirror("status", "--config", str(config), env={"COLUMNS": "300"})
    (line,) = [line for line in table.stdout.splitlines() if experiment_name in line]
    cells = [cell.strip() for cell in line.split("│")[1:-1]]
    assert cells[:4] == ["status", experiment_name, "1", "7"], table.stdout
    assert daemon.stop() == 0


def test_sighup_with_a_bad_url_or_a_yaml_error_keeps_the_old_config_and_no_secret_is_logged(
    tmp_path: Path, start_daemon
) -> None:
    password = "hunter2-fake-password-8812"
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    up = {"name": "up", "type": "uploads", "path": str(uploads), "rescan_interval": "1s"}
    path = tmp_path / "c.yaml"
    config, _, _ = daemon_config(path, tmp_path / "root", [up], tensorboard={"enabled": False})
    good = config.read_text()
    daemon = start_daemon(config)
    daemon.wait_event("daemon_ready")

    def failures() -> list[dict]:
        assert daemon.process.poll() is None, "the daemon died on a reload"
        return [e for e in daemon.events() if e.get("event") == "reload_failed"]

    def reload(text: str) -> list[dict]:
        before = len(failures())
        path.write_text(text)
        daemon.signal(signal.SIGHUP)
        wait_until(lambda: len(failures()) > before, 30, "reload_failed")
        return failures()[before:]

    bad_url = good.replace("sources:\n", (
        "sources:\n- {name: ml, type: mlflow, tracking_uri: 'http://mlflow:50o0', "
        "experiments: [e]}\n"
    ))  # fmt: skip
    (failed,) = reload(bad_url)
    assert failed["error"].startswith(f"{path}: sources[0].tracking_uri: expected a port")
    (failed,) = reload(good + f"extra: {{auth: {{password: {password}: oops}}}}\n")
    assert failed["error"].startswith(f"{path}: line "), failed
    assert ", column " in failed["error"] and "not valid YAML" in failed["error"]

    (uploads / "m.csv").write_text("step,loss\n1,0.5\n")  # the old config still runs
    daemon.wait_event("source_synced", source="up", points=1)
    path.write_text(good.replace("sources:\n", f"sources:\n- {{name: up2, type: uploads, "
                                               f"path: '{uploads}'}}\n"))  # fmt: skip
    daemon.signal(signal.SIGHUP)
    daemon.wait_event("reloaded", sources=2)
    assert daemon.stop() == 0
    log = daemon.log_path.read_text()
    assert password not in log and "hunter2" not in log


def test_a_source_added_by_sighup_is_recovered_before_it_writes(
    tmp_path: Path, mlflow_server: MlflowServer, start_daemon, experiment_name: str
) -> None:
    """A source left out of the config since a crash may have left uncommitted files that the
    running TensorBoard already read: when a reload adds it back, recovery removes them and
    TensorBoard starts afresh (a source added with nothing to recover keeps it running)."""
    client = mlflow_server.client()
    log_steps(client, new_run(client, experiment_name, "one"), range(3))
    one = mlflow_source("one", mlflow_server.url, [experiment_name], poll_interval="1s")
    back = mlflow_source("back", mlflow_server.url, [experiment_name], poll_interval="1s")
    path = tmp_path / "c.yaml"
    config, tb_url, _ = daemon_config(path, tmp_path / "root", [one])
    leftover = tmp_path / "root" / "back" / experiment_name / "one"
    leftover.mkdir(parents=True)
    stray = leftover / "events.out.tfevents.1700000000.crashed.1.1"
    stray.write_bytes(events.frame_all([summaries.file_version(1.0)]))
    daemon = start_daemon(config)
    board = TensorBoardReader(tb_url)
    board.wait_scalars(f"one/{experiment_name}/one", "loss", 3)
    assert stray.exists(), "not this daemon's source yet: left alone"
    (before,) = daemon.tensorboard_pids()

    path.write_text(path.read_text().replace("sources:\n", "sources:\n" + _yaml_item(back), 1))
    daemon.signal(signal.SIGHUP)
    daemon.wait_event("reloaded", sources=2)
    assert daemon.wait_event("added_sources_recovered")["orphans_removed"] == 1
    board.wait_scalars(f"back/{experiment_name}/one", "loss", 3, timeout=60)
    assert not stray.exists()
    assert len(daemon.tensorboard_pids() - {before}) == 1, "TensorBoard started afresh"
    assert daemon.stop() == 0


def test_tensorboard_output_written_a_line_at_a_time_is_read_in_gathered_chunks(
    monkeypatch,
) -> None:
    """A TensorBoard warning per unopenable file writes thousands of lines a second, each its own
    write: every read that empties the pipe is followed by a gathering pause before the next read
    (what that saves is a benchmark's to measure, not a test's)."""
    import threading

    import structlog

    from tbmirror.service import tensorboard

    lines = 2000
    read_end, write_end = os.pipe()
    calls: list[tuple[str, float]] = []  # ("read", bytes returned) and ("sleep", seconds)

    def write_lines() -> None:
        with open(write_end, "wb", buffering=0) as out:
            for i in range(lines):
                out.write(b"WARN Too many open files: run%d\n" % i)
                time.sleep(0.0005)

    class RecordingReader(io.BufferedReader):
        def read1(self, size: int = -1) -> bytes:
            chunk = super().read1(size)
            calls.append(("read", len(chunk)))
            return chunk

    class RecordingTime:
        monotonic = staticmethod(time.monotonic)

        @staticmethod
        def sleep(seconds: float) -> None:
            calls.append(("sleep", seconds))
            time.sleep(seconds)

    monkeypatch.setattr(tensorboard, "time", RecordingTime)
    writer = threading.Thread(target=write_lines)
    writer.start()
    with structlog.testing.capture_logs() as captured, RecordingReader(io.FileIO(read_end)) as out:
        tensorboard._forward_output(out, pid=1)
    writer.join()
    logged = sum(1 for e in captured if e["event"] == "tensorboard_output")
    counted = sum(e["lines"] for e in captured if e["event"] == "tensorboard_output_suppressed")
    assert (logged, logged + counted) == (tensorboard.OUTPUT_LINES, lines)
    reads = [i for i, (kind, _) in enumerate(calls) if kind == "read"]
    assert calls[reads[-1]] == ("read", 0), "the output read to its end"
    for this, following in itertools.pairwise(reads):  # a short read, then a pause, then a read
        if calls[this][1] < tensorboard.OUTPUT_READ_BYTES:
            pauses = calls[this + 1 : following]
            assert pauses == [("sleep", tensorboard.OUTPUT_GATHER_SECONDS)], calls[this:following]


def test_tensorboard_gets_the_hard_limit_of_open_files_and_its_output_is_bounded() -> None:
    """Its data server keeps every run's events file open (100,000 runs: 100,000 files); a
    TensorBoard that cannot open them says so per file, which must not flood our log."""
    import resource
    import subprocess
    import sys

    import structlog

    from tbmirror.service import tensorboard

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
    try:
        child = subprocess.run(
            [sys.executable, "-c", "import resource; print(*resource.getrlimit(7))"],
            preexec_fn=tensorboard._prepare_child, capture_output=True, text=True, check=True,
        )  # fmt: skip
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert resource.RLIMIT_NOFILE == 7 and child.stdout.split() == [str(hard)] * 2

    output = io.BytesIO(b"".join(b"WARN Too many open files: run%d\n" % i for i in range(1000)))
    with structlog.testing.capture_logs() as captured:
        tensorboard._forward_output(output, pid=1)
    lines = [e for e in captured if e["event"] == "tensorboard_output"]
    assert len(lines) == tensorboard.OUTPUT_LINES and lines[0]["line"].endswith("run0")
    assert [e["lines"] for e in captured if e["event"] == "tensorboard_output_suppressed"] == [
        1000 - tensorboard.OUTPUT_LINES
    ]
