"""A rotated secret file is used on the next request, without a 401 first: a password_file or
token_file in a volume the way the kubelet rotates a Secret (a new directory, the `..data`
symlink swapped), and one rewritten in place. The requests go to an in-process httpx transport
(the seam), which records the Authorization header each carried."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import httpx
from structlog.testing import capture_logs

from helpers.kubelet import ConfigMapVolume
from tbmirror.config import parse_settings
from tbmirror.sources.auth import build_auth

CONFIG = """
mirror: {root: /r, state: /s}
sources:
- {name: a, type: mlflow, tracking_uri: "http://mlflow", experiments: [e], auth: %s}
"""


def client(auth: str) -> tuple[httpx.Client, list[str]]:
    """A client with the source's auth whose every request is answered 200; the headers seen."""
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["authorization"])
        return httpx.Response(200, json={})

    settings = parse_settings(CONFIG % auth)
    transport = httpx.MockTransport(answer)
    return httpx.Client(auth=build_auth(settings.sources[0]), transport=transport), seen


def basic(password: str) -> str:
    return "Basic " + base64.b64encode(f"alice:{password}".encode()).decode()


def test_a_password_file_rotated_like_a_secret_volume_is_used_on_the_next_request(
    tmp_path: Path,
) -> None:
    volume = ConfigMapVolume(tmp_path / "secrets")
    volume.update({"password": "first-pw\n"})
    path = tmp_path / "secrets" / "password"
    http, seen = client(f"{{type: basic, username: alice, password_file: {path}}}")
    with capture_logs() as events, http:
        http.get("http://mlflow/a")
        http.get("http://mlflow/b")
        volume.update({"password": "second-pw\n"})
        http.get("http://mlflow/c")
    assert seen == [basic("first-pw"), basic("first-pw"), basic("second-pw")]
    assert not [e for e in events if "-pw" in repr(e)], events  # never the content


def test_a_token_file_rewritten_in_place_is_used_without_a_refusal_first(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("token-one\n")
    http, seen = client(f"{{type: bearer, token_file: {path}}}")
    with http:
        http.get("http://mlflow/a")
        with path.open("w") as file:  # the same inode: a new size and mtime
            file.write("token-number-two\n")
        os.utime(path, ns=(0, path.stat().st_mtime_ns + 1_000_000_000))
        http.get("http://mlflow/b")
        http.get("http://mlflow/c")
    assert seen == ["Bearer token-one", "Bearer token-number-two", "Bearer token-number-two"]
