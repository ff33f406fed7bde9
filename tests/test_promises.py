"""README promises of the running daemon, each checked across real processes: one process per
state store, a reload never moves the mirror, a failing source backs off while the others keep
their schedule."""

from __future__ import annotations

import signal
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from conftest import DaemonProcess, daemon_config, tbmirror, wait_until
from tbmirror.processes import free_port


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
    assert f"is in use by another tbmirror process (pid {daemon.process.pid})" in said, said
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
    """The delay the scheduler (service/scheduler.py) puts before the next poll after the
    `failures`-th failed pass in a row: today a fixed 1.6-2.0 x poll_interval whatever the count.
    When the backoff becomes exponential, this line is the one to change."""
    return 1.6 * poll_interval, 2.0 * poll_interval


def test_a_failing_source_backs_off_and_the_others_keep_their_schedule(
    tmp_path: Path, start_daemon: Callable[..., DaemonProcess]
) -> None:
    poll = 1.0
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
