"""README promises of the running daemon, each checked across real processes: one process per
state store, a reload never moves the mirror, a failing source backs off while the others keep
their schedule."""

from __future__ import annotations

import itertools
import signal
import socket
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from conftest import (
    DaemonProcess,
    MlflowServer,
    daemon_config,
    mlflow_source,
    new_run,
    tbmirror,
    wait_until,
)
from helpers.hostile_proxy import HostileProxy
from tbmirror.processes import free_port
from test_daemon import health


def uploads(name: str, path: Path) -> dict:
    path.mkdir(parents=True, exist_ok=True)
    return {"name": name, "type": "uploads", "path": str(path), "rescan_interval": "1s"}


def test_one_process_per_state_store_and_a_reload_never_moves_the_mirror(
    tmp_path: Path, start_daemon: Callable[..., DaemonProcess]
) -> None:
    """README: "Only one process may use a state store at a time (`tbmirror status` only
    reads)", and mirror.root / mirror.state "cannot change without a restart" (SIGHUP)."""
    path = tmp_path / "c.yaml"
    config, _, _ = daemon_config(path, tmp_path / "root", [uploads("up", tmp_path / "in")],
                                 tensorboard={"enabled": False})  # fmt: skip
    good = config.read_text()
    daemon = start_daemon(config)
    daemon.wait_event("daemon_ready")

    # a second process on the same store, with a source and a root of its own
    other = tmp_path / "other"
    other.mkdir()
    second = other / "c.yaml"
    second.write_text(
        good.replace(str(tmp_path / "root"), str(other / "root"))
        .replace("name: up", "name: elsewhere")
        .replace(str(tmp_path / "in"), str(other / "in"))
    )
    (other / "in").mkdir()
    assert f"state: {tmp_path / 'state.db'}" in second.read_text()
    refused = tbmirror("sync", "--config", str(second))
    said = refused.stdout + refused.stderr
    assert refused.returncode != 0, said
    holder = f"(pid {daemon.process.pid} on {socket.gethostname()})"
    assert f"is in use by another tbmirror process {holder}" in said, said
    written = [p for p in (other / "root").rglob("*") if p.is_file()]
    assert written == [], "the refused process wrote into its mirror"
    status = tbmirror("status", "--config", str(config), "--json")
    assert status.returncode == 0, status.stdout + status.stderr

    # a reload that would move the mirror or the store is refused; the old config runs on
    def failures() -> list[dict]:
        return [e for e in daemon.events() if e.get("event") == "reload_failed"]

    for key, new_value in [("root", tmp_path / "moved"), ("state", tmp_path / "moved.db")]:
        before = len(failures())
        old_value = tmp_path / ("root" if key == "root" else "state.db")
        path.write_text(good.replace(f"{key}: {old_value}", f"{key}: {new_value}"))
        assert path.read_text() != good
        daemon.signal(signal.SIGHUP)
        failed = wait_until(lambda n=before: failures()[n:], 60, f"a new mirror.{key} refused",
                            saw=lambda: daemon.events()[-3:])[-1]  # fmt: skip
        assert failed["error"] == "mirror.root and mirror.state cannot change without a restart"
        assert not new_value.exists()
    (tmp_path / "in" / "m.csv").write_text("step,loss\n1,0.5\n")
    daemon.wait_event("source_synced", source="up", points=1)
    assert list((tmp_path / "root" / "up").iterdir()), "the old root is still mirrored into"
    assert daemon.stop() == 0


def backoff_bounds(poll_interval: float, failures: int) -> tuple[float, float]:
    """The delay the scheduler (service/scheduler.py) puts before the next ordinary pass after
    the `failures`-th failed pass in a row: poll_interval x 2^failures, at most 5 minutes,
    jittered to between half and all of it."""
    ceiling = min(300.0, poll_interval * 2**failures)
    return ceiling / 2, ceiling


def test_a_failing_source_backs_off_and_the_others_keep_their_schedule(
    tmp_path: Path, start_daemon: Callable[..., DaemonProcess]
) -> None:
    poll = 0.5  # (the backoff is in poll intervals: 0.5 s proves what 1 s does, in half the time)
    failing = {
        "name": "down", "type": "mlflow", "tracking_uri": f"http://127.0.0.1:{free_port()}",
        "experiments": ["e"], "max_retries": 0, "poll_interval": f"{poll:g}s",
    }  # fmt: skip
    config, _, _ = daemon_config(
        tmp_path / "c.yaml", tmp_path / "root", [failing, uploads("up", tmp_path / "in")],
        tensorboard={"enabled": False},
    )  # fmt: skip
    daemon = start_daemon(config)
    daemon.wait_event("daemon_ready")

    def backoffs() -> list[dict]:
        return [e for e in daemon.events() if e.get("event") == "source_backoff"]

    wait_until(lambda: len(backoffs()) >= 4, 120, "four failed passes", saw=backoffs)
    csv = tmp_path / "in" / "m.csv"
    csv.write_text("step,loss\n1,0.5\n")  # the healthy source syncs meanwhile
    daemon.wait_event("source_synced", source="up", points=1)
    assert daemon.stop() == 0

    found = backoffs()
    for failures, event in enumerate(found, start=1):
        low, high = backoff_bounds(poll, failures)
        assert event["source"] == "down" and low <= event["seconds"] <= high, found
    # each failed pass starts no sooner than the delay before it (a lower bound: load only
    # makes it later); the log times are those of the passes' ends
    ends = [datetime.fromisoformat(e["timestamp"]).timestamp() for e in found]
    for index in range(1, len(found)):
        gap, delay = ends[index] - ends[index - 1], found[index - 1]["seconds"]
        assert gap >= delay - 0.1, f"a pass {gap:.2f} s after a backoff of {delay} s: {found}"


