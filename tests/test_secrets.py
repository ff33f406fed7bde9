"""Secrets stay in: a secret file holds one line (a trailing newline is fine); anything else is an
error naming the file, never its content, and no secret reaches a header the HTTP library would
quote in its error, nor the output of `sync`, `check` or `status`."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import ADMIN_PASSWORD, MlflowServer, mlflow_source, tbmirror, write_config
from test_auth import assert_no_secret

TOKEN = "tok-7f3a9c-first-line"
SECOND = "second-line-e41d08"


def test_a_secret_file_that_is_not_one_line_is_an_error_naming_the_file(
    tmp_path: Path, mlflow_server: MlflowServer
) -> None:
    """(The basic source's file starts with the right password: were only its first line used,
    its sync would succeed, on a basic-auth server or, as here, on one that asks for none.)"""
    files = {
        "bearer-two-lines": f"{TOKEN}\n{SECOND}\n",
        "bearer-cr": f"{TOKEN}\r{SECOND}",
        "bearer-nul": f"{TOKEN}\0{SECOND}",
        "bearer-not-ascii": f"{TOKEN}-ünïcode-{SECOND}",
        "bearer-empty": "\n\n",
        "basic-two-lines": f"{ADMIN_PASSWORD}\n{SECOND}\n",
    }  # (the password alone, with its newline, works: test_auth.py)
    sources = []
    for name, content in files.items():
        path = tmp_path / name
        path.write_text(content)
        if name.startswith("basic"):
            auth = {"type": "basic", "username": "admin", "password_file": str(path)}
        else:
            auth = {"type": "bearer", "token_file": str(path)}
        sources.append(mlflow_source(name, mlflow_server.url, ["Default"], auth=auth))
    config = write_config(tmp_path / "c.yaml", tmp_path / "root", sources)
    secrets = (TOKEN, SECOND, ADMIN_PASSWORD, "ünïcode")

    sync = tbmirror("sync", "--config", str(config), timeout=120)
    check = tbmirror("check", "--config", str(config), timeout=120)
    status = tbmirror("status", "--config", str(config), "--json", timeout=120)
    for result in (sync, check, status):
        assert "Traceback" not in result.stdout + result.stderr
        assert_no_secret(result.stdout + result.stderr, *secrets)
    assert sync.returncode == 1 and check.returncode == 1, sync.stdout + sync.stderr
    lines = {line.split()[1].rstrip(":"): line for line in sync.stdout.splitlines()}
    one_line = "expected the secret on one line (found a second line, a CR or a NUL)"
    for name, problem in [
        ("bearer-two-lines", f"token_file {tmp_path / 'bearer-two-lines'}: {one_line}"),
        ("bearer-cr", f"token_file {tmp_path / 'bearer-cr'}: {one_line}"),
        ("bearer-nul", f"token_file {tmp_path / 'bearer-nul'}: {one_line}"),
        (
            "bearer-not-ascii",
            f"token_file {tmp_path / 'bearer-not-ascii'}: expected a bearer token of visible "
            "ASCII characters",
        ),
        ("bearer-empty", f"token_file {tmp_path / 'bearer-empty'}: expected a secret"),
        ("basic-two-lines", f"password_file {tmp_path / 'basic-two-lines'}: {one_line}"),
    ]:
        assert lines[name].startswith(f"FAIL  {name}: ") and problem in lines[name], lines[name]
        assert problem in check.stdout
    rows = {row["source"]: row for row in json.loads(status.stdout)}
    assert one_line in rows["bearer-two-lines"]["last_error"]


@pytest.mark.e2e  # starts `tbmirror` (or another process)
def test_an_inline_secret_with_a_line_break_is_refused_at_validation(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path / "c.yaml", tmp_path / "root", [
        mlflow_source("inline", "http://127.0.0.1:9", ["e"],
                      auth={"type": "bearer", "token": "${TBM_TOKEN}"}),
    ])  # fmt: skip
    for command in ("sync", "check", "run"):
        result = tbmirror(command, "--config", str(config), env={"TBM_TOKEN": f"{TOKEN}\n"})
        assert result.returncode == 78
        assert f"{config}: sources[0].auth.token: expected one line (no CR, LF or NUL)" in (
            result.stderr
        )
        assert_no_secret(result.stdout + result.stderr, TOKEN)


class _TokenService(http.server.ThreadingHTTPServer):
    """A Databricks OAuth token endpoint that hands out a token with a line break in it."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _TokenHandler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class _TokenHandler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.dumps({"access_token": f"{TOKEN}\n{SECOND}", "expires_in": 3600}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def token_service() -> Iterator[_TokenService]:
    server = _TokenService()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def test_a_token_from_a_token_service_that_is_no_header_value_never_leaves(
    tmp_path: Path, mlflow_server: MlflowServer, token_service: _TokenService
) -> None:
    (tmp_path / "client-secret").write_text("client-secret-value-0451\n")
    auth = {"type": "databricks", "host": token_service.url, "client_id": "sp",
            "client_secret_file": str(tmp_path / "client-secret")}  # fmt: skip
    config = write_config(tmp_path / "c.yaml", tmp_path / "root", [
        mlflow_source("dbx", mlflow_server.url, ["Default"], auth=auth)
    ])  # fmt: skip
    for command in ("sync", "check"):
        result = tbmirror(command, "--config", str(config), timeout=120)
        output = result.stdout + result.stderr
        assert result.returncode == 1, output
        assert "databricks OAuth token request gave no usable bearer token" in result.stdout
        assert "Traceback" not in output
        assert_no_secret(output, TOKEN, SECOND, "client-secret-value-0451")
