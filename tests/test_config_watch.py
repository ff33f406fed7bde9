"""Config changes without SIGHUP: a mounted ConfigMap changes the way the kubelet changes it (a new
timestamped directory, then the `..data` symlink swapped atomically), and the daemon reloads as
on SIGHUP: a good file applies, a bad one keeps the old config with one line; /readyz and /livez
answer meanwhile, and a stale source does not make the dashboard unready."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from conftest import (
    MlflowServer,
    TensorBoardReader,
    daemon_config,
    mlflow_source,
    new_run,
    wait_until,
)
from helpers.kubelet import ConfigMapVolume
from helpers.loss import loss_logger
from tbmirror.processes import free_port
from tbmirror.service.config_watch import ConfigWatcher


def test_a_symlink_swap_is_seen_once_after_the_debounce(tmp_path: Path) -> None:
    volume = ConfigMapVolume(tmp_path / "config")
    volume.update({"config.yaml": "a: 1\n"})
    watcher = ConfigWatcher(tmp_path / "config" / "config.yaml", debounce=0.3)
    watcher.start()
    try:
        assert not watcher.due()
        volume.update({"config.yaml": "a: 2\n"})
        wait_until(watcher.due, 10, "the swap to be seen")
        assert not watcher.due(), "one change, one reload"
        volume.update({"config.yaml": "a: 2\n"})  # the same content again (another key changed)
        time.sleep(1.0)
        assert not watcher.due(), "unchanged content is no reason to reload"
        (tmp_path / "config" / "config.yaml").unlink()  # gone: the reload will say why
        wait_until(watcher.due, 10, "the file's removal to be seen")
    finally:
        watcher.stop()


def test_an_edit_is_seen_where_a_symlinked_config_points(tmp_path: Path) -> None:
    """/etc/tbmirror/config.yaml -> /srv/configs/tbmirror.yaml: editing the file the link
    points to, in its own directory, is seen too; a kubelet volume watches one directory."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "srv").mkdir()
    target = tmp_path / "srv" / "tbmirror.yaml"
    target.write_text("a: 1\n")
    link = tmp_path / "etc" / "config.yaml"
    link.symlink_to(target)
    watcher = ConfigWatcher(link, debounce=0.3)
    assert watcher.directories() == [tmp_path / "etc", tmp_path / "srv"]
    volume = ConfigMapVolume(tmp_path / "volume")
    volume.update({"config.yaml": "a: 1\n"})
    inside = ConfigWatcher(tmp_path / "volume" / "config.yaml")
    assert inside.directories() == [tmp_path / "volume"]
    watcher.start()
    try:
        assert not watcher.due()
        target.write_text("a: 2\n")  # in place, in the other directory
        wait_until(watcher.due, 10, f"the edit of {target} to be seen")
    finally:
        watcher.stop()


def assert_ready(health_url: str) -> None:
    """/readyz answers 200: ready, TensorBoard up."""
    code, body = _get(f"{health_url}/readyz")
    assert code == 200, body
    assert body["ready"] is True and body["tensorboard"]["up"] is True, body
    assert body.keys() == {"ready", "tensorboard"}, body


def _get(url: str) -> tuple[int, dict[str, Any]]:
    response = httpx.get(url, timeout=5)
    return response.status_code, response.json()


def test_the_daemon_reloads_a_swapped_configmap_as_on_sighup(
    tmp_path: Path, mlflow_server: MlflowServer, start_daemon, experiment_name: str
) -> None:
    client = mlflow_server.client()
    log = loss_logger(client, new_run(client, experiment_name, "r"))

    log(range(3))
    source = mlflow_source("watched", mlflow_server.url, [experiment_name], poll_interval="1s")
    draft, tb_url, health_url = daemon_config(
        tmp_path / "draft.yaml", tmp_path / "root", [source], health={"stale_after": "3s"}
    )
    good = yaml.safe_load(draft.read_text())
    volume = ConfigMapVolume(tmp_path / "etc-tbmirror")
    volume.update({"config.yaml": yaml.safe_dump(good)})
    daemon = start_daemon(tmp_path / "etc-tbmirror" / "config.yaml")
    daemon.wait_event("daemon_ready")
    board = TensorBoardReader(tb_url)
    run = f"watched/{experiment_name}/r"
    board.wait_scalars(run, "loss", 3)
    assert_ready(health_url)
    assert _get(f"{health_url}/livez")[1]["alive"] is True

    # A second source, by a swap only: reloaded, it mirrors too.
    second = {**source, "name": "second"}
    volume.update({"config.yaml": yaml.safe_dump({**good, "sources": [source, second]})})
    daemon.wait_event("reloaded", cause="file changed", sources=2)
    board.wait_scalars(f"second/{experiment_name}/r", "loss", 3)

    # A bad file: one line, the old config (two sources) keeps syncing.
    bad = {**good, "sources": [{**source, "poll_interval": "whenever"}]}
    volume.update({"config.yaml": yaml.safe_dump(bad)})
    failed = daemon.wait_event("reload_failed", cause="file changed")
    assert "sources[0].poll_interval: expected a duration" in failed["error"]
    log(range(3, 5))
    board.wait_scalars(run, "loss", 5)
    board.wait_scalars(f"second/{experiment_name}/r", "loss", 5)
    failures = [e for e in daemon.events() if e.get("event") == "reload_failed"]
    assert len(failures) == 1, failures

    # The source's server unreachable (a valid config): /healthz says degraded once no pass
    # succeeded for stale_after, while /readyz keeps the dashboard in its Service.
    dead = {**source, "tracking_uri": f"http://127.0.0.1:{free_port()}"}
    volume.update({"config.yaml": yaml.safe_dump({**good, "sources": [dead]})})
    daemon.wait_event("reloaded", cause="file changed", sources=1)
    wait_until(lambda: _get(f"{health_url}/healthz")[0] == 503, 30, "/healthz to say degraded")
    assert_ready(health_url)
    assert _get(f"{health_url}/livez")[0] == 200
    assert daemon.stop() == 0