def test_backoff_without_blindness_a_recovered_source_is_probed_back_at_once(
    tmp_path: Path,
    mlflow_server: MlflowServer,
    proxy: HostileProxy,
    experiment_name: str,
    start_daemon: Callable[..., DaemonProcess],
) -> None:
    """Issue 28 defect 6: a source answering 401 backs off exponentially (the ordinary pass
    waits 2, 4, 8, ... poll intervals; on main a fixed 1.6-2.0), while a quick pass probes it at
    the poll rate; once the server answers again, a probe brings the source back long before
    the backoff ends, and /healthz is healthy after that first good pass."""
    new_run(mlflow_server.client(), experiment_name, "r")
    poll = 0.5  # (as above)
    source = mlflow_source("flaky", proxy.url, [experiment_name], poll_interval=f"{poll:g}s")
    config, _, health_url = daemon_config(
        tmp_path / "c.yaml", tmp_path / "root", [source], tensorboard={"enabled": False},
        logging={"level": "debug"},
    )  # fmt: skip
    proxy.set("status", code=401, body={"error_code": "UNAUTHENTICATED", "message": "no"})
    daemon = start_daemon(config)

    def backoffs() -> list[dict]:
        return [e for e in daemon.events() if e.get("event") == "source_backoff"]

    wait_until(lambda: len(backoffs()) >= 4, 120, "four backoffs", saw=backoffs)
    found = backoffs()
    assert [e["failures"] for e in found[:4]] == [1, 2, 3, 4], found
    for event in found[:4]:
        low, high = backoff_bounds(poll, event["failures"])
        assert low <= event["seconds"] <= high, found
    failed = [e for e in daemon.events() if e.get("event") == "source_failed"]
    assert len(failed) > len(backoffs()), "no probe between the ordinary passes"
    proxy.clear()  # the server takes our credentials again
    recovered = daemon.wait_event("source_recovered", timeout=60, source="flaky")
    assert recovered["probe"] is True, recovered  # not the ordinary pass after the backoff
    assert recovered["failures"] == len(backoffs()) >= 4, (recovered, backoffs())
    code, body = health(health_url)
    assert (code, body["sources"]["flaky"]["healthy"]) == (200, True), body
    assert daemon.stop() == 0


def test_a_slow_source_is_never_polled_twice_at_once_nor_in_a_burst_after(
    tmp_path: Path,
    mlflow_server: MlflowServer,
    proxy: HostileProxy,
    experiment_name: str,
    start_daemon: Callable[..., DaemonProcess],
) -> None:
    """README: a source is "never polled twice at once" and missed polls coalesce. Every search
    answers 4 s late while the source is due every second: no two passes (nor searches) overlap,
    and once the server is quick again, the polls that fell due meanwhile do not run as a burst:
    at most two passes (the coalesced one, and the next on schedule) start within 0.9 s of the
    slow one's end, where a queue of missed polls would start one after another at once."""
    new_run(mlflow_server.client(), experiment_name, "r")
    delay, search = 4.0, r"/runs/search"
    source = mlflow_source("slow", proxy.url, [experiment_name], poll_interval="1s",
                           timeout="30s")  # fmt: skip
    config, _, _ = daemon_config(
        tmp_path / "c.yaml",
        tmp_path / "root",
        [source],
        tensorboard={"enabled": False},
        logging={"level": "debug"},
    )  # fmt: skip (idle passes: debug)
    proxy.set("delay", path=search, seconds=delay)
    daemon = start_daemon(config)

    def answered() -> list:
        return [s for s in proxy.seen(search, "delay") if s.status is not None]

    wait_until(lambda: len(answered()) >= 3, 120, "three slow searches", saw=answered)
    proxy.clear()
    last = max(proxy.seen(search, "delay"), key=lambda s: s.started)
    wait_until(lambda: last.status is not None, 60, "the last slow search answered")
    answered_at = last.started + last.seconds  # (the proxy's clock)
    wait_until(lambda: any(s.started > answered_at + 3 for s in proxy.seen(search, None)), 60,
               "quick passes after the slow ones")  # fmt: skip
    assert daemon.stop() == 0

    slow = sorted(proxy.seen(search, "delay"), key=lambda s: s.started)
    for before, after in itertools.pairwise(slow):
        assert after.started >= before.started + before.seconds, "two searches at once"
    passes = [  # (start, end) in wall time, from the log
        (end - e["duration_ms"] / 1000, end)
        for e in daemon.events()
        if e.get("event") == "source_synced"
        and (end := datetime.fromisoformat(e["timestamp"]).timestamp())
    ]
    for before, after in itertools.pairwise(passes):
        assert after[0] >= before[1] - 0.01, f"two passes at once: {passes}"  # (ms rounding)
    slow_passes = [p for p in passes if p[1] - p[0] >= delay]
    assert slow_passes, passes
    slow_end = slow_passes[-1][1]
    burst = [p for p in passes if slow_end <= p[0] < slow_end + 0.9]
    assert len(burst) <= 2, f"{len(burst)} passes started within 0.9 s of the slow one's end"
