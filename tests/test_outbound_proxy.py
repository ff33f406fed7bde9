"""Sources behind an outbound proxy: HTTP_PROXY/HTTPS_PROXY/ALL_PROXY/NO_PROXY are honoured as
httpx honours them by default, with the request's deadline and the stop event kept.

The proxy is a real tinyproxy (helpers/tinyproxy.py) in front of the session's real `mlflow
server`, or of peers that misbehave (helpers/hostile_proxy.py's trickle, a silent listener)."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from mlflow.entities import Metric

from conftest import (
    MlflowServer,
    mlflow_source,
    new_run,
    scalars_in,
    tbmirror,
    write_config,
)
from helpers.hostile_proxy import HostileProxy
from helpers.proxy import self_signed_certificate
from helpers.tinyproxy import Tinyproxy
from helpers.tools import tool
from tbmirror.errors import ConfigError, SourceError, StoppedError
from tbmirror.sources.http import RestClient
from tbmirror.sources.proxies import environment_proxies

pytestmark = pytest.mark.e2e  # starts tinyproxy, servers and `tbmirror` of its own

SEARCH = "/api/2.0/mlflow/experiments/search"
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
SECRET = "pr0xy-s3cret"
WRONG = f"alice:wrong-{SECRET}@"


@pytest.fixture(autouse=True)
def no_inherited_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sets the proxy variables it means, and only those."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture
def tinyproxy(tmp_path: Path) -> Iterator[Tinyproxy]:
    with Tinyproxy(tmp_path / "tinyproxy") as started:
        yield started


def logged_run(server: MlflowServer, experiment: str, points: int) -> None:
    client = server.client()
    run_id = new_run(client, experiment, "r")
    client.log_batch(
        run_id, metrics=[Metric("loss", i / 10, 1_700_000_000_000 + i, i) for i in range(points)]
    )


def sync_with(
    tmp_path: Path, server: MlflowServer, source: str, experiment: str, env: dict[str, str]
) -> tuple[str, Path]:
    """`tbmirror sync` of `experiment` with `env` added: its output, and the run's directory."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    root = tmp_path / "mirror"
    config = write_config(
        tmp_path / "tbmirror.yaml", root, [mlflow_source(source, server.url, [experiment])]
    )
    result = tbmirror("sync", "--config", str(config), env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr, root / source / experiment / "r"


def requests_to(proxy: Tinyproxy, server: MlflowServer) -> list[str]:
    """The request lines the proxy forwarded to `server`."""
    return [line for line in proxy.requests() if f" {server.url}/" in line]


def test_sync_goes_through_http_proxy(
    tmp_path: Path,
    mlflow_server: MlflowServer,
    tinyproxy: Tinyproxy,
    source_name: str,
    experiment_name: str,
) -> None:
    logged_run(mlflow_server, experiment_name, 5)
    output, run = sync_with(
        tmp_path, mlflow_server, source_name, experiment_name, {"HTTP_PROXY": tinyproxy.url}
    )
    assert len(scalars_in(run, "loss")) == 5, output
    seen = requests_to(tinyproxy, mlflow_server)
    assert any("/runs/search" in line for line in seen), tinyproxy.log()
    assert any("/metrics/get-history" in line for line in seen), tinyproxy.log()
    assert "proxy_from_environment" in output


def test_no_proxy_sends_matching_hosts_direct(
    tmp_path: Path,
    mlflow_server: MlflowServer,
    tinyproxy: Tinyproxy,
    source_name: str,
    experiment_name: str,
) -> None:
    logged_run(mlflow_server, experiment_name, 3)
    env = {"HTTP_PROXY": tinyproxy.url, "NO_PROXY": "example.org,127.0.0.1"}
    output, run = sync_with(tmp_path, mlflow_server, source_name, experiment_name, env)
    assert len(scalars_in(run, "loss")) == 3, output
    assert tinyproxy.requests() == [], tinyproxy.log()


def test_an_authenticating_proxy_gets_its_credentials_which_are_never_shown(
    tmp_path: Path,
    mlflow_server: MlflowServer,
    source_name: str,
    experiment_name: str,
) -> None:
    """Right credentials: the sync works; none or wrong ones: it fails on the proxy's refusal.
    Neither the password nor user:password@ appears in the output, the proxy's address does."""
    logged_run(mlflow_server, experiment_name, 2)
    with Tinyproxy(tmp_path / "tinyproxy", basic_auth=("alice", SECRET)) as proxy:
        address = proxy.url.removeprefix("http://")
        good = {"HTTP_PROXY": f"http://alice:{SECRET}@{address}"}
        output, run = sync_with(
            tmp_path / "good", mlflow_server, source_name, experiment_name, good
        )
        assert len(scalars_in(run, "loss")) == 2, output
        assert SECRET not in output and "alice:" not in output
        assert proxy.url in output, "the log should name the proxy in use"

        config = write_config(
            tmp_path / "bad.yaml",
            tmp_path / "bad",
            [mlflow_source(source_name, mlflow_server.url, [experiment_name])],
        )
        # tinyproxy answers 407 without credentials, 401 to a wrong password
        for credentials, refused in (("", "HTTP 407: the proxy wants"), (WRONG, "HTTP 401")):
            bad = {"HTTP_PROXY": f"http://{credentials}{address}"}
            result = tbmirror("sync", "--config", str(config), env=bad)
            said = result.stdout + result.stderr
            assert result.returncode != 0 and refused in said, said
            assert SECRET not in said and "alice:" not in said


def test_an_unreachable_proxy_is_named_without_its_credentials(tmp_path: Path) -> None:
    """Nothing listens at the proxy's port: the error names the proxy, never its password."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    environment = {"HTTP_PROXY": f"http://alice:{SECRET}@127.0.0.1:{port}"}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in environment.items():
            patch.setenv(name, value)
        client = RestClient("http://192.0.2.1:5000", timeout=5.0, max_retries=0)
    try:
        with pytest.raises(SourceError) as raised:
            client.get(SEARCH)
    finally:
        client.close()
    message = str(raised.value)
    assert f"through the proxy http://127.0.0.1:{port}" in message, message
    assert "connection refused" in message, message
    assert SECRET not in message and "alice" not in message


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        (
            "HTTPS_PROXY",
            f"socks5://alice:{SECRET}@127.0.0.1:1080",
            "socks5:// proxy is not supported",
        ),
        ("HTTP_PROXY", f"https://alice:{SECRET}@127.0.0.1:3128", "https:// proxy is not supported"),
        ("ALL_PROXY", f"ftp://alice:{SECRET}@127.0.0.1:21", "not a proxy URL"),
    ],
)
def test_an_unusable_proxy_variable_is_a_config_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, said: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as raised:
        environment_proxies()
    message = str(raised.value)
    assert message.startswith(variable) and said in message, message
    assert SECRET not in message and "alice" not in message


def test_no_proxy_follows_httpx(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment's variables mapped as httpx maps them (curl's NO_PROXY rules)."""
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("HTTPS_PROXY", "proxy.example:3129")
    monkeypatch.setenv("NO_PROXY", "localhost, 10.1.2.3,.corp.example,::1")
    found = {key: None if p is None else str(p.url) for key, p in environment_proxies().items()}
    assert found == {
        "http://": "http://proxy.example:3128",
        "https://": "http://proxy.example:3129",
        "all://localhost": None,
        "all://10.1.2.3": None,
        "all://*.corp.example": None,
        "all://[::1]": None,
    }
    monkeypatch.setenv("NO_PROXY", "*")
    assert environment_proxies() == {}


def test_the_deadline_ends_a_request_through_the_proxy(
    monkeypatch: pytest.MonkeyPatch, tinyproxy: Tinyproxy, proxy: HostileProxy
) -> None:
    """The target trickles its status line and headers (one byte per 0.5 s, well within every
    per-read timeout): the proxy holds the answer back, and the request's 2 s deadline ends it."""
    proxy.set("trickle", head=True, interval=0.5)
    monkeypatch.setenv("HTTP_PROXY", tinyproxy.url)
    client = RestClient(proxy.url, timeout=2.0, max_retries=0)
    try:
        with pytest.raises(SourceError, match="no complete answer within the timeout"):
            client.get(SEARCH)
    finally:
        client.close()
    assert any(f"{proxy.url}{SEARCH}" in line for line in tinyproxy.requests()), tinyproxy.log()


def test_stop_ends_a_request_through_the_proxy(
    monkeypatch: pytest.MonkeyPatch, tinyproxy: Tinyproxy, proxy: HostileProxy
) -> None:
    """With a 10-minute deadline, only the stop event can end this request early."""
    proxy.set("trickle", head=True, interval=0.5)
    monkeypatch.setenv("HTTP_PROXY", tinyproxy.url)
    client = RestClient(proxy.url, timeout=600.0, max_retries=0)
    threading.Timer(1.5, client.stop.set).start()
    try:
        with pytest.raises(StoppedError):
            client.get(SEARCH)
    finally:
        client.close()
    assert any(f"{proxy.url}{SEARCH}" in line for line in tinyproxy.requests()), tinyproxy.log()


class TlsJsonServer:
    """An HTTPS server on 127.0.0.1 (a self-signed certificate for that address) answering
    every GET with `BODY`; `paths` are those it was asked for."""

    BODY = b'{"experiments": []}'

    def __init__(self, directory: Path) -> None:
        certificate, key = self_signed_certificate(directory)
        self.certificate, self.paths = certificate, list[str]()
        paths = self.paths

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                paths.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(TlsJsonServer.BODY)))
                self.end_headers()
                self.wfile.write(TlsJsonServer.BODY)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certificate, key)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)
        assert not self._thread.is_alive(), "the HTTPS server thread is left running"


