"""Authenticated sources.

- MLflow basic auth against a real `mlflow server --app-name basic-auth`.
- Bearer tokens, Databricks (PAT and OAuth machine-to-machine) and Azure ML (azure-identity's
  real ManagedIdentityCredential / DefaultAzureCredential): Azure's and Databricks' login
  services cannot be reached from here, so `AuthFront` stands in for them. It is a fake: it issues
  tokens (Databricks' /oidc/v1/token, Azure App Service's managed identity endpoint), checks the
  bearer token of every other request, and forwards that request to the real session MLflow
  server, whose answers are what tbmirror mirrors.
Every output of these runs is searched for the secrets used: none may appear.
"""

from __future__ import annotations

import base64
import http.server
import itertools
import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import msgspec
import pytest
from mlflow.entities import Metric

from conftest import (
    ADMIN_PASSWORD,
    DaemonProcess,
    MlflowServer,
    daemon_config,
    mlflow_source,
    new_run,
    tbmirror,
    wait_until,
    write_config,
)
from tbmirror.config import parse_settings
from tbmirror.errors import ConfigError
from tbmirror.sources.auth import REFRESH_MARGIN_SECONDS

CLIENT_SECRET = "dbx-client-secret-77251"
PAT = "dapi-personal-token-50817"
IDENTITY_HEADER = "identity-header-secret-3310"


