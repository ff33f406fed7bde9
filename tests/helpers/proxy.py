"""The shipped nginx files (deploy/nginx/) run for real: rendered the way the docs say, with a
self-signed certificate, on free 127.0.0.1 ports; and a stand-in for oauth2-proxy.

Only the main nginx.conf is the test's own: it stands in for Debian's /etc/nginx/nginx.conf
(which runs as www-data and writes under /var/log) and includes the rendered site file the way
Debian's includes sites-enabled/*. The site and the snippets are the shipped files.

oauth2-proxy is not packaged in Debian, so `SsoStandIn` answers its endpoints the way it does
for nginx's auth_request (202 with X-Auth-Request-User for a valid session cookie, else 401; a
sign-in page; /oauth2/start setting the cookie and redirecting back). It has no identity
provider: /oauth2/start signs in at once.
"""

from __future__ import annotations

import http.server
import re
import ssl
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from conftest import (
    REPO,
    DaemonProcess,
    MlflowServer,
    TensorBoardReader,
    daemon_config,
    mlflow_source,
    new_run,
    tb_run,
    wait_until,
)
from helpers.tools import tools
from tbmirror.processes import free_port, stop_process_group

SHIPPED = REPO / "deploy" / "nginx"
PLACEHOLDER = re.compile(r"@[A-Z_]+@")
HEALTH_INCLUDE = "# include snippets/tbmirror-health.conf;"
SESSION_COOKIE = "_oauth2_proxy"
TOOLS = (("nginx", "nginx"), ("openssl", "openssl"), ("htpasswd", "apache2-utils"))
PREFIX = "/tensorboard"  # tensorboard.path_prefix and the docs' example
USER, PASSWORD = "alice", "correct-horse-battery-9"
UI_URL = "https://mlflow.example.org"  # the MLflow address colleagues open (ui_url)
SOURCE = "team"
POINTS = {"alpha": [0.9, 0.7, 0.5, 0.4, 0.35], "beta": [1.2, 1.0, 0.8]}  # loss per step


def need_tools(*more: tuple[str, str]) -> None:
    """The programs these tests need, (command, Debian package), TOOLS and `more`: a missing
    one fails under CI, else skips (helpers/tools.py)."""
    tools(*TOOLS, *more)


def render(path: Path, values: dict[str, str]) -> str:
    """A shipped file with its @NAME@ placeholders replaced (as the docs' sed does); fails if
    one is left."""
    text = path.read_text()
    for name, value in values.items():
        text = text.replace(f"@{name}@", value)
    left = sorted(set(PLACEHOLDER.findall(text)))
    assert not left, f"{path.name}: placeholders not rendered: {left}"
    return text


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """(certificate, key) for 127.0.0.1, made with openssl."""
    cert, key = directory / "tls.crt", directory / "tls.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def write_htpasswd(path: Path, user: str, password: str) -> None:
    """A bcrypt password file, made with htpasswd as the docs say."""
    subprocess.run(
        ["htpasswd", "-B", "-b", "-c", str(path), user, password], check=True, capture_output=True
    )


