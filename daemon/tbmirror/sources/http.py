"""JSON and byte ranges over HTTP for one source, bounded and polite, trusting no answer.

- Bounded: each request has a total deadline (`timeout`: connecting, waiting and every byte of
  the answer, status line and headers included, through a proxy too: sources/deadline.py),
  an answer is at most `max_response_bytes`, and once no request has been answered for
  `stall_timeout` the source gives up. A set `stop` event ends waits and reads at once.
- Polite: 429, 5xx and connection failures are retried with exponential backoff and full jitter,
  honouring `Retry-After`; every retry is logged with the URL tried (`request_retrying`).
- Distrustful: a redirect (an expired SSO session), an HTML page where JSON was expected (a
  gateway or login page), a non-object JSON body, or a byte range that does not match what was
  asked for is an error, never data.
- Discreet: errors name the method, the endpoint and what was wrong, never a header value, a
  query string or a redirect target (they may carry secrets or signed URLs). A signed URL is sent
  as `url=` and named by `path` (its address without the query) wherever a request is named.

Thread-safe (one shared httpx.Client).
"""

from __future__ import annotations

import email.utils
import os
import random
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import structlog

from tbmirror import parsers
from tbmirror.errors import AuthError, ParseError, SourceError, StoppedError
from tbmirror.sources.blocking_httpcore import httpcore
from tbmirror.sources.deadline import ConnectFailure, DeadlineBackend, TlsFailure
from tbmirror.sources.proxies import environment_proxies, shown

log = structlog.get_logger(__name__)

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
BACKOFF_BASE_SECONDS = 0.5
BACKOFF_CAP_SECONDS = 30.0
RETRY_AFTER_CAP_SECONDS = 120.0
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024**2
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_UNSATISFIED_RANGE = re.compile(r"^bytes \*/(\d+)$")


class HttpStatusError(SourceError):
    """The server answered with a non-retryable (or persistently retryable) error status."""

    def __init__(
        self, message: str, status_code: int, error_code: str | None, request: str = ""
    ) -> None:
        """`request`: the method and endpoint that was answered so (`GET /api/...`)."""
        super().__init__(message)
        self.status_code = status_code
        self.error_code = error_code
        self.request = request


class BadAnswerError(SourceError):
    """An answer that is not what was asked for: a redirect, an HTML page, the wrong shape, a
    byte range that does not match. Never data, never proof of anything."""


@dataclass(frozen=True)
class Answer:
    """A whole (bounded) answer: status, headers and body."""

    status_code: int
    headers: httpx.Headers
    content: bytes


class _Retryable(Exception):
    """An attempt that may be tried again: `reason` says why (no secrets in it)."""

    def __init__(
        self, reason: str, wait: float | None = None, final: SourceError | None = None
    ) -> None:
        super().__init__(reason)
        self.reason, self.wait, self.final = reason, wait, final