def test_https_goes_through_a_connect_tunnel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tinyproxy: Tinyproxy
) -> None:
    """An https:// server behind HTTPS_PROXY: the proxy sees one CONNECT and no request (TLS
    runs end to end, the certificate checked as usual), and the answer arrives."""
    monkeypatch.setenv("HTTPS_PROXY", tinyproxy.url)
    port = get_over_tls(tmp_path, monkeypatch)
    assert tinyproxy.requests() == [f"CONNECT 127.0.0.1:{port} HTTP/1.1"], tinyproxy.log()


def test_https_direct_trusts_the_certificate_ssl_cert_file_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Direct to an https:// server, no proxy: the TLS context (built at the client's first
    https connection, sources/http.py) trusts what SSL_CERT_FILE names, as httpx does."""
    get_over_tls(tmp_path, monkeypatch)


def get_over_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """One GET of SEARCH from an https:// server whose certificate SSL_CERT_FILE names, checked
    to arrive whole and to be the one request the server saw; the server's port."""
    tool("openssl", "openssl")  # makes the server's certificate
    server = TlsJsonServer(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(server.certificate))
    client = RestClient(f"https://127.0.0.1:{server.port}", timeout=30.0, max_retries=0)
    try:
        assert client.get(SEARCH) == TlsJsonServer.BODY
    finally:
        client.close()
        server.close()
    assert server.paths == [SEARCH]
    return server.port


