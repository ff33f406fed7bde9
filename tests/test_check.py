"""`tbmirror check` tells the truth, one line per finding, run as a user runs it: every thing that
will not work is a FAIL line and a non-zero exit, said at once and in words that say what it is;
`check --offline` reads the file alone.

Real parts: the `mlflow server` fixture, a real read-only tmpfs mount, real listening sockets, a
real `tbmirror run`, and Python's own `http.server` as "a web server that is not MLflow".
"""

from __future__ import annotations

import http.server
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import (
    REPO,
    DaemonProcess,
    MlflowServer,
    daemon_config,
    mlflow_source,
    tbmirror,
    write_config,
)
from tbmirror.cli import main
from tbmirror.processes import free_port

EXAMPLE = REPO / "config" / "tbmirror.example.yaml"


def check(config: Path, *args: str) -> tuple[int, list[str], str]:
    """(exit code, stdout lines, stderr) of `tbmirror check --config config`."""
    result = tbmirror("check", "--config", str(config), *args, timeout=120)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, result.stdout.splitlines(), result.stderr


def failed(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("FAIL")]


def free_ports() -> dict[str, Any]:
    """TensorBoard and health sections on ports free now (the defaults may be taken here)."""
    return {"tensorboard": {"port": free_port()}, "health": {"port": free_port()}}


def test_an_experiment_name_or_glob_that_matches_nothing_fails_with_a_suggestion(
    tmp_path: Path, mlflow_server: MlflowServer, experiment_name: str
) -> None:
    mlflow_server.client().create_experiment(experiment_name)
    typo = experiment_name + "x"
    source = mlflow_source("team", mlflow_server.url, [experiment_name, typo, "nobody-*"])
    config = write_config(tmp_path / "c.yaml", tmp_path / "root", [source], **free_ports())
    code, lines, _ = check(config)
    assert code == 1, lines
    ok = [line for line in lines if line.startswith("ok    team: ")]
    assert ok and ok[0].endswith(f"experiments visible): experiments {experiment_name}"), lines
    assert failed(lines) == [
        f"FAIL  team: experiment {typo!r} not found (or deleted); did you mean "
        f"{experiment_name!r}?",
        "FAIL  team: experiments 'nobody-*': the pattern matches no experiment",
    ], lines

    matched = mlflow_source("team", mlflow_server.url, [experiment_name[:-3] + "*"])
    write_config(config, tmp_path / "root", [matched], **free_ports())
    code, lines, _ = check(config)
    assert code == 0 and not failed(lines), lines
    assert f"experiments {experiment_name}" in lines[-1]


@pytest.mark.e2e  # starts `tbmirror` (or another process)
def test_a_refused_port_and_an_unknown_host_are_said_as_such_without_retrying(
    tmp_path: Path,
) -> None:
    refused = f"http://127.0.0.1:{free_port()}"
    sources = [
        mlflow_source("refused", refused, ["a"], max_retries=5),
        mlflow_source("unknown", "http://no-such-host.invalid:5000", ["a"], max_retries=5),
    ]
    config = write_config(tmp_path / "c.yaml", tmp_path / "root", sources, **free_ports())
    code, lines, stderr = check(config)
    assert code == 1
    assert failed(lines) == [
        f"FAIL  refused: {refused}: GET /api/2.0/mlflow/experiments/get-by-name: cannot "
        "connect: connection refused (nothing listens on that port)",
        "FAIL  unknown: http://no-such-host.invalid:5000: GET /api/2.0/mlflow/experiments/"
        "get-by-name: cannot connect: unknown host (the name does not resolve)",
    ], lines
    assert "request_retrying" not in stderr, "check must not retry"


