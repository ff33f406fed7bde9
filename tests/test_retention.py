"""Retention (issue 13): a run that leaves the selection goes to `mirror.archive` with its children
and comes back from it without a history request; a kill at each step of that move loses and
duplicates nothing. A recording proxy (helpers/hostile_proxy.py, no fault) counts the requests."""

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


@pytest.fixture
def window(
    tmp_path: Path, proxy: HostileProxy, mlflow_server: MlflowServer, experiment_name: str
) -> dict[str, Any]:
    """An experiment with an older run (with a child) and a newer one; a config writer for a
    root and archive of this test's own (one file system)."""
    client = mlflow_server.client()
    now = int(time.time() * 1000)
    older = make_run(client, experiment_name, "older", start_ms=now - 60_000)
    make_run(client, experiment_name, "child", parent=older, start_ms=now - 50_000)
    client.log_metric(older, "acc", 0.5, step=1)
    make_run(client, experiment_name, "newer", start_ms=now - 10_000)
    root, archive = tmp_path / "root", tmp_path / "archive"

    def config(max_runs: int) -> Path:
        source = mlflow_source("src", proxy.url, [experiment_name], max_runs=max_runs)
        path = write_config(tmp_path / "tbmirror.yaml", root, [source])
        text = path.read_text().replace("  state:", f"  archive: {archive}\n  state:", 1)
        path.write_text(text)
        return path

    return {"config": config, "root": root / "src" / experiment_name, "url": proxy.url,
            "archive": archive / "src" / experiment_name, "older": older}  # fmt: skip


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


def test_a_run_leaving_the_window_is_archived_and_comes_back_without_history_requests(
    proxy: HostileProxy, window: dict[str, Any]
) -> None:
    config: Callable[[int], Path] = window["config"]
    sync(config(2))
    mirrored = tree(window["root"] / "older")
    assert "child" in {p.split("/")[0] for p in mirrored} and len(mirrored) == 2

    assert "2 left the selection" in sync(config(1))  # older, and its child with it
    assert not (window["root"] / "older").exists()
    assert tree(window["archive"] / "older") == mirrored
    assert set(tree(window["root"])) == {p for p in tree(window["root"]) if p.startswith("newer")}

    before = len(proxy.requests)
    sync(config(2))
    assert tree(window["root"] / "older") == mirrored  # back, byte for byte
    assert not (window["archive"] / "older").exists()
    back = [s.target for s in proxy.requests[before:] if HISTORY in s.target]
    assert back == [], back  # nothing fetched again


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


def test_archived_runs_keep_distinct_names_children_and_a_dropped_archive_costs_a_refetch(
    tmp_path: Path, mlflow_server: MlflowServer, window: dict[str, Any], experiment_name: str
) -> None:
    config: Callable[[int], Path] = window["config"]
    client = mlflow_server.client()
    sync(config(2))
    sync(config(1))  # older (and its child) archived
    time.sleep(0.01)
    again = make_run(client, experiment_name, "older", start_ms=int(time.time() * 1000))
    sync(config(1))  # the new "older" takes the root's name; "newer" leaves for the archive
    make_run(client, experiment_name, "newest", start_ms=int(time.time() * 1000) + 1000)
    sync(config(1))  # the new "older" leaves too: the archive's "older" is taken
    archived = {p.split("/")[0] for p in tree(window["archive"])}
    assert archived == {"older", f"older-{again[:8]}", "newer"}, archived
    assert {p.split("/")[0] for p in tree(window["root"])} == {"newest"}

    sync(config(4))  # all back, each once, the child still with its parent
    back = {str(Path(p).parent) for p in tree(window["root"])}
    assert {"older", "older/child", "newer", "newest"} <= back and len(back) == 5, back
    assert tree(window["archive"]) == {}

    sync(config(1))
    plain = write_config(tmp_path / "plain.yaml", tmp_path / "root",
                         [mlflow_source("src", window["url"], [experiment_name])])  # fmt: skip
    sync(plain)  # no archive any more: archived runs are mirrored anew, nothing fails
    assert {"older/child", "newer", "newest"} <= {str(Path(p).parent) for p in tree(window["root"])}


def test_under_a_filter_a_parent_leaving_takes_its_children_for_good(
    tmp_path: Path, mlflow_server: MlflowServer, experiment_name: str
) -> None:
    client = mlflow_server.client()
    parent = make_run(client, experiment_name, "parent", team="vision")
    make_run(client, experiment_name, "child", parent=parent)  # children carry no team tag
    root, archive = tmp_path / "root", tmp_path / "archive"

    def config(team: str) -> Path:
        source = mlflow_source("src", mlflow_server.url, [experiment_name],
                               filter=f"tags.team = '{team}'")  # fmt: skip
        path = write_config(tmp_path / "tbmirror.yaml", root, [source])
        path.write_text(path.read_text().replace("  state:", f"  archive: {archive}\n  state:"))
        return path

    sync(config("vision"))
    assert {str(Path(p).parent) for p in tree(root / "src" / experiment_name)} == {
        "parent", "parent/child",
    }  # fmt: skip
    assert "2 left the selection" in sync(config("nlp"))
    for _ in range(2):  # and they stay out
        assert tree(root / "src" / experiment_name) == {}
        assert {str(Path(p).parent) for p in tree(archive / "src" / experiment_name)} == {
            "parent", "parent/child",
        }  # fmt: skip
        sync(config("nlp"))


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
