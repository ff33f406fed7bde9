"""The container image, built by deploy/container/build.sh and run with podman: it mirrors a real
mlflow server into its TensorBoard, read over HTTP, with a read-only root file system and no
capabilities, as the Kubernetes manifests run it; `podman stop` (SIGTERM through tini) makes the
daemon exit 0 by itself with its shutdown logged; a new container on the same volumes resumes
exactly once. The container shares the host's network, so everything stays on 127.0.0.1.

The image is removed afterwards; the two base images (debootstrap, the costly part) are kept as
build.sh's cache (docs/operations/kubernetes.md)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from conftest import (
    REPO,
    MlflowServer,
    TensorBoardReader,
    json_log_lines,
    new_run,
    scalars_in,
    wait_until,
)
from helpers.loss import loss_logger
from helpers.tools import tools
from tbmirror.processes import free_port

pytestmark = pytest.mark.e2e  # starts real processes (tests/conftest.py, REAL_PROCESS_FIXTURES)

BUILD = REPO / "deploy" / "container" / "build.sh"
UID = 10001  # the image's user


@pytest.fixture(autouse=True, scope="module")
def _podman_and_debootstrap() -> None:  # before any fixture that builds
    tools(("podman", "podman"), ("debootstrap", "debootstrap"))


class Podman:
    """podman with build.sh's CONTAINERS_CONF; removes what it started."""

    def __init__(self) -> None:
        conf = subprocess.run([BUILD, "--print-conf"], capture_output=True, text=True, check=True)
        self.env = {**os.environ, "CONTAINERS_CONF": conf.stdout.strip()}
        self.containers: list[str] = []

    def __call__(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["podman", *args], capture_output=True, text=True, env=self.env, timeout=timeout
        )

    def run(self, name: str, image: str, *options: str) -> str:
        self.containers.append(name)
        result = self("run", "--detach", "--name", name, *options, image)
        assert result.returncode == 0, result.stderr
        return name

    def events(self, name: str) -> list[dict[str, Any]]:
        logged = self("logs", name)  # the daemon logs JSON lines to stderr
        return json_log_lines(logged.stdout + logged.stderr)

    def remove_all(self) -> None:
        for name in self.containers:
            self("rm", "--force", "--volumes", "--time", "0", name)


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    tag = f"localhost/tbmirror:test-{os.getpid()}"
    built = subprocess.run([BUILD, tag], capture_output=True, text=True, timeout=1500)
    assert built.returncode == 0, built.stderr[-3000:]
    yield tag
    Podman()("rmi", "--force", tag)