class _NotMlflow(http.server.ThreadingHTTPServer):
    """A web server on 127.0.0.1 that is not an MLflow tracking server (404 for every GET, 501
    for POST: Python's own file server)."""

    def __init__(self, directory: Path) -> None:
        def handler(*args: Any) -> http.server.SimpleHTTPRequestHandler:
            return http.server.SimpleHTTPRequestHandler(*args, directory=str(directory))

        super().__init__(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def not_mlflow(tmp_path: Path) -> Iterator[_NotMlflow]:
    (tmp_path / "www").mkdir()
    server = _NotMlflow(tmp_path / "www")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(10)


@pytest.mark.e2e  # starts `tbmirror` (or another process)
def test_a_server_that_is_not_mlflow_is_said_as_such(
    tmp_path: Path, not_mlflow: _NotMlflow
) -> None:
    sources = [
        mlflow_source("named", not_mlflow.url, ["a"]),
        mlflow_source("everything", not_mlflow.url, ["*"]),
    ]
    config = write_config(tmp_path / "c.yaml", tmp_path / "root", sources, **free_ports())
    code, lines, _ = check(config)
    assert code == 1
    question = "is this an MLflow tracking server?"
    assert failed(lines) == [
        f"FAIL  named: {not_mlflow.url} answered 404 for GET /api/2.0/mlflow/experiments/"
        f"get-by-name: {question}",
        f"FAIL  everything: {not_mlflow.url} answered 501 for POST /api/2.0/mlflow/experiments/"
        f"search: {question}",
    ], lines


@pytest.fixture
def read_only_mount(tmp_path: Path) -> Iterator[Path]:
    """A read-only tmpfs (root may write anywhere else, whatever the permission bits say)."""
    mount = tmp_path / "read-only"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_mirror_root_or_state_that_cannot_be_written_fails(
    tmp_path: Path, mlflow_server: MlflowServer, read_only_mount: Path
) -> None:
    source = mlflow_source("team", mlflow_server.url, ["Default"])
    config = tmp_path / "c.yaml"
    write_config(config, read_only_mount / "logs", [source], **free_ports())
    state = tmp_path / "state.db"
    config.write_text(config.read_text().replace(str(state), str(read_only_mount / "s.db")))
    code, lines, _ = check(config)
    assert code == 1
    assert failed(lines) == [
        f"FAIL  mirror.root: {read_only_mount / 'logs'}: cannot write in {read_only_mount}: "
        "Read-only file system",
        f"FAIL  mirror.state: {read_only_mount / 's.db'}: cannot write in {read_only_mount}: "
        "Read-only file system",
    ], lines

    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    write_config(config, a_file / "logs", [source], **free_ports())
    code, lines, _ = check(config)
    assert code == 1
    assert failed(lines) == [
        f"FAIL  mirror.root: {a_file / 'logs'}: {a_file} is not a directory"
    ], lines
    assert f"ok    mirror.state: {state}: can be created" in lines


def test_a_taken_port_fails_unless_this_configs_own_daemon_holds_it(
    tmp_path: Path, mlflow_server: MlflowServer, start_daemon: Any
) -> None:
    source = mlflow_source("team", mlflow_server.url, ["Default"])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(
            tmp_path / "c.yaml", tmp_path / "root", [source],
            tensorboard={"port": port}, health={"port": free_port()},
        )  # fmt: skip
        code, lines, _ = check(config)
    assert code == 1
    assert failed(lines) == [
        f"FAIL  tensorboard: 127.0.0.1:{port}: already in use by another process"
    ], lines

    # The daemon of this very config holds its health port (TensorBoard off: not needed here).
    config, _, health = daemon_config(
        tmp_path / "d.yaml", tmp_path / "root", [source], tensorboard={"enabled": False}
    )
    daemon: DaemonProcess = start_daemon(config)
    daemon.wait_event("daemon_ready")
    code, lines, _ = check(config)
    assert code == 0, lines
    who = f"pid {daemon.process.pid} on {socket.gethostname()}"  # the whole holder
    assert f"ok    health: {health.removeprefix('http://')}: in use by this config's own " \
        f"tbmirror ({who})" in lines, lines  # fmt: skip
    assert not any(line.startswith("ok    tensorboard") for line in lines), lines
    state = tmp_path / "state.db"
    assert f"ok    mirror.state: {state}: writable; in use by tbmirror ({who})" in lines, lines
    assert daemon.stop() == 0


@pytest.mark.e2e  # starts `tbmirror` (or another process)
def test_offline_reads_the_file_alone(tmp_path: Path) -> None:
    with socket.socket() as server:  # a tracking server that would see any connection
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.setblocking(False)
        url = f"http://127.0.0.1:{server.getsockname()[1]}"
        token = tmp_path / "not-here" / "token"  # a secret file of another machine
        source = mlflow_source(
            "team", url, ["nothing-like-this"], auth={"type": "bearer", "token_file": str(token)}
        )
        root = tmp_path / "elsewhere" / "logs"
        config = write_config(tmp_path / "c.yaml", root, [source])
        code, lines, _ = check(config, "--offline")
        with pytest.raises(BlockingIOError):
            server.accept()
    assert code == 0, lines
    assert lines == [f"ok    config: {config}: valid; 1 source: team (mlflow)"]
    assert not (tmp_path / "elsewhere").exists()

    code, lines, _ = check(config)  # plain check does everything
    assert code == 1
    assert f"FAIL  team: {url}: cannot read token_file {token}: No such file or directory" in lines


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"auth": {"type": "bearer", "token_file": "secrets/token"}},
            "sources[0].auth.token_file: expected an absolute path",
        ),
        (
            {"pol_interval": "5s"},
            "sources[0].pol_interval: unknown key (did you mean 'poll_interval'?)",
        ),
        (
            {"state_in_subtree": True},
            "mirror.state: {root}/team/state.db is inside {root}/team, which tbmirror owns",
        ),
    ],
)  # fmt: skip
@pytest.mark.e2e  # starts `tbmirror` (or another process)
def test_offline_refuses_what_the_file_gets_wrong(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    root = tmp_path / "root"
    state_in_subtree = change.pop("state_in_subtree", False)
    source = mlflow_source("team", "http://127.0.0.1:5000", ["a"], **change)
    config = write_config(tmp_path / "c.yaml", root, [source])
    if state_in_subtree:
        text = config.read_text().replace(str(tmp_path / "state.db"), str(root / "team/state.db"))
        config.write_text(text)
    result = tbmirror("check", "--offline", "--config", str(config))
    assert result.returncode == 78
    assert f"{config}: {message.format(root=root)}" in result.stderr


@pytest.mark.e2e  # starts `tbmirror` (or another process)
def test_the_example_config_passes_offline_and_fails_only_on_its_tracking_server(
    tmp_path: Path,
) -> None:
    code, lines, _ = check(EXAMPLE, "--offline")
    assert code == 0 and lines == [f"ok    config: {EXAMPLE}: valid; 1 source: team (mlflow)"], (
        lines
    )

    # As a reader copies it; only what belongs to this machine, not to the example, is moved:
    # its ports (others may use 6006 here) and its folders (/var/lib may not be writable).
    text = EXAMPLE.read_text()
    for old, new in [
        ("port: 6006", f"port: {free_port()}"),
        ("port: 9464", f"port: {free_port()}"),
        ("/var/lib/tbmirror", str(tmp_path / "tbmirror")),
    ]:
        assert old in text
        text = text.replace(old, new)
    copy = tmp_path / "config.yaml"
    copy.write_text(text)
    code, lines, _ = check(copy)
    assert code == 1
    assert failed(lines) and all(line.startswith("FAIL  team: ") for line in failed(lines)), lines
    others = [line.split(":")[0] for line in lines if not line.startswith(("FAIL", "ok    team"))]
    assert others == [f"ok    {key}" for key in ("config", "mirror.root", "mirror.state",
                                                 "tensorboard", "health",
                                                 "tensorboard.memory_budget")], lines  # fmt: skip


@pytest.mark.parametrize("command", ["sync", "check", "run", "status", "prune", "demo"])
def test_every_commands_help_shows_its_defaults(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())  # as one line: argparse wraps it
    assert "--log-level {debug,info,warning,error} how much is logged to stderr (default: " in shown
    if command == "demo":
        for default in ("(default: tbmirror-demo)", "(default: 6006)", "(default: 9464)"):
            assert default in shown, shown
    else:
        assert "(default: $TBMIRROR_CONFIG, else /etc/tbmirror/config.yaml)" in shown, shown
