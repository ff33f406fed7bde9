"""Retention (issue 13): a run that leaves the selection goes to `mirror.archive` with its children
and comes back from it without a history request; a kill at each step of that move loses and
duplicates nothing. Moves and refetches are tested in-process in test_retention_scripted.py;
here, what needs a real process: kills, the prune and status commands, the daemon."""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import (
    DaemonProcess,
    MlflowServer,
    TensorBoardReader,
    daemon_config,
    mlflow_source,
    tb_run,
    tbmirror,
    wait_until,
    write_config,
)
from helpers.hostile_proxy import HostileProxy
from helpers.kills import kill_at_step
from test_media import picture
from test_selection import make_run

HISTORY = r"/metrics/get-history"


def make_window(tmp_path: Path, client: Any, url: str, experiment_name: str) -> dict[str, Any]:
    """An experiment with an older run (with a child) and a newer one, logged with `client`; a
    config writer (sources on `url`) for a root and archive of this test's own (one file
    system)."""
    now = int(time.time() * 1000)
    older = make_run(client, experiment_name, "older", start_ms=now - 60_000)
    make_run(client, experiment_name, "child", parent=older, start_ms=now - 50_000)
    client.log_metric(older, "acc", 0.5, step=1)
    make_run(client, experiment_name, "newer", start_ms=now - 10_000)
    root, archive = tmp_path / "root", tmp_path / "archive"

    def config(max_runs: int) -> Path:
        source = mlflow_source("src", url, [experiment_name], max_runs=max_runs)
        path = write_config(tmp_path / "tbmirror.yaml", root, [source])
        text = path.read_text().replace("  state:", f"  archive: {archive}\n  state:", 1)
        path.write_text(text)
        return path

    return {"config": config, "root": root / "src" / experiment_name, "url": url,
            "archive": archive / "src" / experiment_name, "older": older}  # fmt: skip


@pytest.fixture
def window(
    tmp_path: Path, proxy: HostileProxy, mlflow_server: MlflowServer, experiment_name: str
) -> dict[str, Any]:
    """`make_window` on the real server, through the recording proxy."""
    return make_window(tmp_path, mlflow_server.client(), proxy.url, experiment_name)


def tree(directory: Path) -> dict[str, bytes]:
    """Every file below `directory`, by relative path."""
    if not directory.is_dir():
        return {}
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def sync(config: Path, **env: str) -> str:
    result = tbmirror("sync", "--config", str(config), env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.parametrize("step", ["move_recorded", "move_renamed", "move_applied"])
def test_a_kill_at_each_step_of_an_archive_move_loses_and_duplicates_nothing(
    step: str, window: dict[str, Any], tmp_path: Path
) -> None:
    config: Callable[[int], Path] = window["config"]
    sync(config(2))
    mirrored = tree(window["root"] / "older")

    command = [sys.executable, "-m", "tbmirror", "sync", "--config", str(config(1))]
    kill_at_step(command, step, tmp_path / "killed.log")

    sync(config(1))  # recovery, then the pass: the run ends up archived, once
    assert not (window["root"] / "older").exists()
    assert tree(window["archive"] / "older") == mirrored
    sync(config(2))  # and back, once
    assert tree(window["root"] / "older") == mirrored
    assert tree(window["archive"]) == {}


def test_prune_removes_exactly_what_its_dry_run_lists_and_leaves_store_and_tree_agreeing(
    tmp_path: Path, mlflow_server: MlflowServer, experiment_name: str
) -> None:
    client = mlflow_server.client()
    kept, dropped, elsewhere = (f"{experiment_name}-{x}" for x in ("kept", "dropped", "other"))
    for experiment in (kept, dropped, elsewhere):
        make_run(client, experiment, "run")
    root = tmp_path / "root"
    config = tmp_path / "tbmirror.yaml"
    write_config(config, root, [
        mlflow_source("src", mlflow_server.url, [kept, dropped]),
        mlflow_source("gone", mlflow_server.url, [elsewhere]),
    ])  # fmt: skip
    sync(config)
    write_config(config, root, [mlflow_source("src", mlflow_server.url, [kept])])
    sync(config)  # the daemon never removes what its config does not cover
    assert tree(root / "src" / dropped) and tree(root / "gone")

    status = tbmirror("status", "--config", str(config), "--json")
    notes = {(r["source"], r["experiment"]): r["prune"] for r in json.loads(status.stdout)}
    assert notes[("src", dropped)] == (
        f"experiment {dropped!r} not configured: tbmirror prune removes it"
    )
    assert notes[("gone", "gone")].startswith("source not configured")
    before = tree(root)
    listed = tbmirror("prune", "--config", str(config), "--dry-run")
    assert listed.returncode == 0 and tree(root) == before, listed.stdout + listed.stderr
    would = sorted(line.replace("would remove", "") for line in listed.stdout.splitlines())
    assert len(would) == 2, listed.stdout
    pruned = tbmirror("prune", "--config", str(config))
    assert pruned.returncode == 0, pruned.stdout + pruned.stderr
    assert sorted(line.replace("removed", "") for line in pruned.stdout.splitlines()) == would
    assert not tree(root / "src" / dropped) and not tree(root / "gone")
    assert tree(root / "src" / kept)

    again = tbmirror("prune", "--config", str(config), "--dry-run")
    assert again.stdout.startswith("nothing to prune"), again.stdout
    with sqlite3.connect(tmp_path / "state.db") as db:
        committed = {path: length for path, length in db.execute("SELECT path, length FROM files")}
    on_disk = {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*tfevents*")}
    assert on_disk == committed
    assert " 0 bytes" in sync(config)  # nothing left to write
    assert {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*tfevents*")} == on_disk


def test_the_daemon_shows_a_live_runs_new_images_and_archives_it_when_it_ends(
    tmp_path: Path,
    mlflow_server: MlflowServer,
    start_daemon: Callable[..., DaemonProcess],
    experiment_name: str,
) -> None:
    client = mlflow_server.client()
    live = make_run(client, experiment_name, "live", status=None)
    client.log_image(live, picture(1), key="pred", step=0)
    root, archive = tmp_path / "root", tmp_path / "archive"
    source = mlflow_source("src", mlflow_server.url, [experiment_name], poll_interval=1,
                           run_statuses=["RUNNING"])  # fmt: skip
    config, tensorboard_url, _ = daemon_config(tmp_path / "daemon.yaml", root, [source])
    config.write_text(config.read_text().replace("  state:", f"  archive: {archive}\n  state:"))
    daemon = start_daemon(config)
    board = TensorBoardReader(tensorboard_url)
    run = tb_run("src", experiment_name, "live")
    wait_until(lambda: len(board.images(run, "pred")) == 1, 60, "the first image")
    client.log_image(live, picture(2), key="pred", step=1)  # seen by the next quick pass
    wait_until(lambda: len(board.images(run, "pred")) == 2, 30, "the second image")
    mirrored = tree(root / "src" / experiment_name / "live")

    client.set_terminated(live)  # out of run_statuses: runs/get proves it, it goes
    wait_until(lambda: tree(archive / "src" / experiment_name / "live") == mirrored, 30, "archive")
    assert not (root / "src" / experiment_name / "live").exists()
    wait_until(lambda: run not in board.runs(), 30, "the run to leave TensorBoard")
    assert daemon.stop() == 0
