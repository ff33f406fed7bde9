"""Authentication of a source's requests: basic, static bearer, Databricks (PAT or OAuth M2M) and
Azure ML (azure-identity).

Secrets are read on first use, tokens are cached and refreshed before they expire; a request
answered 401 gets one fresh token and is sent once more. A password_file or token_file is read
again on the first request after it changed: each request stats its path, following symlinks
(Kubernetes rotates a Secret by swapping a `..data` symlink); a client_secret_file is read at
each token fetch. No secret is ever put into a log event or an error message: a secret file
must hold one line (config/base.py checks it when it is read) and a bearer token, from the config or
from a token service, must be visible ASCII before it goes into a header (else the HTTP
library's error, which quotes the header, would carry it out).
"""

from __future__ import annotations

import base64
import math
import os
import re
import threading
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import httpx
import structlog

from tbmirror.config import AzureAuth, BasicAuth, BearerAuth, DatabricksAuth, MlflowSourceSettings
from tbmirror.errors import AuthError, ConfigError

log = structlog.get_logger(__name__)

REFRESH_MARGIN_SECONDS = 120.0
_HEADER_TOKEN = re.compile(r"[\x21-\x7e]+")  # what may follow "Bearer " (visible ASCII)


FileStamp = tuple[int, int, int, int] | None


def file_stamp(path: Path | None) -> FileStamp:
    """What changes when a file is rewritten or swapped: device, inode, size and mtime of `path`
    with symlinks followed; None without a file or when it cannot be stat'ed (reading it then
    says why)."""
    if path is None:
        return None
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


class CachedToken:
    """A token from `fetch` (-> (token, expires at epoch seconds)), refreshed before expiry and
    whenever `stamp` (the stamp of the secret file `fetch` reads) differs from the last fetch's."""

    def __init__(
        self, fetch: Callable[[], tuple[str, float]], stamp: Callable[[], FileStamp] = lambda: None
    ) -> None:
        self._fetch, self._stamp = fetch, stamp
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires = 0.0
        self._fetched_stamp: FileStamp = None

    def get(self, force: bool = False) -> str:
        with self._lock:
            stamp = self._stamp()
            if (
                force
                or self._token is None
                or stamp != self._fetched_stamp
                or time.time() >= self._expires - REFRESH_MARGIN_SECONDS
            ):
                self._token, self._expires = self._fetch()
                self._fetched_stamp = stamp
            return self._token


class TokenAuth(httpx.Auth):
    """`Authorization: Bearer <token>`; on a 401, one retry with a freshly fetched token."""

    def __init__(self, token: CachedToken) -> None:
        self._token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._token.get()}"
        response = yield request
        if response.status_code == 401:
            log.info("token_refused_refreshing")
            request.headers["Authorization"] = f"Bearer {self._token.get(force=True)}"
            yield request


class LazyBasicAuth(httpx.Auth):
    """HTTP basic auth whose password is read on first use and again after `stamp` changed (an
    unreadable password file fails this source's passes with a clear error, not the daemon's
    start or reload)."""

    def __init__(
        self,
        username: str,
        password: Callable[[], str],
        stamp: Callable[[], FileStamp] = lambda: None,
    ) -> None:
        def header() -> tuple[str, float]:
            pair = f"{username}:{password()}".encode()
            return "Basic " + base64.b64encode(pair).decode(), math.inf

        self._header = CachedToken(header, stamp)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._header.get()
        yield request


def build_auth(settings: MlflowSourceSettings) -> httpx.Auth | None:
    """The httpx auth for a source (None without `auth:`)."""
    auth = settings.auth
    if auth is None:
        return None
    if isinstance(auth, BasicAuth):
        return LazyBasicAuth(
            auth.username, lambda: auth.secret("password"), lambda: file_stamp(auth.password_file)
        )
    if isinstance(auth, BearerAuth) or (
        isinstance(auth, DatabricksAuth) and auth.client_id is None
    ):
        return TokenAuth(
            CachedToken(
                lambda: (_configured_token(auth), math.inf), lambda: file_stamp(auth.token_file)
            )
        )
    if isinstance(auth, DatabricksAuth):
        host = (auth.host or settings.tracking_uri).rstrip("/")
        return TokenAuth(CachedToken(lambda: _databricks_oauth(settings.name, host, auth)))
    return TokenAuth(CachedToken(_AzureTokens(settings.name, auth)))