def assert_no_secret(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text, "a secret leaked into the output"


def test_basic_auth_right_wrong_and_from_a_file(
    tmp_path: Path, basic_auth_server: MlflowServer, mirror_root: Path, source_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
    client = basic_auth_server.client()
    run_id = new_run(client, "guarded", "r")
    client.log_batch(
        run_id, metrics=[Metric("m", float(i), 1_700_000_000_000 + i, i) for i in range(5)]
    )
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")

    config = tmp_path / "c.yaml"
    outputs = []

    def sync(auth: dict, name: str) -> str:
        write_config(config, mirror_root, [
            mlflow_source(name, basic_auth_server.url, ["guarded"], auth=auth, max_retries=3)
        ])  # fmt: skip
        result = tbmirror("sync", "--config", str(config), env={"TBM_PASSWORD": ADMIN_PASSWORD})
        outputs.append(result.stdout + result.stderr)
        return result.stdout

    from_env = {"type": "basic", "username": "admin", "password": "${TBM_PASSWORD}"}
    assert ", 5 points," in sync(from_env, f"{source_name}-env")
    password_file = tmp_path / "password"
    password_file.write_text(ADMIN_PASSWORD + "\n")
    from_file = {"type": "basic", "username": "admin", "password_file": str(password_file)}
    assert ", 5 points," in sync(from_file, f"{source_name}-file")

    refused_before = basic_auth_server.log_path.read_text().count(" 401")
    wrong = {"type": "basic", "username": "admin", "password": "not-the-password"}
    out = sync(wrong, f"{source_name}-wrong")
    assert f"FAIL  {source_name}-wrong: GET " in out
    assert "HTTP 401: authentication failed (basic credentials)" in out
    refused = basic_auth_server.log_path.read_text().count(" 401") - refused_before
    assert refused == 1, "a refused credential must not be retried in a tight loop"
    assert_no_secret("\n".join(outputs), ADMIN_PASSWORD, "not-the-password")

    check = tbmirror("check", "--config", str(config))
    assert check.returncode == 1 and "authentication failed (basic credentials)" in check.stdout
    assert_no_secret(check.stdout + check.stderr, "not-the-password")


class AuthFront(http.server.ThreadingHTTPServer):
    """The stand-in described in the module docstring."""

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _FrontHandler)
        self.upstream = upstream
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.valid: set[str] = {PAT}
        self.issued = itertools.count(1)
        self.token_requests = 0
        self.revoke_after: int | None = None  # revoke every token after this many API calls
        self.api_calls = 0
        self.refused = 0
        self.authorizations: list[str] = []
        self.lock = threading.Lock()
        self.expires_in = 3600.0  # what an OAuth answer says of a token's life
        self.accepted_for: float | None = None  # seconds a token is accepted (None: no end)
        self.issued_at: dict[str, float] = {}

    def issue(self, prefix: str) -> str:
        token = f"{prefix}-{next(self.issued)}"
        with self.lock:
            self.token_requests += 1
            self.valid.add(token)
            self.issued_at[token] = time.monotonic()
        return token

    def accepts(self, token: str) -> bool:
        """Called under the lock."""
        if token not in self.valid:
            return False
        issued = self.issued_at.get(token)
        return (
            self.accepted_for is None
            or issued is None
            or (time.monotonic() - issued < self.accepted_for)
        )


class _FrontHandler(http.server.BaseHTTPRequestHandler):
    server: AuthFront

    def do_POST(self) -> None:
        if self.path == "/oidc/v1/token":
            expected = base64.b64encode(f"sp-client:{CLIENT_SECRET}".encode()).decode()
            form = urllib.parse.parse_qs(self._body().decode())
            if self.headers.get("Authorization") != f"Basic {expected}" or form.get(
                "grant_type"
            ) != ["client_credentials"]:
                return self._send(401, {"error": "invalid_client"})
            token = self.server.issue("dbx-oauth")
            return self._send(200, {"access_token": token, "token_type": "Bearer",
                                    "expires_in": self.server.expires_in})  # fmt: skip
        self._forward("POST")

    def do_GET(self) -> None:
        if self.path.startswith("/msi/token"):
            query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
            if self.headers.get("X-IDENTITY-HEADER") != IDENTITY_HEADER:
                return self._send(401, {"error": "bad identity header"})
            token = self.server.issue("azure-mi")
            # Short-lived, so that azure-identity's own cache hands out a new one on refresh.
            return self._send(200, {
                "access_token": token, "expires_on": str(int(time.time()) + 60),
                "resource": query["resource"][0], "token_type": "Bearer",
            })  # fmt: skip
        self._forward("GET")

    def _forward(self, method: str) -> None:
        authorization = self.headers.get("Authorization", "")
        token = authorization.removeprefix("Bearer ")
        with self.server.lock:
            self.server.authorizations.append(authorization)
            self.server.api_calls += 1
            if self.server.revoke_after and self.server.api_calls % self.server.revoke_after == 0:
                self.server.valid &= {PAT}  # every issued token expires now, mid-poll
            ok = self.server.accepts(token)
            self.server.refused += not ok
        if not ok:
            return self._send(401, {"error_code": "UNAUTHENTICATED", "message": "token expired"})
        path = self.path.split("/mlflow/v1.0/workspaces/ws", 1)[-1]  # Azure-style prefix
        response = httpx.request(
            method, self.server.upstream + path, content=self._body(),
            headers={"Content-Type": self.headers.get("Content-Type", "application/json")},
        )  # fmt: skip
        self._send(response.status_code, response.content)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def _send(self, code: int, body: object) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def front(mlflow_server: MlflowServer) -> Iterator[AuthFront]:
    server = AuthFront(mlflow_server.url)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


@pytest.mark.parametrize(
    "kind", ["bearer", "databricks-pat", "databricks-oauth", "azure-mi", "azure-default"]
)
def test_token_sources_send_the_right_bearer_and_refresh_it_mid_poll(
    kind: str, tmp_path: Path, front: AuthFront, mlflow_server: MlflowServer, mirror_root: Path,
    experiment_name: str, source_name: str,
) -> None:  # fmt: skip
    client = mlflow_server.client()
    run_id = new_run(client, experiment_name, "r")
    client.log_batch(
        run_id, metrics=[Metric("m", float(i), 1_700_000_000_000 + i, i) for i in range(40)]
    )
    (tmp_path / "token").write_text(PAT)
    (tmp_path / "client-secret").write_text(CLIENT_SECRET)
    env = {"TBM_PAT": PAT}
    url = front.url
    auth: dict = {
        "bearer": {"type": "bearer", "token": "${TBM_PAT}"},
        "databricks-pat": {"type": "databricks", "token_file": str(tmp_path / "token")},
        "databricks-oauth": {"type": "databricks", "client_id": "sp-client",
                             "client_secret_file": str(tmp_path / "client-secret")},
        "azure-mi": {"type": "azure", "credential": "managed_identity"},
        "azure-default": {"type": "azure"},
    }[kind]  # fmt: skip
    if kind.startswith("azure"):
        url = f"azureml://127.0.0.1:{front.server_address[1]}/mlflow/v1.0/workspaces/ws"
        env |= {"IDENTITY_ENDPOINT": f"{front.url}/msi/token", "IDENTITY_HEADER": IDENTITY_HEADER}
        front.valid.clear()  # the PAT is no good here
    elif kind == "databricks-oauth":
        front.valid.clear()
    config = write_config(tmp_path / "c.yaml", mirror_root, [
        mlflow_source(source_name, url, [experiment_name], auth=auth)
    ])  # fmt: skip
    if kind.startswith("azure"):
        # azureml:// is how Azure prints the URI; it is served over https there, over http here.
        settings = parse_settings(config.read_text())
        assert settings.sources[0].tracking_uri.startswith("https://127.0.0.1:")
        config.write_text(config.read_text().replace("azureml://", "http://"))

    front.revoke_after = 3  # tokens "expire" every third API call
    result = tbmirror("sync", "--config", str(config), env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert ", 40 points," in result.stdout
    assert all(a.startswith("Bearer ") for a in front.authorizations)
    if kind in ("bearer", "databricks-pat"):
        assert set(front.authorizations) == {f"Bearer {PAT}"} and front.refused == 0
    else:
        assert front.refused >= 1, "the stand-in expired a token mid-poll"
        assert front.token_requests >= 2, "an expired token is fetched again"
        assert f"Bearer {PAT}" not in front.authorizations
    assert_no_secret(output, PAT, CLIENT_SECRET, IDENTITY_HEADER, "dbx-oauth-", "azure-mi-")


@pytest.mark.e2e  # starts `tbmirror` (or another process)
def test_azure_without_azure_identity_is_one_clear_error(tmp_path: Path) -> None:
    """Simulated by hiding the package from the subprocess (an import hook in sitecustomize)."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import sys\nclass _Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'azure' or name.startswith('azure.'):\n"
        "            raise ImportError('hidden for the test')\n"
        "sys.meta_path.insert(0, _Hide())\n"
    )
    config = write_config(tmp_path / "c.yaml", tmp_path / "root", [
        mlflow_source("az", "https://127.0.0.1:9/mlflow", ["x"], auth={"type": "azure"})
    ])  # fmt: skip
    result = tbmirror("sync", "--config", str(config), env={"PYTHONPATH": str(hide)})
    assert result.returncode == 1
    assert "auth type azure needs azure-identity: pip install 'tbmirror[azure]'" in result.stdout


def test_auth_config_errors_name_the_field() -> None:
    base = (
        "mirror: {root: /r, state: /s}\nsources:\n"
        "- {name: a, type: mlflow, tracking_uri: http://x, experiments: [e], auth: %s}\n"
    )
    for auth, message in [
        (
            "{type: basic, username: u}",
            "sources[0].auth: password or password_file is required",
        ),
        ("{type: bearer, token: t, token_file: /f}", "give either token or token_file, not both"),
        ("{type: databricks, client_id: c}", "client_secret or client_secret_file is required"),
        (
            "{type: azure, credential: magic}",
            "sources[0].auth.credential: expected one of 'default', 'managed_identity'",
        ),
        (
            "{type: kerberos}",
            "sources[0].auth.type: expected one of 'basic', 'bearer', 'databricks', 'azure' (got",
        ),
    ]:
        with pytest.raises(ConfigError) as raised:
            parse_settings(base % auth)
        assert message in str(raised.value), str(raised.value)
    secret = parse_settings(base % "{type: bearer, token: hunter2-token}")
    assert "hunter2" not in repr(secret) and "hunter2" not in str(secret)
    assert "hunter2" not in msgspec.json.encode(secret, enc_hook=repr).decode()


def test_an_unreadable_secret_file_fails_that_source_only(
    tmp_path: Path, mlflow_server: MlflowServer, experiment_name: str
) -> None:
    mlflow_server.client().create_experiment(experiment_name)
    missing = tmp_path / "no-such-password"
    config = write_config(tmp_path / "c.yaml", tmp_path / "root", [
        mlflow_source("locked", mlflow_server.url, [experiment_name],
                      auth={"type": "basic", "username": "u", "password_file": str(missing)}),
        mlflow_source("open", mlflow_server.url, [experiment_name]),
    ])  # fmt: skip
    result = tbmirror("sync", "--config", str(config))
    assert result.returncode == 1
    assert f"FAIL  locked: cannot read password_file {missing}: No such file" in result.stdout
    assert "ok    open: 0 runs" in result.stdout


def test_an_oauth_token_is_refreshed_before_it_expires(
    tmp_path: Path, front: AuthFront, mlflow_server: MlflowServer, experiment_name: str,
    start_daemon: Callable[..., DaemonProcess],
) -> None:  # fmt: skip
    """README: tokens are "refreshed before they expire". A token said to expire in
    REFRESH_MARGIN_SECONDS + 3 s is due for renewal 3 s after it is issued; the stand-in refuses it
    8 s after. A daemon polling every second for longer than that never meets a refusal: each
    token was replaced ahead of its end, not after a 401."""
    new_run(mlflow_server.client(), experiment_name, "r")
    (tmp_path / "client-secret").write_text(CLIENT_SECRET)
    front.valid.clear()
    front.expires_in, front.accepted_for = REFRESH_MARGIN_SECONDS + 3, 8.0
    auth = {"type": "databricks", "client_id": "sp-client",
            "client_secret_file": str(tmp_path / "client-secret")}  # fmt: skip
    config, _, _ = daemon_config(tmp_path / "c.yaml", tmp_path / "root", [
        mlflow_source("oauth", front.url, [experiment_name], auth=auth, poll_interval="1s")
    ], tensorboard={"enabled": False})  # fmt: skip
    daemon = start_daemon(config)
    wait_until(lambda: front.token_requests >= 4, 120, "four tokens (a daemon up for 9 s and more)",
               saw=lambda: (front.token_requests, front.refused))  # fmt: skip
    assert daemon.stop() == 0
    assert front.refused == 0, f"{front.refused} requests with an expired token"
    assert not [e for e in daemon.events() if e.get("event") == "token_refused_refreshing"]