class SsoStandIn:
    """oauth2-proxy's endpoints for nginx (see the module docstring), on a free port."""

    def __init__(self, user: str) -> None:
        self.user = user
        self.token = "session-" + user
        self.forwarded_uris: list[str] = []
        stand_in = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                if url.path == "/oauth2/auth":
                    stand_in.forwarded_uris.append(self.headers.get("X-Forwarded-Uri", ""))
                    if stand_in.signed_in(self.headers.get("Cookie", "")):
                        self._answer(202, headers={"X-Auth-Request-User": stand_in.user})
                    else:
                        self._answer(401)
                elif url.path == "/oauth2/sign_in":
                    back = urllib.parse.quote(self.headers.get("X-Auth-Request-Redirect", "/"))
                    page = f'<html><body><a id="sign-in" href="/oauth2/start?rd={back}">Sign in</a>'
                    self._answer(200, page.encode(), {"Content-Type": "text/html"})
                elif url.path == "/oauth2/start":
                    back = urllib.parse.parse_qs(url.query).get("rd", ["/"])[0]
                    if not back.startswith("/") or back.startswith("//"):
                        back = "/"  # never an open redirect
                    cookie = f"{SESSION_COOKIE}={stand_in.token}; Path=/; Secure; HttpOnly"
                    self._answer(302, headers={"Location": back, "Set-Cookie": cookie})
                else:
                    self._answer(404)

            def _answer(
                self, code: int, body: bytes = b"", headers: dict[str, str] | None = None
            ) -> None:
                self.send_response(code)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def signed_in(self, cookie_header: str) -> bool:
        cookies = dict(
            part.strip().split("=", 1) for part in cookie_header.split(";") if "=" in part
        )
        return cookies.get(SESSION_COOKIE) == self.token

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Nginx:
    """Debian's nginx in the foreground on the rendered shipped files; `url` is its HTTPS base."""

    def __init__(self, directory: Path, auth: str, values: dict[str, str], health: bool) -> None:
        """`auth` names the shipped sign-in snippet (basic or sso); `values` the placeholders
        (HTTPS_PORT and HTTP_PORT among them; the certificate is made here); `health` enables
        the optional tbmirror-health.conf include as the docs say (uncommenting its line)."""
        self.directory = directory
        (directory / "snippets").mkdir(parents=True)
        cert, key = self_signed_certificate(directory)
        values = {**values, "SERVER_NAME": "127.0.0.1", "CERT": str(cert), "KEY": str(key),
                  "LOG_DIR": str(directory)}  # fmt: skip
        site = render(SHIPPED / "tbmirror.conf", values)
        if health:
            assert HEALTH_INCLUDE in site, "tbmirror.conf lost its optional health include"
            site = site.replace(HEALTH_INCLUDE, HEALTH_INCLUDE.removeprefix("# "))
        (directory / "tbmirror.conf").write_text(site)
        for target, shipped in (
            ("tbmirror-auth.conf", SHIPPED / f"tbmirror-auth-{auth}.conf"),
            ("tbmirror-health.conf", SHIPPED / "tbmirror-health.conf"),
        ):
            (directory / "snippets" / target).write_text(render(shipped, values))
        conf = directory / "nginx.conf"
        conf.write_text(
            "user root;\nworker_processes 1;\n"
            f"error_log {directory}/error.log;\npid {directory}/nginx.pid;\n"
            "events { worker_connections 64; }\n"
            "http {\n  include /etc/nginx/mime.types;\n  default_type application/octet-stream;\n"
            f"  access_log {directory}/access.log;\n  include tbmirror.conf;\n}}\n"
        )
        command = ["nginx", "-p", str(directory), "-e", str(directory / "error.log")]
        command += ["-c", str(conf)]
        checked = subprocess.run([*command, "-t"], capture_output=True, text=True)
        assert checked.returncode == 0, f"nginx -t: {checked.stderr}"
        self.process = subprocess.Popen(
            [*command, "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=(directory / "stderr.log").open("ab"),
            start_new_session=True,
        )
        self.url = f"https://127.0.0.1:{values['HTTPS_PORT']}"
        self.http_url = f"http://127.0.0.1:{values['HTTP_PORT']}"
        self.certificate = cert
        wait_until(self._listening, 15, f"nginx on {self.url}")

    def _listening(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"nginx exited: {self.error_log()}")
        try:
            httpx.get(self.url, verify=self.trust(), timeout=2)
        except httpx.TransportError:
            return False
        return True

    def access_log(self) -> list[str]:
        return (self.directory / "tbmirror.access.log").read_text().splitlines()

    def error_log(self) -> str:
        path = self.directory / "error.log"
        return path.read_text()[-3000:] if path.exists() else ""

    def client(self, **options: Any) -> httpx.Client:
        """An HTTPS client to the proxy (its self-signed certificate trusted)."""
        return httpx.Client(base_url=self.url, verify=self.trust(), timeout=30, **options)

    def trust(self) -> ssl.SSLContext:
        """A TLS context that trusts this proxy's self-signed certificate (and nothing else)."""
        return ssl.create_default_context(cafile=self.certificate)

    def stop(self) -> None:
        stop_process_group(self.process, grace=5)


def proxy_values(
    prefix: str, tensorboard_port: int, health_port: int, sso_port: int
) -> dict[str, str]:
    """Every placeholder but the certificate's and server name, on fresh free ports."""
    return {
        "HTTPS_PORT": str(free_port()),
        "HTTP_PORT": str(free_port()),
        "PREFIX": prefix,
        "TENSORBOARD_PORT": str(tensorboard_port),
        "HEALTH_PORT": str(health_port),
        "SSO_PORT": str(sso_port),
    }


@dataclass
class ProxyStack:
    """A daemon (its TensorBoard under PREFIX) mirroring POINTS from a real mlflow server, and
    two nginx in front of it: `basic` (htpasswd; /healthz and /metrics not served, the shipped
    default) and `sso` (auth_request to `sso_service`; the optional health snippet enabled)."""

    basic: Nginx
    sso: Nginx
    sso_service: SsoStandIn
    daemon: DaemonProcess
    config: Path
    local: TensorBoardReader  # TensorBoard itself, on 127.0.0.1
    experiment_id: str
    run_ids: dict[str, str]  # run name -> MLflow run id
    runs: dict[str, str]  # run name -> TensorBoard's run name
    public_url: str


@contextmanager
def proxy_stack(directory: Path, mlflow: MlflowServer) -> Iterator[ProxyStack]:
    directory.mkdir(parents=True, exist_ok=True)
    experiment = f"proxy-{time.time_ns()}"
    client = mlflow.client()
    run_ids = {}
    for name, values in POINTS.items():
        run_ids[name] = new_run(client, experiment, name)
        for step, value in enumerate(values):
            client.log_metric(run_ids[name], "loss", value, step=step)
    with ExitStack() as cleanup:
        sso_service = SsoStandIn(USER)
        cleanup.callback(sso_service.stop)
        tensorboard_port, health_port = free_port(), free_port()
        basic_values = proxy_values(PREFIX, tensorboard_port, health_port, sso_service.port)
        sso_values = proxy_values(PREFIX, tensorboard_port, health_port, sso_service.port)
        public_url = f"https://127.0.0.1:{basic_values['HTTPS_PORT']}{PREFIX}/"
        sources = [
            mlflow_source(SOURCE, mlflow.url, [experiment], poll_interval="1s", ui_url=UI_URL),
            # no ui_url: its links would point at 127.0.0.1, which the daemon warns about
            mlflow_source(
                "loopback-links", mlflow.url, [experiment + "-none"], poll_interval="60s"
            ),
        ]
        config, _, _ = daemon_config(
            directory / "tbmirror.yaml", directory / "root", sources,
            tensorboard={"port": tensorboard_port, "path_prefix": PREFIX, "public_url": public_url},
            health={"port": health_port},
        )  # fmt: skip
        daemon = DaemonProcess(config, directory / "daemon.log")
        cleanup.callback(daemon.cleanup)
        local = TensorBoardReader(f"http://127.0.0.1:{tensorboard_port}{PREFIX}")
        daemon.wait_event("tensorboard_ready")
        runs = {name: tb_run(SOURCE, experiment, name) for name in POINTS}
        for name, values in POINTS.items():
            local.wait_scalars(runs[name], "loss", len(values))
        (directory / "basic").mkdir()
        write_htpasswd(directory / "basic" / "tbmirror.htpasswd", USER, PASSWORD)
        basic = Nginx(directory / "basic", "basic", basic_values, health=False)
        cleanup.callback(basic.stop)
        sso = Nginx(directory / "sso", "sso", sso_values, health=True)
        cleanup.callback(sso.stop)
        experiment_id = client.get_experiment_by_name(experiment).experiment_id
        yield ProxyStack(
            basic, sso, sso_service, daemon, config, local, experiment_id, run_ids, runs, public_url
        )
        assert "Traceback" not in daemon.log_path.read_text(errors="replace")