def _configured_token(auth: BearerAuth | DatabricksAuth) -> str:
    """The static token of the config (inline or from `token_file`), checked to fit a header."""
    token = auth.secret("token")
    if not _HEADER_TOKEN.fullmatch(token):
        where = f"token_file {auth.token_file}" if auth.token_file else "auth.token"
        raise ConfigError(f"{where}: expected a bearer token of visible ASCII characters")
    return token


def _fetched_token(source: str, what: str, token: object) -> str:
    """A token a token service gave, checked to fit a header (AuthError naming `what`)."""
    if not isinstance(token, str) or not _HEADER_TOKEN.fullmatch(token):
        raise AuthError(f"source {source}: {what} gave no usable bearer token")
    return token


def _databricks_oauth(source: str, host: str, auth: DatabricksAuth) -> tuple[str, float]:
    """OAuth machine-to-machine: client id and secret exchanged at <host>/oidc/v1/token."""
    assert auth.client_id is not None
    try:
        response = httpx.post(
            f"{host}/oidc/v1/token",
            data={"grant_type": "client_credentials", "scope": "all-apis"},
            auth=(auth.client_id, auth.secret("client_secret")),
            timeout=30,
        )
    except httpx.HTTPError as error:
        raise AuthError(
            f"source {source}: databricks OAuth token request failed: {type(error).__name__}"
        ) from None
    if response.status_code != 200:
        raise AuthError(
            f"source {source}: databricks OAuth token request refused: HTTP {response.status_code}"
        )
    try:
        body = response.json()
        expires_in = float(body.get("expires_in", 3600))
    except (ValueError, AttributeError, TypeError):
        raise AuthError(
            f"source {source}: databricks OAuth token request answered without a token"
        ) from None
    token = _fetched_token(source, "the databricks OAuth token request", body.get("access_token"))
    return token, time.time() + min(max(expires_in, 0.0), 86_400.0)


class _AzureTokens:
    """Tokens for `auth.scope` from the configured azure-identity credential, made on first use
    (so a missing azure-identity fails this source's passes, not the daemon)."""

    def __init__(self, source: str, auth: AzureAuth) -> None:
        self._source, self._auth = source, auth
        self._credential: Any = None

    def __call__(self) -> tuple[str, float]:
        try:
            from azure.core.exceptions import ClientAuthenticationError
        except ImportError:
            raise AuthError(
                f"source {self._source}: auth type azure needs azure-identity: "
                "pip install 'tbmirror[azure]'"
            ) from None
        if self._credential is None:
            self._credential = self._make_credential()
        try:
            token = self._credential.get_token(self._auth.scope)
        except ClientAuthenticationError as error:
            message = str(error).splitlines()[0][:300]
            raise AuthError(
                f"source {self._source}: azure credential ({self._auth.credential}) gave no "
                f"token: {message}"
            ) from None
        what = f"azure credential ({self._auth.credential})"
        return _fetched_token(self._source, what, token.token), float(token.expires_on)

    def _make_credential(self) -> Any:
        from azure.identity import (
            AzureCliCredential,
            DefaultAzureCredential,
            EnvironmentCredential,
            ManagedIdentityCredential,
        )

        kind, client_id = self._auth.credential, self._auth.client_id
        if kind == "managed_identity":
            return ManagedIdentityCredential(client_id=client_id)
        if kind == "environment":
            return EnvironmentCredential()
        if kind == "cli":
            return AzureCliCredential()
        return DefaultAzureCredential(managed_identity_client_id=client_id)
