"""Shared fixtures: a real `mlflow server`, a real TensorBoard reading the mirror, and runners for
the `tbmirror` command as a subprocess (children always cleaned up)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from helpers.hostile_proxy import HostileProxy, hostile_proxy
from helpers.mlflow_template import STORE_NAME, Template
from helpers.ordering import spread
from helpers.scripted_mlflow import ScriptedMlflow
from tbmirror.local_mlflow import LocalMlflowServer
from tbmirror.mirror.summaries import float32_bits, iter_scalars
from tbmirror.processes import free_port, stop_process_group

REPO = Path(__file__).resolve().parents[1]
SCALARS_SAMPLES = 1_000_000


# Fixtures that start a real process (a server, TensorBoard, Azurite, the daemon, `tbmirror`):
# a test using one is marked `e2e`; `pytest -m "not e2e"` is the fast tier (README, Tests).
REAL_PROCESS_FIXTURES = frozenset({
    "mlflow_server", "basic_auth_server", "proxy", "tensorboard", "sync", "start_daemon",
    "azurite", "azureml_workspace", "databricks_workspace",
})  # fmt: skip


@pytest.hookimpl(trylast=True)  # (after -k and -m deselect)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark `e2e` each test that uses a REAL_PROCESS_FIXTURES fixture (tests that start a
    process themselves, or replay a full-size workload, carry the mark in their module). In an
    xdist worker, order the tests so each worker starts with its share of the long ones
    (helpers/ordering.py)."""
    for item in items:
        if REAL_PROCESS_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)
    workers = getattr(config, "workerinput", {}).get("workercount")
    if workers:
        items[:] = spread(items, [item.nodeid for item in items], workers)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`--numprocesses auto`: three workers for every two CPUs (pyproject caps them at 4). Most
    of an end-to-end test is spent waiting on its processes (a poll interval, TensorBoard's
    reload): with one worker per CPU the whole suite kept the CPUs 72 % busy (10:15 on 2 idle
    CPUs), with three on two 89 % (8:43)."""
    return max(1, (3 * len(os.sched_getaffinity(0))) // 2)  # CPUs this process may use


def wait_until(
    predicate: Callable[[], Any],
    timeout: float,
    what: str,
    every: float = 0.2,
    saw: Callable[[], Any] | None = None,
) -> Any:
    """Poll `predicate` until it returns something truthy; after `timeout` s fail the test saying
    what it saw: the last answer (or error) of `predicate`, and `saw()` if given."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except (httpx.HTTPError, OSError, ValueError) as error:
            last = error
        time.sleep(every)
    seen = f"last answer {last!r}"[:1500]
    if saw is not None:
        seen += f"; saw {saw()!r}"[:3000]
    raise AssertionError(f"timed out after {timeout} s waiting for {what} ({seen})")


class MlflowServer(LocalMlflowServer):
    """The local mlflow server, with a client for logging test data; on an empty directory it
    starts from the session's migrated store (helpers/mlflow_template.py)."""

    template: Template | None = None  # set for the session by `mlflow_template`

    def start(self, timeout: float = 120, stop: threading.Event | None = None) -> MlflowServer:
        template = self.template
        if template is None or (self.directory / STORE_NAME).exists():
            super().start(timeout, stop)
            return self
        if not template.seed(self.directory):
            with template.making():  # the first to migrate; the others wait, then copy
                if not template.seed(self.directory):
                    super().start(timeout, stop)
                    template.keep(self.directory)
                    return self
        super().start(timeout, stop)
        return self

    def client(self) -> Any:
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.url)


