"""deploy/nginx/ end to end: Debian's nginx on the shipped files (rendered as the docs say) in
front of a real daemon whose TensorBoard runs under a path prefix, mirroring a real mlflow
server; sign-in by htpasswd and by the auth_request hook (oauth2-proxy's part played by the
test's stand-in, helpers/proxy.py)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from conftest import REPO, MlflowServer, tbmirror
from helpers.proxy import (
    PASSWORD,
    PLACEHOLDER,
    POINTS,
    PREFIX,
    SESSION_COOKIE,
    SHIPPED,
    UI_URL,
    USER,
    ProxyStack,
    need_tools,
    proxy_stack,
)
from tbmirror.config import parse_settings
from tbmirror.errors import ConfigError

DAEMON_PATHS = ["/healthz", "/metrics", f"{PREFIX}/healthz", f"{PREFIX}/metrics",
                "/tbmirror/healthz", "/tbmirror/metrics"]  # fmt: skip


def test_the_shipped_proxy_end_to_end(tmp_path: Path, mlflow_server: MlflowServer) -> None:
    """One stack for every check below (a module fixture would be built once per xdist
    worker the module's tests land on)."""
    need_tools()
    with proxy_stack(tmp_path, mlflow_server) as stack:
        for variant in ("basic", "sso"):
            check_tensorboard_answers_when_signed_in(stack, variant)
            check_the_daemons_endpoints_need_sign_in_or_are_not_served(stack, variant)
        check_basic_auth_refuses_no_or_wrong_credentials(stack)
        check_sso_hook_refuses_without_a_session_and_signs_in_by_cookie(stack)
        check_plain_http_only_redirects_to_https(stack)
        check_printed_urls_carry_the_public_address_and_links_open_mlflow(stack)


def signed_in(stack: ProxyStack, variant: str) -> httpx.Client:
    if variant == "basic":
        return stack.basic.client(auth=(USER, PASSWORD))
    return stack.sso.client(cookies={SESSION_COOKIE: stack.sso_service.token})


def check_tensorboard_answers_when_signed_in(stack: ProxyStack, variant: str) -> None:
    with signed_in(stack, variant) as http:
        runs = http.get(f"{PREFIX}/data/runs")
        assert runs.status_code == 200, runs.text
        assert set(stack.runs.values()) <= set(runs.json())
        for name, values in POINTS.items():
            answer = http.get(
                f"{PREFIX}/data/plugin/scalars/scalars",
                params={"run": stack.runs[name], "tag": "loss"},
            )
            assert answer.status_code == 200, answer.text
            points = [(step, value) for _, step, value in answer.json()]
            assert points == [pytest.approx((s, v)) for s, v in enumerate(values)]
        page = http.get(f"{PREFIX}/")
        assert page.status_code == 200 and "<tb-webapp" in page.text
        assert page.headers["strict-transport-security"].startswith("max-age=")
        assert http.get(PREFIX).headers["location"] == f"{PREFIX}/"
        assert http.get("/").headers["location"] == f"{PREFIX}/"
    nginx = stack.basic if variant == "basic" else stack.sso
    served = f'"GET {PREFIX}/data/runs HTTP/1.1" 200 '
    logged = [line for line in nginx.access_log() if served in line]
    assert logged and all(f" {USER} [" in line for line in logged), logged  # who signed in


def check_basic_auth_refuses_no_or_wrong_credentials(stack: ProxyStack) -> None:
    for auth in (None, (USER, "wrong"), ("mallory", PASSWORD)):
        seen = len(stack.basic.access_log())
        with stack.basic.client(auth=auth) as http:
            for path in (f"{PREFIX}/", f"{PREFIX}/data/runs", "/elsewhere"):
                answer = http.get(path)
                assert answer.status_code == 401, (auth, path, answer.status_code)
                assert answer.headers["www-authenticate"] == 'Basic realm="tbmirror"'
                assert "tb-webapp" not in answer.text
            for path in ("/", PREFIX):  # `return` runs before sign-in: only says where to go
                answer = http.get(path)
                assert (answer.status_code, answer.headers["location"]) == (302, f"{PREFIX}/")
        refused = [line for line in stack.basic.access_log()[seen:] if '" 401 ' in line]
        assert len(refused) == 3, refused  # a refused attempt never logs the name it claimed
        assert all(line.split()[1] == "-" for line in refused), refused


def check_sso_hook_refuses_without_a_session_and_signs_in_by_cookie(stack: ProxyStack) -> None:
    service = stack.sso_service
    seen = len(service.forwarded_uris)
    with stack.sso.client(cookies={SESSION_COOKIE: "forged"}) as forged:
        answer = forged.get(f"{PREFIX}/data/runs")
        assert answer.status_code == 401
        assert not any(run in answer.text for run in stack.runs.values())
        # the body is the SSO proxy's sign-in page, which leads back to what was asked for
        assert f'href="/oauth2/start?rd={PREFIX}/data/runs"' in answer.text
    assert service.forwarded_uris[seen:] == [f"{PREFIX}/data/runs"]
    with stack.sso.client() as browser:  # the sign-in flow a browser follows, cookie and all
        assert browser.get(f"{PREFIX}/").status_code == 401
        start = browser.get("/oauth2/start", params={"rd": f"{PREFIX}/"})
        assert start.status_code == 302 and start.headers["location"] == f"{PREFIX}/"
        assert "secure" in start.headers["set-cookie"].lower()
        page = browser.get(f"{PREFIX}/")
        assert page.status_code == 200 and "<tb-webapp" in page.text
        assert browser.get(f"{PREFIX}/data/runs").json()


def check_the_daemons_endpoints_need_sign_in_or_are_not_served(
    stack: ProxyStack, variant: str
) -> None:
    nginx = stack.basic if variant == "basic" else stack.sso
    with nginx.client() as anonymous:
        for path in DAEMON_PATHS:
            assert anonymous.get(path).status_code == 401, path
    with signed_in(stack, variant) as http:
        answers = {path: http.get(path) for path in DAEMON_PATHS}
    for path in DAEMON_PATHS[:4]:  # TensorBoard's or nobody's: never the daemon's
        assert answers[path].status_code == 404, (path, answers[path].text[:200])
    optional = [answers["/tbmirror/healthz"], answers["/tbmirror/metrics"]]
    if variant == "basic":  # the shipped default: not served at all
        assert [answer.status_code for answer in optional] == [404, 404]
    else:  # tbmirror-health.conf included: served to the signed-in
        assert [answer.status_code for answer in optional] == [200, 200]
        assert optional[0].json()["status"] in ("ok", "degraded")
        assert "tbmirror_" in optional[1].text


def check_plain_http_only_redirects_to_https(stack: ProxyStack) -> None:
    for nginx in (stack.basic, stack.sso):
        for path in (f"{PREFIX}/data/runs", "/healthz"):
            answer = httpx.get(nginx.http_url + path, auth=(USER, PASSWORD), timeout=10)
            assert answer.status_code == 301, answer.text
            assert answer.headers["location"] == f"{nginx.url}{path}"  # the real port
            assert not any(run in answer.text for run in stack.runs.values())


def check_printed_urls_carry_the_public_address_and_links_open_mlflow(
    stack: ProxyStack,
) -> None:
    assert stack.public_url.startswith("https://127.0.0.1:") and stack.public_url.endswith(
        f"{PREFIX}/"
    )
    banner = stack.daemon.wait_event("tensorboard_url")
    assert banner["url"] == stack.public_url
    warned = [e["source"] for e in stack.daemon.events() if e["event"] == "mlflow_links_not_public"]
    assert warned == ["loopback-links"]  # SOURCE sets ui_url
    status = tbmirror("status", "--config", str(stack.config))
    assert status.returncode == 0, status.stderr
    assert f"TensorBoard: {stack.public_url}\n" in status.stdout
    # the public URL itself, signed in, is the dashboard
    with signed_in(stack, "basic") as http:
        assert "<tb-webapp" in http.get(stack.public_url).text
        text = http.get(
            f"{PREFIX}/data/plugin/text/text",
            params={"run": stack.runs["alpha"], "tag": "mlflow (run info)"},
        ).json()
    link = f"{UI_URL}/#/experiments/{stack.experiment_id}/runs/{stack.run_ids['alpha']}"
    assert f'href="{link}"' in text[-1]["text"], text[-1]["text"][:500]


CONFIG = """
mirror: {root: /srv/tbmirror/logs, state: /srv/tbmirror/state.db}
sources: [{name: team, type: mlflow, tracking_uri: "http://127.0.0.1:5000", experiments: [a]}]
tensorboard: {path_prefix: /tensorboard, public_url: "%s"}
"""


def test_public_url_is_the_prefix_on_another_host_and_never_holds_a_password() -> None:
    settings = parse_settings(CONFIG % "https://dash.example.org/tensorboard")
    assert settings.tensorboard.public_url == "https://dash.example.org/tensorboard/"
    assert settings.tensorboard.shown_url == "https://dash.example.org/tensorboard/"
    assert settings.tensorboard.url == "http://127.0.0.1:6006/tensorboard/"  # what is probed
    with pytest.raises(ConfigError, match=r"public_url: its path must be tensorboard.path_prefix"):
        parse_settings(CONFIG % "https://dash.example.org/board/")
    with pytest.raises(ConfigError) as raised:
        parse_settings(CONFIG % "https://alice:hunter2-pw@dash.example.org/tensorboard/")
    assert "tensorboard.public_url" in str(raised.value) and "hunter2" not in str(raised.value)
    for bad in ("dash.example.org/tensorboard", "https://dash.example.org/tensorboard/?a=1"):
        with pytest.raises(ConfigError, match=r"tensorboard.public_url"):
            parse_settings(CONFIG % bad)
    unset = parse_settings(CONFIG.replace(', public_url: "%s"', ""))
    assert unset.tensorboard.shown_url == "http://127.0.0.1:6006/tensorboard/"


def test_the_docs_render_every_placeholder_of_the_shipped_files() -> None:
    shipped = {
        name for path in SHIPPED.glob("*.conf") for name in PLACEHOLDER.findall(path.read_text())
    }
    page = (REPO / "docs" / "operations" / "reverse-proxy.md").read_text()
    rendered = set(re.findall(r"s\|(@[A-Z_]+@)\|", page))
    tabled = set(re.findall(r"^\| `(@[A-Z_]+@)`", page, re.MULTILINE))
    tabled |= set(re.findall(r"^\| `@CERT@`, `(@KEY@)`", page, re.MULTILINE))
    assert rendered == shipped and tabled == shipped, (shipped, rendered, tabled)