class RestClient:
    """GET/POST JSON and ranged GETs against `base_url` for one source (see module docstring)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float,
        max_retries: int,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        stall_timeout: float | None = None,
        max_connections: int = 8,
        auth: httpx.Auth | None = None,
        auth_name: str | None = None,
        rate_limit: float | None = None,
        search_rate_limit: float | None = None,
        stop: threading.Event | None = None,
        display_url: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """`display_url`: how the server is named in logs (no user:password@); `transport`:
        where requests go (default: the network, through the proxies the environment names,
        as httpx would: sources/proxies.py; tests pass an in-process one)."""
        self.display_url = display_url or base_url
        self._timeout = timeout
        self._max_retries = max_retries
        self._max_bytes = max_response_bytes
        self._stall_timeout = stall_timeout
        self._auth_name = auth_name
        self.stop = stop or threading.Event()
        self._limiters = (
            RateLimiter(search_rate_limit, self._sleep),
            RateLimiter(rate_limit, self._sleep),
        )
        self._backend = DeadlineBackend(self.stop)
        mounts: dict[str, httpx.BaseTransport | None] = {}
        if transport is None:
            transport = _DeadlineTransport(self._backend, max_connections)
            mounts = self._proxy_mounts(max_connections)
        self._client = httpx.Client(
            base_url=base_url,
            timeout=timeout,
            transport=transport,
            mounts=mounts,
            headers={"User-Agent": "tbmirror"},
            auth=auth,
            follow_redirects=False,
        )
        self._lock = threading.Lock()
        self.requests_made = 0
        self._last_answer = time.monotonic()
        self.answered_at: float | None = None  # wall time of the last answer (progress)

    def _proxy_mounts(self, max_connections: int) -> dict[str, httpx.BaseTransport | None]:
        """The environment's proxies (sources/proxies.py) as httpx mounts whose transports
        keep the deadline and the stop event; None sends a NO_PROXY match direct."""
        proxies = environment_proxies()
        if any(proxies.values()):
            log.info(
                "proxy_from_environment",
                url=self.display_url,
                proxies={key: shown(p) for key, p in proxies.items() if p is not None},
                direct=sorted(key for key, p in proxies.items() if p is None),
            )
        return {
            key: None
            if proxy is None
            else _DeadlineTransport(self._backend, max_connections, proxy)
            for key, proxy in proxies.items()
        }

    def close(self) -> None:
        self._client.close()

    def get(
        self, path: str, params: dict[str, Any] | None = None, *, url: str | None = None
    ) -> bytes:
        """The body of a JSON answer, for its reader to validate (sources/responses.py). `url`
        (a link the server gave, below the base URL: `is_below_base`) is requested instead of
        `path`, which names it."""
        return _json(self._request("GET", path, params=params, url=url), "GET", path)

    def get_answer(self, path: str, params: dict[str, Any], allow: tuple[int, ...]) -> Answer:
        """The whole answer to a GET of `path`: a JSON one (as `get` takes it), or one whose
        status is in `allow`, taken as it is (a retryable status allowed is not retried)."""
        answer = self._request("GET", path, params=params, allow=allow)
        if answer.status_code not in allow:
            _json(answer, "GET", path)  # (raises for an HTML page)
        return answer

    def is_below_base(self, url: str) -> bool:
        """Whether `url` is an address below the base URL (same scheme, host and port, its path
        under the base path): only such a link may be followed with our credentials."""
        base = str(self._client.base_url)  # (httpx ends it with "/")
        return url.startswith(base) and ".." not in httpx.URL(url).path.split("/")

    def post(self, path: str, body: dict[str, Any]) -> bytes:
        """The body of a JSON answer, for its reader to validate (sources/responses.py)."""
        return _json(self._request("POST", path, json=body), "POST", path)

    def get_range(
        self,
        path: str,
        params: dict[str, Any] | None,
        start: int,
        end: int,
        size: int,
        *,
        url: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> bytes:
        """Bytes `start` to `end` (exclusive; fewer at the end) of a file listed at `size` bytes.

        Taken only from a proper answer: a 206 whose Content-Range starts at `start` and matches
        the body, or a 200 (a server ignoring Range) holding exactly `size` bytes; a 416 showing
        a length at or below `start` means there is nothing there (b""). Anything else raises.
        `url` (a signed URL) is requested instead of `path`, which names it; `headers` are sent too.
        """
        sent = (headers or {}) | {"Range": f"bytes={start}-{end - 1}"}
        answer = self._request("GET", path, params=params, headers=sent, allow=(416,), url=url)
        where = f"GET {path} bytes {start}-{end - 1}"
        answered = answer.headers.get("Content-Range", "")
        if answer.status_code == 416:
            total = _UNSATISFIED_RANGE.match(answered)
            if total and int(total.group(1)) <= start:
                return b""
            raise BadAnswerError(f"{where}: HTTP 416 with Content-Range {answered or 'missing'}")
        if answer.status_code == 206:
            matched = _CONTENT_RANGE.match(answered)
            if (
                matched is None
                or int(matched.group(1)) != start
                or int(matched.group(2)) >= end
                or int(matched.group(2)) - start + 1 != len(answer.content)
            ):
                raise BadAnswerError(
                    f"{where}: a 206 answer with Content-Range {answered or 'missing'} "
                    f"and {len(answer.content)} bytes"
                )
            return answer.content
        if (
            answer.status_code == 200
            and len(answer.content) == size
            and not _is_html(answer, False)
        ):
            return answer.content[start:end]
        raise BadAnswerError(
            f"{where}: HTTP {answer.status_code} with {len(answer.content)} bytes "
            f"({answer.headers.get('Content-Type', 'no type')}) for a file of {size} bytes"
        )

    def probe(
        self, path: str, *, url: str | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, str | None]:
        """The size and ETag of a file, from a one-byte range read (a signed GET URL may not
        allow HEAD): a 206's Content-Range total, a 416 `bytes */0` (empty), or the length of a
        whole 200 answer from a server ignoring Range. Anything else raises BadAnswerError."""
        sent = (headers or {}) | {"Range": "bytes=0-0"}
        answer = self._request("GET", path, headers=sent, allow=(416,), url=url)
        answered = answer.headers.get("Content-Range", "")
        etag = answer.headers.get("ETag")
        if answer.status_code == 206:
            matched = _CONTENT_RANGE.match(answered)
            if (
                matched
                and matched.group(1) == "0"
                and matched.group(3).isdigit()
                and len(answer.content) == 1
            ):
                return int(matched.group(3)), etag
        elif answer.status_code == 416:
            if answered == "bytes */0":
                return 0, etag
        elif answer.status_code == 200 and not _is_html(answer, False):
            return len(answer.content), etag
        raise BadAnswerError(
            f"GET {path} bytes 0-0: HTTP {answer.status_code} "
            f"({answer.headers.get('Content-Type', 'no type')}) with Content-Range "
            f"{answered or 'missing'}: the size cannot be told"
        )

    def _request(
        self,
        method: str,
        path: str,
        allow: tuple[int, ...] = (),
        url: str | None = None,
        **kwargs: Any,
    ) -> Answer:
        """The answer to one request to `url` (default: `path`, below the base URL), named by
        `path` (retried as described above); an error status raises, unless it is in `allow`."""
        attempt, started = 0, time.monotonic()
        limiter = self._limiters[0 if _is_search(path) else 1]
        while True:
            limiter.wait()
            with self._lock:
                self.requests_made += 1
            try:
                answer = self._attempt(method, path, allow, url or path, **kwargs)
            except _Retryable as retry:
                if attempt >= self._max_retries or self._stalled(started):
                    raise retry.final or SourceError(f"{method} {path}: {retry.reason}") from None
                delay = retry.wait if retry.wait is not None else _backoff(attempt)
                log.warning(
                    "request_retrying",
                    url=self.display_url,
                    request=f"{method} {path}",
                    reason=retry.reason,
                    attempt=attempt + 1,
                    in_seconds=round(delay, 1),
                )
                self._sleep(delay)
                attempt += 1
                continue
            self._last_answer, self.answered_at = time.monotonic(), time.time()
            return answer

    def _attempt(
        self, method: str, path: str, allow: tuple[int, ...], url: str, **kwargs: Any
    ) -> Answer:
        """One try: a whole answer within the deadline and the size limit, or an error."""
        try:
            answer = self._read(method, path, url, **kwargs)
        except httpx.InvalidURL:
            raise BadAnswerError(f"{method} {path}: not a URL that can be requested") from None
        except httpx.HTTPError as error:
            raise _Retryable(_describe(error)) from None
        status = answer.status_code
        if status in allow or 200 <= status < 300:
            return answer
        if 300 <= status < 400:
            raise BadAnswerError(
                f"{method} {path}: HTTP {status} redirect (an expired login session, or a proxy "
                "in the way?): not followed"
            )
        if status == 407:
            raise AuthError(
                f"{method} {path}: HTTP 407: the proxy wants credentials "
                "(user:password@ in its URL in HTTP_PROXY or HTTPS_PROXY)"
            )
        if status in (401, 403):
            how = f"{self._auth_name} credentials" if self._auth_name else "no credentials"
            raise AuthError(f"{method} {path}: HTTP {status}: authentication failed ({how})")
        if status in RETRYABLE_STATUS:
            final = _status_error(answer, method, path)
            raise _Retryable(f"HTTP {status}", _retry_after(answer), final)
        raise _status_error(answer, method, path)

    def _read(self, method: str, path: str, url: str, **kwargs: Any) -> Answer:
        deadline = time.monotonic() + self._timeout
        with (
            self._backend.bounded(deadline),
            self._client.stream(method, url, **kwargs) as response,
        ):
            length = response.headers.get("Content-Length", "")
            if length.isdigit() and int(length) > self._max_bytes:
                raise SourceError(self._too_large(method, path, int(length)))
            chunks, size = [], 0
            for chunk in response.iter_bytes():  # decoded: the limit holds for compressed ones
                size += len(chunk)
                if size > self._max_bytes:
                    raise SourceError(self._too_large(method, path, size))
                chunks.append(chunk)
                if self.stop.is_set():
                    raise StoppedError(f"{method} {path}: stopped")
                if time.monotonic() > deadline:
                    raise httpx.ReadTimeout("total deadline exceeded")
            return Answer(response.status_code, response.headers, b"".join(chunks))

    def _too_large(self, method: str, path: str, size: int) -> str:
        return (
            f"{method} {path}: the answer is larger than max_response_bytes "
            f"({size:,} > {self._max_bytes:,} bytes)"
        )

    def _stalled(self, started: float) -> bool:
        """True once nothing has been answered for `stall_timeout`, counted from the later of
        the last answer and the start of this request (quiet time between passes not counted)."""
        if self._stall_timeout is None:
            return False
        return time.monotonic() - max(self._last_answer, started) > self._stall_timeout

    def _sleep(self, seconds: float) -> None:
        """Wait, unless the daemon stops (StoppedError)."""
        if self.stop.wait(seconds):
            raise StoppedError("stopped")


class _DeadlineTransport(httpx.HTTPTransport):
    """httpx's transport on a DeadlineBackend, direct or through an http:// `proxy` (httpx
    takes no backend argument, so the pool is built here with httpx's settings plus the
    backend). Through a proxy, a failure to reach it or a refused tunnel is an httpx.ProxyError
    naming the proxy (without credentials)."""

    def __init__(
        self, backend: DeadlineBackend, max_connections: int, proxy: httpx.Proxy | None = None
    ) -> None:
        # No super().__init__(): all it does is build the pool built here (and a TLS context).
        limits = httpx.Limits()
        self._proxy = None if proxy is None else shown(proxy)
        self._pool = httpcore.ConnectionPool(  # its TLS context: _load_tls
            proxy=None
            if proxy is None
            else httpcore.Proxy(
                url=httpcore.URL(
                    scheme=proxy.url.raw_scheme,
                    host=proxy.url.raw_host,
                    port=proxy.url.port,
                    target=proxy.url.raw_path,
                ),
                auth=proxy.raw_auth,
                headers=proxy.headers.raw,
            ),
            max_connections=max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=backend,
        )
        self._tls_lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme == "https":
            self._load_tls()
        try:
            return super().handle_request(request)
        except httpx.ConnectError as error:
            if self._proxy is None or _tls_failure(error) is not None:
                raise  # direct, or the server's own TLS through the tunnel: not the proxy's
            why = _connect_failure(error)
            raise httpx.ProxyError(f"{self._proxy}: cannot connect: {why}") from error
        except httpx.ProxyError as error:
            raise httpx.ProxyError(f"{self._proxy} would not open a tunnel: {error}") from None

    def _load_tls(self) -> None:
        """Give the pool its TLS context (httpx's: certifi's bundle, or SSL_CERT_FILE or
        SSL_CERT_DIR) before its first https request, not with the pool: loading the CA bundle
        takes tens of milliseconds, which a command that talks only to an http:// server
        (`tbmirror sync` with nothing to do) need not pay. SourceError (not retried) if the
        bundle cannot be loaded."""
        with self._tls_lock:
            if self._pool._ssl_context is not None:
                return
            try:
                self._pool._ssl_context = httpx.create_ssl_context()
            except (OSError, ValueError) as error:  # (ssl.SSLError is an OSError)
                where = ", ".join(
                    f"{name}={os.environ[name]}"
                    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR")
                    if os.environ.get(name)
                )
                raise SourceError(
                    f"cannot load the CA certificates to verify https servers"
                    f"{f' ({where})' if where else ''}: {error}"
                ) from None


class RateLimiter:
    """Spaces calls at least 1/rate seconds apart (no limit when rate is None). Thread-safe."""

    def __init__(
        self,
        rate: float | None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._interval = 1 / rate if rate else 0.0
        self._sleep, self._clock = sleep, clock
        self._lock = threading.Lock()
        self._next = 0.0

    def wait(self) -> None:
        if not self._interval:
            return
        with self._lock:
            now = self._clock()
            start = max(now, self._next)
            self._next = start + self._interval
        if start > now:
            self._sleep(start - now)


def _is_search(path: str) -> bool:
    """Search and experiment calls, which Databricks limits more tightly than others."""
    return "/runs/search" in path or "/experiments/" in path


def _backoff(attempt: int) -> float:
    return random.uniform(0, min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2**attempt))


def _retry_after(answer: Answer) -> float | None:
    """Seconds the server asked us to wait (delta-seconds or HTTP date), capped."""
    value = answer.headers.get("Retry-After")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), RETRY_AFTER_CAP_SECONDS)


def _describe(error: httpx.HTTPError) -> str:
    """What went wrong with a request, in words that carry no header, URL or body."""
    if isinstance(error, httpx.TimeoutException):
        return "no complete answer within the timeout"
    if isinstance(error, httpx.ProxyError):
        return f"through the proxy {error}"
    if isinstance(error, httpx.ConnectError):
        return f"cannot connect: {_connect_failure(error)}"
    if isinstance(error, httpx.RemoteProtocolError):
        return "the connection closed without a complete answer"
    if isinstance(error, httpx.LocalProtocolError):
        return "the request could not be sent (a header value with a newline?)"
    return f"{type(error).__name__}"


def _tls_failure(error: BaseException) -> ssl.SSLError | None:
    """The SSL error under a failed TLS handshake with the server, if that is what `error` is."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, TlsFailure):
            return cause.ssl_error
        cause = cause.__cause__ or cause.__context__
    return None


