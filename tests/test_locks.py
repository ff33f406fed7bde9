"""Several processes on one mirror root (sharding by source): each locks the `<root>/<source>`
subtrees it owns, never touches another's, and a second process on the same subtree is refused
naming the holder's pid and host."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.entities import Metric

from conftest import (
    REPO,
    MlflowServer,
    daemon_config,
    mlflow_source,
    new_run,
    tbmirror,
    wait_until,
    write_config,
)
from tbmirror.errors import MirrorError
from tbmirror.journal.locks import SubtreeLocks


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
    holder = f"pid {daemon.process.pid} on {socket.gethostname()}"
    assert f"in use by another tbmirror process ({holder})" in line
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


HOLD_LOCK = """
import sys
from pathlib import Path
from tbmirror.journal.locks import SubtreeLocks
SubtreeLocks(Path(sys.argv[1])).acquire("team-a")
print("held", flush=True)
sys.stdin.read()
"""


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux's unshare")
@pytest.mark.e2e  # starts `tbmirror` (or another process)
def test_a_holder_on_another_host_is_named(tmp_path: Path) -> None:
    """A holder in its own UTS namespace (another host name, as a pod on another node has):
    the refusal names that host and pid, so an operator knows where to look."""
    holder = subprocess.Popen(
        ["unshare", "--uts", "sh", "-c",
         'hostname shard-b-0 && exec "$0" -c "$1" "$2"', sys.executable, HOLD_LOCK, str(tmp_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(MirrorError) as refused:
            SubtreeLocks(tmp_path).acquire("team-a")
        assert f"(pid {holder.pid} on shard-b-0)" in str(refused.value)
    finally:
        holder.kill()
        holder.wait()
    SubtreeLocks(tmp_path).acquire("team-a")  # the OS released it with the process