@pytest.mark.timeout(1800)  # the first build on a machine runs debootstrap
def test_the_image_mirrors_stops_cleanly_and_resumes_exactly_once(
    image: str, tmp_path: Path, mlflow_server: MlflowServer, experiment_name: str
) -> None:
    client = mlflow_server.client()
    log = loss_logger(client, new_run(client, experiment_name, "r"))

    log(range(5))
    mirror, state, etc = tmp_path / "mirror", tmp_path / "state", tmp_path / "etc"
    for directory in (mirror, state, etc):
        directory.mkdir()
    for directory in (mirror, state):
        os.chown(directory, UID, UID)
    tensorboard_port, health_port = free_port(), free_port()
    config = {
        "mirror": {"root": "/var/lib/tbmirror/logs", "state": "/var/lib/tbmirror/state/s.db"},
        "sources": [{"name": "c", "type": "mlflow", "tracking_uri": mlflow_server.url,
                     "experiments": [experiment_name], "poll_interval": "1s"}],
        "tensorboard": {"host": "127.0.0.1", "port": tensorboard_port, "reload_interval": 1},
        "health": {"host": "127.0.0.1", "port": health_port},
    }  # fmt: skip
    (etc / "config.yaml").write_text(yaml.safe_dump(config))
    options = [  # as the Kubernetes manifests run it: read-only root, /tmp apart, no privileges
        "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges",
        "--network", "host", "--env", f"TBMIRROR_HEALTH_PORT={health_port}",
        "--volume", f"{mirror}:/var/lib/tbmirror/logs", "--volume",
        f"{state}:/var/lib/tbmirror/state", "--volume", f"{etc}:/etc/tbmirror:ro",
    ]  # fmt: skip
    podman = Podman()
    board = TensorBoardReader(f"http://127.0.0.1:{tensorboard_port}")
    run = f"c/{experiment_name}/r"
    try:
        first = podman.run(f"tbmirror-test-{os.getpid()}-1", image, *options)
        board.wait_scalars(run, "loss", 5, timeout=180)
        for probe in ("readyz", "livez"):
            answer = httpx.get(f"http://127.0.0.1:{health_port}/{probe}", timeout=5)
            assert answer.status_code == 200, answer.text
        checked = podman("healthcheck", "run", first)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        user = podman("inspect", "--format", "{{.Config.User}}", first).stdout.strip()
        assert user == f"{UID}:{UID}"

        stopped = podman("stop", "--time", "30", first, timeout=60)
        assert stopped.returncode == 0, stopped.stderr
        code = podman("inspect", "--format", "{{.State.ExitCode}}", first).stdout.strip()
        assert code == "0", f"exit code {code}: killed at the timeout, or failed"
        names = [event.get("event") for event in podman.events(first)]
        assert "daemon_stopping" in names and names[-1] == "daemon_stopped", names[-5:]

        log(range(5, 10))  # while no daemon runs
        second = podman.run(f"tbmirror-test-{os.getpid()}-2", image, *options)
        points = board.wait_scalars(run, "loss", 10, timeout=180)
        assert [int(step) for _, step, _ in points] == list(range(10))
        time.sleep(3)  # three more passes (poll_interval 1s) must add nothing
        assert len(board.scalars(run, "loss")) == 10
        on_disk = scalars_in(mirror / "c" / experiment_name / "r", "loss")
        assert len(on_disk) == 10, f"{len(on_disk)} points on disk: resumed more than once"
        assert podman("stop", "--time", "30", second, timeout=60).returncode == 0
        assert podman("inspect", "--format", "{{.State.ExitCode}}", second).stdout.strip() == "0"
    finally:
        podman.remove_all()


def test_inside_its_own_network_it_listens_on_all_interfaces(image: str, tmp_path: Path) -> None:
    """The manifests' config (tensorboard.host and health.host 0.0.0.0, the default ports) in a
    container with a network of its own (--network none: only its loopback, so nothing is exposed
    here): TensorBoard starts, is probed through 0.0.0.0 and /readyz says ready; no source is
    reachable, which /readyz must not mind."""
    etc = tmp_path / "etc"
    etc.mkdir()
    config = {
        "mirror": {"root": "/var/lib/tbmirror/logs", "state": "/var/lib/tbmirror/state/s.db"},
        "sources": [{"name": "c", "type": "mlflow", "tracking_uri": "http://127.0.0.1:9",
                     "experiments": ["e"], "poll_interval": "1s"}],
        "tensorboard": {"host": "0.0.0.0"},
        "health": {"host": "0.0.0.0"},
    }  # fmt: skip
    (etc / "config.yaml").write_text(yaml.safe_dump(config))
    podman = Podman()
    ask = (
        "import urllib.request; "
        "print(urllib.request.urlopen('http://127.0.0.1:9464/readyz').read().decode())"
    )

    def ready() -> dict[str, Any] | None:
        answer = podman("exec", name, "python3", "-c", ask)
        return json.loads(answer.stdout) if answer.returncode == 0 else None

    try:
        options = ["--network", "none", "--read-only", "--tmpfs", "/tmp",
                   "--volume", f"{etc}:/etc/tbmirror:ro"]  # fmt: skip
        name = podman.run(f"tbmirror-test-{os.getpid()}-own-network", image, *options)
        body = wait_until(ready, 120, "/readyz inside the container")
        assert body["ready"] is True and body["tensorboard"]["url"] == "http://0.0.0.0:6006/"
        assert podman("stop", "--time", "30", name, timeout=60).returncode == 0
        assert podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip() == "0"
    finally:
        podman.remove_all()