def _connect_failure(error: BaseException) -> str:
    """Why a connection failed, from the OS error under httpx's: a refused port, a host name
    that does not resolve and a TLS handshake the server's certificate failed said as such."""
    tls = _tls_failure(error)
    if tls is not None:
        if isinstance(tls, ssl.SSLCertVerificationError):
            why = tls.verify_message
            return f"the TLS handshake failed: the server's certificate is not trusted ({why})"
        return f"the TLS handshake failed: {tls.reason or tls}"
    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, OSError):
        if isinstance(cause, ConnectFailure):
            cause = cause.os_error
        else:
            cause = cause.__cause__ or cause.__context__
    if isinstance(cause, socket.gaierror):
        return "unknown host (the name does not resolve)"
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused (nothing listens on that port)"
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror.lower()
    return "no connection"


def _is_html(answer: Answer, sniff: bool = True) -> bool:
    """Labelled HTML, or (`sniff`, for JSON endpoints) a body that starts like markup."""
    content_type = answer.headers.get("Content-Type", "").lower()
    return "html" in content_type or (sniff and answer.content.lstrip()[:1] == b"<")


def _json(answer: Answer, method: str, path: str) -> bytes:
    """The answer's body; an HTML page is an error (what is not a JSON object is the
    reader's)."""
    if _is_html(answer):
        raise BadAnswerError(
            f"{method} {path}: answered an HTML page, not JSON (a login page or a gateway?)"
        )
    return answer.content


def _status_error(answer: Answer, method: str, path: str) -> HttpStatusError:
    error_code = None
    detail = ""
    try:
        body = parsers.json_value(answer.content, "the error's body")
        if isinstance(body, dict):
            error_code = body.get("error_code")
            detail = str(body.get("message") or "")[:300]
    except ParseError:
        detail = "an HTML page" if _is_html(answer) else ""
    return HttpStatusError(
        f"{method} {path}: HTTP {answer.status_code}"
        + (f" {error_code}" if isinstance(error_code, str) else "")
        + (f": {detail}" if detail else ""),
        answer.status_code,
        error_code if isinstance(error_code, str) else None,
        f"{method} {path}",
    )
