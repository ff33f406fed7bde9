"""Several processes on one mirror root (sharding by source): each locks the `<root>/<source>`
subtrees it owns, never touches another's, and a second process on the same subtree is refused
with the holder's pid."""

from __future__ import annotations

from pathlib import Path

from mlflow.entities import Metric

from conftest import (
    MlflowServer,
    daemon_config,
    mlflow_source,
    new_run,
    tbmirror,
    wait_until,
    write_config,
)


def test_daemons_sharing_a_root_keep_to_their_own_sources(
    tmp_path: Path, start_daemon, mlflow_server: MlflowServer, experiment_name: str
) -> None:
    client = mlflow_server.client()
    run_id = new_run(client, experiment_name, "r")
    client.log_batch(
        run_id, metrics=[Metric("m", float(i), 1_700_000_000_000 + i, i) for i in range(5)]
    )
    root = tmp_path / "root"
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    first_dir.mkdir(), second_dir.mkdir()
    first, _, _ = daemon_config(
        first_dir / "tbmirror.yaml", root,
        [mlflow_source("team-a", mlflow_server.url, [experiment_name], poll_interval="1s")],
        tensorboard={"enabled": False},
    )  # fmt: skip
    daemon = start_daemon(first)
    events = root / "team-a" / experiment_name / "r"
    wait_until(lambda: list(events.glob("events.out.tfevents.*")), 60, "team-a's first pass")

    # Another process with its own state store, the same root and the same source: refused.
    same = write_config(
        second_dir / "same.yaml",
        root,
        [mlflow_source("team-a", mlflow_server.url, [experiment_name])],
    )
    result = tbmirror("sync", "--config", str(same))
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert f"in use by another tbmirror process (pid {daemon.process.pid})" in line
    assert "team-a" in line

    # A second process with another source on the same root: both mirror, neither removes the
    # other's files (the first daemon's start-up recovery ran before; this one's skips team-a).
    stray = events / "events.out.tfevents.1700000000.elsewhere.1.1"
    other = write_config(
        second_dir / "other.yaml",
        root,
        [mlflow_source("team-b", mlflow_server.url, [experiment_name])],
    )
    assert tbmirror("sync", "--config", str(other)).returncode == 0
    assert (root / "team-b" / experiment_name / "r").is_dir()
    before = sorted(p.name for p in events.iterdir())
    stray.write_bytes(b"written by someone else")  # not team-b's to judge
    assert tbmirror("sync", "--config", str(other)).returncode == 0
    assert stray.exists() and sorted(p.name for p in events.iterdir()) == sorted(
        [*before, stray.name]
    )
    stray.unlink()
    assert daemon.process.poll() is None
    assert daemon.stop() == 0