def test_a_refused_tunnel_names_the_proxy_and_its_answer(tmp_path: Path) -> None:
    """A proxy that opens tunnels to port 443 only refuses one to another port: one error
    naming the proxy and what it answered."""
    with Tinyproxy(tmp_path / "tinyproxy", connect_ports=(443,)) as proxy:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("HTTPS_PROXY", proxy.url)
            client = RestClient("https://127.0.0.1:8443", timeout=10.0, max_retries=0)
        try:
            with pytest.raises(SourceError) as raised:
                client.get(SEARCH)
        finally:
            client.close()
        assert proxy.requests() == ["CONNECT 127.0.0.1:8443 HTTP/1.1"], proxy.log()
    message = str(raised.value)
    assert f"through the proxy {proxy.url} would not open a tunnel: 403" in message, message


def test_https_is_tunnelled_with_connect_and_the_deadline_holds(
    monkeypatch: pytest.MonkeyPatch, tinyproxy: Tinyproxy
) -> None:
    """An https:// target goes through CONNECT; the peer behind it accepts the tunnel and never
    answers the TLS handshake: the request's 2 s deadline ends the wait."""
    silent = socket.create_server(("127.0.0.1", 0))  # the kernel accepts; nobody ever answers
    port = silent.getsockname()[1]
    monkeypatch.setenv("HTTPS_PROXY", tinyproxy.url)
    client = RestClient(f"https://127.0.0.1:{port}", timeout=2.0, max_retries=0)
    try:
        with pytest.raises(SourceError, match="no complete answer within the timeout"):
            client.get(SEARCH)
    finally:
        client.close()
        silent.close()
    assert tinyproxy.requests() == [f"CONNECT 127.0.0.1:{port} HTTP/1.1"], tinyproxy.log()


@pytest.mark.parametrize("through_proxy", [False, True], ids=["direct", "through-the-proxy"])
def test_a_certificate_not_trusted_is_said_as_such_and_not_blamed_on_the_proxy(
    through_proxy: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tinyproxy: Tinyproxy
) -> None:
    """The server's self-signed certificate is not trusted (no SSL_CERT_FILE for it): the error
    names the TLS handshake and why, and through a proxy that did open the tunnel it does not
    send the operator to debug the proxy."""
    tool("openssl", "openssl")
    server = TlsJsonServer(tmp_path)
    if through_proxy:
        monkeypatch.setenv("HTTPS_PROXY", tinyproxy.url)
    client = RestClient(f"https://127.0.0.1:{server.port}", timeout=30.0, max_retries=0)
    try:
        with pytest.raises(SourceError) as raised:
            client.get(SEARCH)
    finally:
        client.close()
        server.close()
    said = str(raised.value)
    assert "cannot connect: the TLS handshake failed: the server's certificate is not trusted " in (
        said
    ), said
    assert "proxy" not in said, said
    assert server.paths == []
