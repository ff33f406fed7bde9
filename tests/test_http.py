"""The HTTP layer on its own: Retry-After on 429, client-side rate limits, Databricks defaults."""

from __future__ import annotations

import http.server
import itertools
import json
import threading
import time
from collections.abc import Iterator

import pytest

from tbmirror.config import parse_settings
from tbmirror.errors import SourceError
from tbmirror.kinds.mlflow import with_cloud_defaults
from tbmirror.sources.http import BadAnswerError, RateLimiter, RestClient
from tbmirror.sources.responses import RunsPage, pages


class _Busy(http.server.BaseHTTPRequestHandler):
    """A stand-in for a rate-limited server (a fake: real servers cannot be made to 429 here):
    the first two requests get 429 with Retry-After: 1, then 200."""

    def do_GET(self) -> None:
        server = self.server
        server.seen.append(time.monotonic())  # type: ignore[attr-defined]
        busy = len(server.seen) <= 2  # type: ignore[attr-defined]
        body = b'{"error_code": "REQUEST_LIMIT_EXCEEDED"}' if busy else b'{"ok": true}'
        self.send_response(429 if busy else 200)
        if busy:
            self.send_header("Retry-After", "1")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def busy_server() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Busy)
    server.seen = []  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def test_429_waits_as_long_as_retry_after_says(
    busy_server: http.server.ThreadingHTTPServer,
) -> None:
    url = f"http://127.0.0.1:{busy_server.server_address[1]}"
    client = RestClient(url, timeout=5, max_retries=3)
    assert client.get("/x") == b'{"ok": true}'
    seen = busy_server.seen  # type: ignore[attr-defined]
    assert len(seen) == 3
    assert all(later - earlier >= 0.95 for earlier, later in itertools.pairwise(seen))
    client.close()

    busy_server.seen.clear()  # type: ignore[attr-defined]
    impatient = RestClient(url, timeout=5, max_retries=1)
    with pytest.raises(SourceError, match="HTTP 429 REQUEST_LIMIT_EXCEEDED"):
        impatient.get("/x")
    impatient.close()


def test_rate_limiter_spaces_calls() -> None:
    slept: list[float] = []
    limiter = RateLimiter(10.0, sleep=slept.append, clock=lambda: 100.0)
    for _ in range(5):
        limiter.wait()
    # The clock stands still (the sleep is a fake), so each call waits one slot more.
    assert slept == pytest.approx([0.1, 0.2, 0.3, 0.4])
    unlimited: list[float] = []
    free = RateLimiter(None, sleep=unlimited.append)
    for _ in range(5):
        free.wait()
    assert unlimited == []


def test_databricks_gets_its_documented_limits_by_default() -> None:
    text = (
        "mirror: {root: /r, state: /s}\nsources:\n"
        "- {name: d, type: mlflow, tracking_uri: https://adb.example, experiments: [e], %s}\n"
    )

    def limits(options: str) -> tuple[float | None, float | None]:
        """(search, other) requests per second the source is built with."""
        source = with_cloud_defaults(parse_settings(text % options).sources[0])
        return source.max_search_requests_per_second, source.max_requests_per_second

    assert limits("auth: {type: databricks, token: t}") == (7.0, 127.0)
    assert limits("max_requests_per_second: 20") == (20.0, 20.0)
    tuned = "auth: {type: databricks, token: t}, max_search_requests_per_second: 2"
    assert limits(tuned) == (2.0, 127.0)


def test_paging_without_end_is_an_error() -> None:
    """A server answering page after page, each with a new token (empty pages, say), is cut off
    after `max_pages`: a listing that never ends must not hold a pass forever."""
    tokens = itertools.count()

    def endless(extra: dict[str, str]) -> bytes:
        return json.dumps({"runs": [], "next_page_token": f"token-{next(tokens)}"}).encode()

    with pytest.raises(BadAnswerError, match="more than 5 pages"):
        list(pages(endless, RunsPage, "/runs/search", max_pages=5))
    assert next(tokens) == 5