@pytest.fixture(scope="session", autouse=True)
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> None:
    """One template for the whole run: in the directory the xdist workers share, if any."""
    base = tmp_path_factory.getbasetemp()
    MlflowServer.template = Template(base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow")).start()
    yield server
    server.stop()


@pytest.fixture
def fluent_mlflow(mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """mlflow's fluent API (`mlflow.start_run`, ...) pointed at the worker's server for one test.
    mlflow keeps the fluent API's tracking URI and active experiment in module globals and in
    environment variables (for child processes): all four are put back afterwards."""
    import mlflow
    from mlflow.tracking import _tracking_service, fluent

    utils = _tracking_service.utils
    monkeypatch.setattr(utils, "_tracking_uri", utils._tracking_uri)
    monkeypatch.setattr(fluent, "_active_experiment_id", fluent._active_experiment_id)
    variables = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID")
    before = {variable: os.environ.get(variable) for variable in variables}
    mlflow.set_tracking_uri(mlflow_server.url)
    yield mlflow_server.url
    for variable, value in before.items():
        if value is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = value


ADMIN_PASSWORD = "s3cret-Admin-pw-9431"


@pytest.fixture(scope="session")
def basic_auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real `mlflow server --app-name basic-auth` (user admin, ADMIN_PASSWORD), shared."""
    directory = tmp_path_factory.mktemp("basic-auth")
    ini = directory / "basic_auth.ini"
    ini.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{directory / 'auth.db'}\nadmin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    server = MlflowServer(
        directory,
        extra_args=["--app-name", "basic-auth"],
        env={
            "MLFLOW_AUTH_CONFIG_PATH": str(ini),
            "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-only-csrf-key",
        },
    ).start()
    yield server
    server.stop()


@pytest.fixture
def proxy(mlflow_server: MlflowServer) -> Iterator[HostileProxy]:
    """A HostileProxy (helpers/hostile_proxy.py) in front of the session's server: it records
    every request and misbehaves only when a test switches a fault on."""
    with hostile_proxy(mlflow_server.url) as started:
        yield started


class TensorBoardReader:
    """Reads a running TensorBoard through its HTTP API."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=30)

    def answers(self) -> bool:
        try:
            return self.http.get("/data/environment").status_code == 200
        except httpx.HTTPError:
            return False

    def runs(self) -> list[str]:
        return list(self.http.get("/data/runs").json())

    def scalar_tags(self, run: str) -> list[str]:
        tags = self.http.get("/data/plugin/scalars/tags").json()
        return sorted(tags.get(run, {}))

    def scalars(self, run: str, tag: str) -> list[list[float]]:
        """[[wall_time, step, value], ...]; [] while TensorBoard has no such series."""
        response = self.http.get("/data/plugin/scalars/scalars", params={"run": run, "tag": tag})
        if response.status_code == 400 or response.status_code == 404:
            return []
        response.raise_for_status()
        return list(json.loads(response.text))

    def wait_scalars(
        self, run: str, tag: str, count: int, timeout: float = 30
    ) -> list[list[float]]:
        """The series once it holds `count` points (fails on timeout or if it overshoots)."""

        def ready() -> list[list[float]] | None:
            points = self.scalars(run, tag)
            assert len(points) <= count, f"{run}/{tag}: {len(points)} points, expected {count}"
            return points if len(points) == count else None

        result: list[list[float]] = wait_until(ready, timeout, f"{count} points of {run}/{tag}")
        return result

    def text(self, run: str, tag: str) -> list[dict[str, Any]]:
        response = self.http.get("/data/plugin/text/text", params={"run": run, "tag": tag})
        return list(response.json()) if response.status_code == 200 else []

    def image_tags(self, run: str) -> list[str]:
        return sorted(self.http.get("/data/plugin/images/tags").json().get(run, {}))

    def images(self, run: str, tag: str) -> list[dict[str, Any]]:
        """[{wall_time, step, query}, ...]; [] while TensorBoard has no such series."""
        response = self.http.get("/data/plugin/images/images", params={"run": run, "tag": tag})
        return list(response.json()) if response.status_code == 200 else []

    def image_bytes(self, query: str) -> bytes:
        """The bytes of one image, by the `query` of an `images` entry."""
        response = self.http.get(f"/data/plugin/images/individualImage?{query}")
        response.raise_for_status()
        return response.content

    def session_groups(self) -> list[dict[str, Any]]:
        body = {
            "experimentName": "",
            "allowedStatuses": [
                "STATUS_UNKNOWN",
                "STATUS_SUCCESS",
                "STATUS_FAILURE",
                "STATUS_RUNNING",
            ],
            "colParams": [],
            "startIndex": 0,
            "sliceSize": 10000,
        }
        response = self.http.post("/data/plugin/hparams/session_groups", json=body)
        response.raise_for_status()
        return list(response.json().get("sessionGroups", []))


class TensorBoard(TensorBoardReader):
    """A real TensorBoard (Rust fast loader) of our own over a logdir."""

    def __init__(self, logdir: Path, log_path: Path) -> None:
        self.logdir = logdir
        super().__init__(f"http://127.0.0.1:{free_port()}")
        port = self.url.rsplit(":", 1)[1]
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir),
                "--host", "127.0.0.1", "--port", port, "--load_fast", "true",
                "--reload_interval", "1",
                "--samples_per_plugin", f"scalars={SCALARS_SAMPLES},text=1000,images=1000",
            ],
            stdout=log_path.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        wait_until(self._ready, 60, "TensorBoard")

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError("TensorBoard exited")
        return self.answers()

    def stop(self) -> None:
        self.http.close()
        stop_process_group(self.process)


