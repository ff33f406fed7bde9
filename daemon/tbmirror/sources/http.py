"""JSON over HTTP for one source, with retries that are polite to busy servers.

429 and 5xx answers and connection failures are retried with exponential backoff and full jitter,
honouring `Retry-After`; anything still failing becomes a `SourceError` naming the source, the
request and the server's own error message. Thread-safe (one shared httpx.Client).
"""

from __future__ import annotations

import email.utils
import json
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from tbmirror.errors import AuthError, SourceError

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
BACKOFF_BASE_SECONDS = 0.5
BACKOFF_CAP_SECONDS = 30.0
RETRY_AFTER_CAP_SECONDS = 120.0


class HttpStatusError(SourceError):
    """The server answered with a non-retryable (or persistently retryable) error status."""

    def __init__(self, message: str, status_code: int, error_code: str | None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.error_code = error_code


class RestClient:
    """GET/POST JSON against `base_url` on behalf of the source called `source_name`."""

    def __init__(
        self,
        base_url: str,
        source_name: str,
        *,
        timeout: float,
        max_retries: int,
        max_connections: int = 8,
        auth: httpx.Auth | None = None,
        auth_name: str | None = None,
        rate_limit: float | None = None,
        search_rate_limit: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.source_name = source_name
        self._auth_name = auth_name
        self._max_retries = max_retries
        self._sleep = sleep
        self._limiters = (RateLimiter(search_rate_limit, sleep), RateLimiter(rate_limit, sleep))
        self._client = httpx.Client(
            base_url=base_url,
            timeout=timeout,
            limits=httpx.Limits(max_connections=max_connections),
            headers={"User-Agent": "tbmirror"},
            auth=auth,
        )
        self._lock = threading.Lock()
        self.requests_made = 0

    def close(self) -> None:
        self._client.close()

    def get(self, path: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return _json(self._request("GET", path, params=params), self.source_name)

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return _json(self._request("POST", path, json=body), self.source_name)

    def get_range(self, path: str, params: dict[str, Any], start: int, end: int) -> bytes:
        """Bytes `start` to `end` (exclusive, or fewer at the end) of a file download.

        A server that ignores Range (200) is answered from the whole body (downloaded each time);
        a 206 answer must start where asked; a request past the end gives b"" (416).
        """
        headers = {"Range": f"bytes={start}-{end - 1}"}
        response = self._request("GET", path, params=params, headers=headers, allow=(416,))
        if response.status_code == 416:
            return b""
        if response.status_code != 206:
            return response.content[start:end]
        answered = response.headers.get("Content-Range", "")
        if not answered.startswith(f"bytes {start}-"):
            raise SourceError(
                f"source {self.source_name}: GET {path}: asked for bytes {start}-{end - 1}, "
                f"got {answered or 'no Content-Range'}"
            )
        return response.content

    def _request(
        self, method: str, path: str, allow: tuple[int, ...] = (), **kwargs: Any
    ) -> httpx.Response:
        """The answer to one request (retried as described above); an error status raises,
        unless it is in `allow`."""
        attempt = 0
        limiter = self._limiters[0 if _is_search(path) else 1]
        while True:
            limiter.wait()
            with self._lock:
                self.requests_made += 1
            try:
                response = self._client.request(method, path, **kwargs)
            except httpx.HTTPError as error:
                if attempt >= self._max_retries:
                    raise SourceError(
                        f"source {self.source_name}: {method} {path}: "
                        f"{type(error).__name__}: {error or 'no answer'}"
                    ) from None
                self._sleep(_backoff(attempt))
                attempt += 1
                continue
            if response.status_code < 400 or response.status_code in allow:
                return response
            if response.status_code in (401, 403):
                how = f"{self._auth_name} credentials" if self._auth_name else "no credentials"
                raise AuthError(
                    f"source {self.source_name}: {method} {path}: HTTP {response.status_code}: "
                    f"authentication failed ({how})"
                )
            if response.status_code in RETRYABLE_STATUS and attempt < self._max_retries:
                self._sleep(_retry_after(response) or _backoff(attempt))
                attempt += 1
                continue
            raise _status_error(response, method, path, self.source_name)


class RateLimiter:
    """Spaces calls at least 1/rate seconds apart (no limit when rate is None). Thread-safe."""

    def __init__(self, rate: float | None, sleep: Callable[[float], None] = time.sleep) -> None:
        self._interval = 1 / rate if rate else 0.0
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next = 0.0

    def wait(self) -> None:
        if not self._interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self._interval
        if start > now:
            self._sleep(start - now)


def _is_search(path: str) -> bool:
    """Search and experiment calls, which Databricks limits more tightly than others."""
    return "/runs/search" in path or "/experiments/" in path


def _backoff(attempt: int) -> float:
    return random.uniform(0, min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2**attempt))


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds the server asked us to wait (delta-seconds or HTTP date), capped."""
    value = response.headers.get("Retry-After")
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


def _json(response: httpx.Response, source_name: str) -> dict[str, Any]:
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise SourceError(
            f"source {source_name}: {response.request.method} {response.request.url.path}: "
            f"answer is not JSON (HTTP {response.status_code})"
        ) from None
    if not isinstance(body, dict):
        raise SourceError(
            f"source {source_name}: unexpected answer from {response.request.url.path}"
        )
    return body


def _status_error(
    response: httpx.Response, method: str, path: str, source_name: str
) -> HttpStatusError:
    error_code = None
    detail = response.reason_phrase
    try:
        body = response.json()
        if isinstance(body, dict):
            error_code = body.get("error_code")
            detail = str(body.get("message") or detail)[:300]
    except (json.JSONDecodeError, UnicodeDecodeError):
        pass
    return HttpStatusError(
        f"source {source_name}: {method} {path}: HTTP {response.status_code}"
        + (f" {error_code}" if error_code else "")
        + (f": {detail}" if detail else ""),
        response.status_code,
        error_code,
    )
