"""TensorBoard within `tensorboard.memory_budget`: the points per series it keeps, and the
estimate `status` and `check` show (tensorboard_budget.py); a real daemon and TensorBoard."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import structlog.testing

from conftest import DaemonProcess, TensorBoardReader, daemon_config, tbmirror, wait_until
from tbmirror import tensorboard_budget as budget
from tbmirror.app import Mirror
from tbmirror.config import parse_settings
from tbmirror.errors import MirrorError
from tbmirror.mirror import events, summaries
from tbmirror.service.tensorboard import TensorBoardSupervisor

POINTS = 400  # in the one uploaded series
KEPT = 60  # points per series the test's budget leaves room for


def test_short_series_keep_every_point_and_long_ones_share_the_rest() -> None:
    room = budget.BASE_BYTES + budget.RUN_BYTES * 3 + budget.POINT_BYTES * 1_000
    # 10 series of 20 points fit whole (200); the 2 long ones share the other 800.
    series = [(20, 10), (5_000, 1), (10_000, 1)]
    kept = budget.points_per_series(room, 3, series, cap=100_000)
    assert kept == 400
    assert budget.estimate(3, series, kept) == room
    assert budget.points_per_series(room, 3, [(20, 10)], cap=100_000) == 100_000  # all fit
    assert budget.points_per_series(room, 3, series, cap=300) == 300  # never above the cap
    assert budget.points_per_series(budget.BASE_BYTES, 3, series, 100_000) == (
        budget.MIN_POINTS_PER_SERIES  # a budget too small for any: the floor, and a warning
    )
    assert budget.points_per_series(budget.BASE_BYTES, 3, series, cap=5) == 5  # the cap first
    within, text = budget.describe(budget.BASE_BYTES, 3, series, 100_000)
    assert not within and "past the budget" in text


def test_a_store_that_cannot_say_what_it_holds_leaves_tensorboard_at_its_cap(
    tmp_path: Path,
) -> None:
    """At TensorBoard's start the store is asked what the mirror holds; when it cannot answer
    (here a table gone from under it), that is a MirrorError naming the store, and the
    supervisor starts TensorBoard all the same with `scalars_samples` (the points per series its
    command line asks for), with a warning."""
    settings = parse_settings(
        f"mirror: {{root: {tmp_path / 'root'}, state: {tmp_path / 'state.db'}}}\n"
        "tensorboard: {memory_budget: 1GB, scalars_samples: 777}\n"
        f"sources: [{{name: up, type: uploads, path: {upload_dir(tmp_path)}}}]\n"
    )
    mirror = Mirror.open(settings)
    try:
        supervisor = TensorBoardSupervisor(settings.tensorboard, tmp_path / "root", mirror.holdings)
        with sqlite3.connect(tmp_path / "state.db") as store:
            store.execute("DROP TABLE tails")
        with pytest.raises(MirrorError, match="the state store cannot say what the mirror holds"):
            mirror.holdings()
        with structlog.testing.capture_logs() as logged:
            assert supervisor.scalars_samples() == 777
        assert [e["event"] for e in logged] == ["tensorboard_memory_unknown"], logged
    finally:
        mirror.close()


def upload_dir(tmp_path: Path) -> Path:
    """An upload directory with one job's tfevents file: tag loss, steps 0..POINTS-1."""
    job = tmp_path / "uploads" / "job"
    job.mkdir(parents=True)
    encoder = summaries.ScalarEncoder("loss")
    payloads = [summaries.file_version(1_000.0)]
    payloads += [encoder.encode(1_000.0 + step, step, step / POINTS) for step in range(POINTS)]
    (job / "events.out.tfevents.1700000000.job").write_bytes(events.frame_all(payloads))
    return tmp_path / "uploads"


def test_a_budget_sets_the_points_tensorboard_keeps_per_series(
    tmp_path: Path, start_daemon: Callable[..., DaemonProcess]
) -> None:
    """The mirror holds one run (a tailed file: one series of its records, file_version
    included); the budget has room for KEPT of them: TensorBoard keeps KEPT points of the
    series (its last among them), while the mirror's copy holds every one; `status` and `check`
    show the estimate, and a budget below what TensorBoard needs with nothing loaded fails
    `check` and warns in `status`."""
    room = budget.BASE_BYTES + budget.RUN_BYTES + budget.POINT_BYTES * KEPT
    sources = [{"name": "up", "type": "uploads", "path": str(upload_dir(tmp_path))}]
    config, url, _ = daemon_config(
        tmp_path / "tbmirror.yaml", tmp_path / "root", sources,
        tensorboard={"memory_budget": room, "scalars_samples": 100_000},
    )  # fmt: skip
    synced = tbmirror("sync", "--config", str(config))
    assert synced.returncode == 0, synced.stderr

    status = tbmirror("status", "--config", str(config))
    assert status.returncode == 0, status.stderr
    assert f"{KEPT} points per series kept" in status.stdout, status.stdout
    checked = tbmirror("check", "--config", str(config))
    assert f"ok    tensorboard.memory_budget: ~{(room / 1024**2):,.0f} MiB" in checked.stdout, (
        checked.stdout
    )

    daemon = start_daemon(config)
    daemon.wait_event("tensorboard_ready", timeout=120)
    board = TensorBoardReader(url)
    deadline = time.monotonic() + 60
    points = wait_until(lambda: board.scalars("up/job", "loss"), 60, "up/job's loss series")
    while len(points) < KEPT and time.monotonic() < deadline:  # the reload may be under way
        time.sleep(0.5)
        points = board.scalars("up/job", "loss")
    assert len(points) == KEPT, f"TensorBoard keeps {len(points)} points, expected {KEPT}"
    assert points[-1][1] == POINTS - 1, "TensorBoard's sampling keeps the last point"
    daemon.stop()

    small = daemon_config(
        tmp_path / "small.yaml", tmp_path / "root", sources,
        tensorboard={"memory_budget": budget.BASE_BYTES // 2},
    )[0]  # fmt: skip
    checked = tbmirror("check", "--config", str(small))
    assert checked.returncode == 1
    assert "FAIL  tensorboard.memory_budget:" in checked.stdout, checked.stdout
    assert "past the budget" in checked.stdout
    assert "WARNING" in tbmirror("status", "--config", str(small)).stdout