@pytest.fixture(scope="session")
def mirror_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One mirror root for the session; each test mirrors under its own source name."""
    return tmp_path_factory.mktemp("mirror")


@pytest.fixture(scope="session")
def tensorboard(
    mirror_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TensorBoard]:
    board = TensorBoard(mirror_root, tmp_path_factory.mktemp("tensorboard") / "tensorboard.log")
    yield board
    board.stop()


def unique_name(request: pytest.FixtureRequest, length: int = 48) -> str:
    """The test's name, cut to `length` characters with a short hash of its full id at the end:
    unique for every test and parametrized case, so tests share one mirror root without meeting."""
    digest = hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:8]
    name = re.sub(r"[^A-Za-z0-9._-]", "-", request.node.name)
    return f"{name[: length - len(digest) - 1]}-{digest}"


@pytest.fixture
def source_name(request: pytest.FixtureRequest) -> str:
    """A source name unique to the test (`unique_name`)."""
    return unique_name(request)


@pytest.fixture
def experiment_name(source_name: str) -> str:
    return f"{source_name}-{time.time_ns()}"


def write_config(path: Path, root: Path, sources: list[dict[str, Any]], **extra: Any) -> Path:
    """A tbmirror config at `path` with state next to it."""
    document = {"mirror": {"root": str(root), "state": str(path.parent / "state.db")}}
    document["sources"] = sources  # type: ignore[assignment]
    document.update(extra)
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def mlflow_source(name: str, url: str, experiments: list[str], **settings: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": "mlflow",
        "tracking_uri": url,
        "experiments": experiments,
        "max_retries": 1,
        **settings,
    }


def tbmirror(
    *args: str, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the `tbmirror` command to completion (python -m tbmirror, this interpreter)."""
    return subprocess.run(
        [sys.executable, "-m", "tbmirror", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def sync(tmp_path: Path, mirror_root: Path, mlflow_server: MlflowServer, source_name: str):  # type: ignore[no-untyped-def]
    """sync(experiments, **source settings) runs `tbmirror sync` for this test's source."""
    config_path = tmp_path / "tbmirror.yaml"

    def run(
        experiments: list[str], *args: str, check: bool = True, **settings: Any
    ) -> subprocess.CompletedProcess[str]:
        write_config(
            config_path,
            mirror_root,
            [mlflow_source(source_name, mlflow_server.url, experiments, **settings)],
        )
        result = tbmirror("sync", "--config", str(config_path), *args)
        if check:
            assert result.returncode == 0, result.stdout + result.stderr
        return result

    run.config_path = config_path  # type: ignore[attr-defined]
    return run


def scalars_in(directory: Path, tag: str) -> list[tuple[float, bytes]]:
    """(wall_time, float32 bits of the value) of every `tag` scalar in a run directory's events
    files, in file-name order: what a test counts of a mirrored series."""
    return [(wall, float32_bits(value)) for wall, value in iter_scalars(directory, tag)]


def tb_run(source: str, *parts: str) -> str:
    """TensorBoard's run name for a mirrored run directory."""
    return "/".join((source, *parts))


def json_log_lines(text: str) -> list[dict[str, Any]]:
    """The JSON log events among the lines of `text` (other lines skipped)."""
    found = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return found


class DaemonProcess:
    """`tbmirror run` as a subprocess in its own session; its JSON log goes to a file."""

    def __init__(self, config: Path, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tbmirror", "run", "--config", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **(env or {})},
            )

    def events(self) -> list[dict[str, Any]]:
        return json_log_lines(self.log_path.read_text(errors="replace"))

    def wait_event(self, name: str, timeout: float = 60, **fields: Any) -> dict[str, Any]:
        def seen() -> dict[str, Any] | None:
            if self.process.poll() is not None:
                raise AssertionError(f"daemon exited: {self.log_path.read_text()[-3000:]}")
            matches = [
                e for e in self.events()
                if e.get("event") == name and all(e.get(k) == v for k, v in fields.items())
            ]  # fmt: skip
            return matches[-1] if matches else None

        event: dict[str, Any] = wait_until(seen, timeout, f"log event {name} {fields}")
        return event

    def tensorboard_pids(self) -> set[int]:
        return {e["pid"] for e in self.events() if e.get("event") == "tensorboard_ready"}

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self, timeout: float = 15) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def cleanup(self) -> None:
        """Never leave a daemon or its TensorBoard behind."""
        stop_process_group(self.process, grace=5)
        for pid in self.tensorboard_pids():
            if pid_alive(pid):
                os.killpg(pid, signal.SIGKILL)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def daemon_config(
    path: Path, root: Path, sources: list[dict[str, Any]], **sections: Any
) -> tuple[Path, str, str]:
    """A daemon config on free ports; returns (config, TensorBoard URL, health URL)."""
    tensorboard_port, health_port = free_port(), free_port()
    tensorboard = {
        "port": tensorboard_port,
        "reload_interval": 1,
        "scalars_samples": SCALARS_SAMPLES,
    }
    tensorboard.update(sections.pop("tensorboard", {}))
    health = {"port": health_port, "failure_threshold": 2, **sections.pop("health", {})}
    write_config(path, root, sources, tensorboard=tensorboard, health=health, **sections)
    return path, f"http://127.0.0.1:{tensorboard_port}", f"http://127.0.0.1:{health_port}"


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    """start_daemon(config, env=None) -> a running DaemonProcess, cleaned up after the test."""
    started: list[DaemonProcess] = []

    def start(config: Path, env: dict[str, str] | None = None) -> DaemonProcess:
        daemon = DaemonProcess(config, tmp_path / f"daemon-{len(started)}.log", env)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.cleanup()
    for daemon in started:  # an unexpected exception anywhere in the daemon is a bug
        assert "Traceback" not in daemon.log_path.read_text(errors="replace"), daemon.log_path


def new_run(client: Any, experiment: str, name: str) -> str:
    """A new run called `name` in `experiment` (created if missing); returns its id."""
    existing = client.get_experiment_by_name(experiment)
    experiment_id = existing.experiment_id if existing else client.create_experiment(experiment)
    return str(client.create_run(experiment_id, run_name=name).info.run_id)


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real Azurite blob service (helpers/azurite.py: `Azurite`), one per xdist worker, as
    prepared by tests/prepare.py (a test fails, not downloads, if it is missing)."""
    from helpers.azurite import Azurite

    with Azurite(tmp_path_factory.mktemp("azurite")) as started:
        yield started


@pytest.fixture
def azureml_workspace(mlflow_server: MlflowServer, azurite: Any) -> Iterator[Any]:
    """An `AzureMlWorkspace` stand-in (helpers/cloud_standins.py) over the session's servers."""
    from helpers.cloud_standins import AzureMlWorkspace

    with AzureMlWorkspace(mlflow_server.url, azurite) as workspace:
        yield workspace


@pytest.fixture
def databricks_workspace(mlflow_server: MlflowServer, azurite: Any) -> Iterator[Any]:
    """A `DatabricksWorkspace` stand-in (helpers/cloud_standins.py) over the session's servers."""
    from helpers.cloud_standins import DatabricksWorkspace

    with DatabricksWorkspace(mlflow_server.url, azurite) as workspace:
        yield workspace


@pytest.fixture
def scripted() -> ScriptedMlflow:
    """A scripted MLflow in this process (helpers/scripted_mlflow.py), empty but for Default."""
    return ScriptedMlflow()


@pytest.fixture
def scripted_sync(tmp_path: Path, scripted: ScriptedMlflow, source_name: str):  # type: ignore[no-untyped-def]
    """`sync` (above), in-process against `scripted`, mirroring into `scripted_sync.root`."""
    from helpers import in_process

    config_path, root = tmp_path / "tbmirror.yaml", tmp_path / "mirror" / "root"
    root.mkdir(parents=True)  # (alone in its parent, as the session's `mirror_root`)

    def run(
        experiments: list[str], *args: str, check: bool = True, **settings: Any
    ) -> subprocess.CompletedProcess[str]:
        source = mlflow_source(source_name, scripted.url, experiments, **settings)
        write_config(config_path, root, [source])
        result = in_process.sync(config_path, scripted.transport, *args)
        if check:
            assert result.returncode == 0, result.stdout + result.stderr
        return result

    run.config_path, run.root = config_path, root  # type: ignore[attr-defined]
    return run
