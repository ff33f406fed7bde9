"""A misbehaving HTTP proxy in front of a real `mlflow server`, for tests of hostile networks.

`HostileProxy(upstream)` listens on a free port of 127.0.0.1 (`url`) and forwards every request to
`upstream` unchanged, recording each one (`requests`: method, target, Range header, status, body
bytes sent, fault applied). Faults are switched on at runtime, per path, with
`set(fault, path=..., times=..., **params)` and off with `clear()`:

- `path` is a regular expression searched in the request target (path and query string, e.g.
  `r"/runs/get\\?.*run_id=abc"`); None matches every request.
- `times` limits the fault to the first N matching requests (None: until cleared).
- Rules are tried in the order they were set; the first that matches answers. A request that
  matches none is passed through.

Faults and their params (defaults in brackets):

- `wrong_shape(body [{"message": "upstream busy"}], status [200])`: that JSON value.
- `html(body [a login page], status [200])`: a text/html page.
- `redirect(location [an SSO login URL], status [302])`: a redirect, no data.
- `truncate_page(keep [None])`: the real answer without `next_page_token` (and with only its
  first `keep` runs).
- `drop_runs(run_ids)`: the real answer without those runs in `runs`.
- `garble_metrics(run_ids)`: the real answer, those runs' `metrics` of the wrong shape.
- `small_pages(size [2])`: the request's JSON `max_results` cut to `size` (a server that caps
  its pages), the real answer to that.
- `repeat_token(token [injected if the first page has none])`: the first page seen, its
  `next_page_token` included, again and again (a server stuck on one token; `Rule.token`).
- `trickle(interval [1 s], head [False])`: 200 and its headers, then one byte per interval until
  the client leaves (or `clear`/`close`); with `head`, the status line and headers trickle too.
- `reset()`: the request is read, then the connection is reset (RST) without an answer.
- `status(code [503], body [none; bytes, str or JSON], content_type, headers)`: that answer.
- `huge(mib [80], field ["runs"], item [a run], content_length [True])`: a 200 JSON body
  `{field: [item, item, ...]}` of `mib` MiB, streamed 1 MiB at a time.
- `delay(seconds [3])`: the real answer, that many seconds late (a slow server).
- `short_body(keep [half])`: the whole file (asked for without Range) as a 200, cut to `keep`
  bytes: a length that matches nothing.

`clear()` also ends the trickles in flight (their connections close); `close()` (or leaving the
`with` block) stops the server and fails if a handler thread is left running.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import httpx

FAULTS: dict[str, frozenset[str]] = {  # fault -> the params it takes
    "wrong_shape": frozenset({"body", "status"}),
    "html": frozenset({"body", "status"}),
    "redirect": frozenset({"location", "status"}),
    "truncate_page": frozenset({"keep"}),
    "drop_runs": frozenset({"run_ids"}),
    "garble_metrics": frozenset({"run_ids"}),
    "small_pages": frozenset({"size"}),
    "repeat_token": frozenset({"token"}),
    "trickle": frozenset({"interval", "head"}),
    "reset": frozenset(),
    "status": frozenset({"code", "body", "content_type", "headers"}),
    "huge": frozenset({"mib", "field", "item", "content_length"}),
    "short_body": frozenset({"keep"}),
    "delay": frozenset({"seconds"}),
}
# An MLflow page token for offset 1000, as `runs/search` would send after a first full page.
INJECTED_TOKEN = base64.b64encode(json.dumps({"offset": 1000}).encode()).decode()
LOGIN_PAGE = (
    "<!DOCTYPE html><html><head><title>Sign in</title></head><body>"
    "<form action='/sso/login' method='post'><input name='user'><input name='password'>"
    "<button>Sign in</button></form></body></html>"
)
HUGE_ITEM: dict[str, Any] = {
    "info": {
        "run_id": "0" * 32,
        "experiment_id": "0",
        "run_name": "huge",
        "status": "RUNNING",
        "lifecycle_stage": "active",
        "start_time": 1_700_000_000_000,
    },
    "data": {"tags": [{"key": "padding", "value": "x" * 200}]},
}
# Headers that belong to one hop (or that we set ourselves) and are never copied across.
_HOP = frozenset({
    "host", "connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade",
    "transfer-encoding", "content-length", "accept-encoding", "content-encoding", "date",
    "server",
})  # fmt: skip
_MIB = 1024 * 1024


@dataclass
class Rule:
    """One fault switched on by `HostileProxy.set`; `hits` counts the requests it answered."""

    fault: str
    path: re.Pattern[str] | None
    times: int | None
    params: dict[str, Any]
    hits: int = 0
    active: bool = True
    token: str | None = None  # repeat_token: the page token it keeps answering with
    page: bytes | None = None  # repeat_token: the page it keeps answering with

    def matches(self, target: str) -> bool:
        if not self.active or (self.times is not None and self.hits >= self.times):
            return False
        return self.path is None or self.path.search(target) is not None


@dataclass
class Seen:
    """One request the proxy answered (or reset)."""

    method: str
    target: str  # path and query string
    range: str | None
    fault: str | None  # None: passed through
    status: int | None = None  # None: no answer (reset, or the client left first)
    bytes: int = 0  # body bytes sent
    started: float = field(default_factory=time.monotonic)
    seconds: float = 0.0

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


class HostileProxy:
    """The proxy (see the module docstring). Thread-safe; use as a context manager."""

    def __init__(self, upstream: str, port: int = 0) -> None:
        """Listening on `port` of 127.0.0.1 (0: a free one; see `url`)."""
        self.upstream = upstream
        self._client = httpx.Client(base_url=upstream, timeout=120, follow_redirects=False)
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self._seen: list[Seen] = []
        self._trickling = 0
        self.closing = threading.Event()
        self._server = _Server(self, port)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="hostile-proxy", daemon=True
        )
        self._thread.start()

    # -- switching faults ---------------------------------------------------------------------

    def set(
        self, fault: str, path: str | None = None, times: int | None = None, **params: Any
    ) -> Rule:
        """Switch `fault` on for requests whose target matches `path` (see the module
        docstring); returns the rule (its `hits`, and `token` for repeat_token)."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
        unknown = set(params) - FAULTS[fault]
        if unknown:
            raise ValueError(f"{fault} takes {sorted(FAULTS[fault])}, not {sorted(unknown)}")
        rule = Rule(fault, re.compile(path) if path is not None else None, times, params)
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        """Every fault off; trickles in flight end (their connections close)."""
        with self._lock:
            for rule in self._rules:
                rule.active = False
            self._rules = []

    @property
    def requests(self) -> list[Seen]:
        """Every request answered so far (a copy), oldest first."""
        with self._lock:
            return list(self._seen)

    def seen(self, path: str, fault: str | bool | None = True) -> list[Seen]:
        """Requests whose target matches the regular expression `path`; with `fault` a name (or
        None: passed through), only those; True: any."""
        pattern = re.compile(path)
        return [
            s
            for s in self.requests
            if pattern.search(s.target) and (fault is True or s.fault == fault)
        ]

    @property
    def trickling(self) -> int:
        """Trickled answers in flight right now."""
        with self._lock:
            return self._trickling

    # -- life cycle ---------------------------------------------------------------------------

    def close(self, timeout: float = 10) -> None:
        """Stop serving, end every connection, and wait for the handler threads (fails if one
        is still running after `timeout` s)."""
        self.clear()
        self.closing.set()
        self._server.shutdown()
        self._server.server_close()
        left = self._server.end_connections(timeout)
        self._client.close()
        if left:
            raise RuntimeError(f"hostile proxy: {left} handler threads still running after close")

    def __enter__(self) -> HostileProxy:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    # -- used by the handler ------------------------------------------------------------------

    def _rule_for(self, target: str) -> Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.matches(target):
                    rule.hits += 1
                    return rule
        return None

    def _record(self, seen: Seen) -> None:
        """Note a request as it arrives (its answer fills in `seen` later), so a client that
        has its answer always finds its request listed."""
        with self._lock:
            self._seen.append(seen)

    def _trickle_count(self, delta: int) -> None:
        with self._lock:
            self._trickling += delta

    def _forward(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> httpx.Response:
        return self._client.request(method, target, content=body, headers=headers)


@contextlib.contextmanager
def hostile_proxy(upstream: str) -> Iterator[HostileProxy]:
    """A HostileProxy in front of `upstream`, closed (cleanly) on exit."""
    proxy = HostileProxy(upstream)
    try:
        yield proxy
    finally:
        proxy.close()


class _Server(ThreadingHTTPServer):
    """A threaded server that knows its handler threads and connections, to end them."""

    daemon_threads = True

    def __init__(self, proxy: HostileProxy, port: int) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.proxy = proxy
        self._active: dict[threading.Thread, socket.socket] = {}
        self._guard = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._serve_one, args=(request, client_address), daemon=True,
            name="hostile-proxy-handler",
        )  # fmt: skip
        with self._guard:
            self._active[thread] = request
        thread.start()

    def _serve_one(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self._guard:
                self._active.pop(threading.current_thread(), None)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that left, or a connection ended by `close`, is no error of the proxy."""
        import sys

        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)) or self.proxy.closing.is_set():
            return
        super().handle_error(request, client_address)

    def end_connections(self, timeout: float) -> int:
        """Shut every open connection down, join the handler threads; how many are left."""
        with self._guard:
            active = dict(self._active)
        for connection in active.values():
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        for thread in active:
            thread.join(max(0.0, deadline - time.monotonic()))
        return sum(thread.is_alive() for thread in active)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"  # one request per connection: nothing lingers between them

    def do_GET(self) -> None:
        self._handle()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        pass

    # -- dispatch -----------------------------------------------------------------------------

    def _handle(self) -> None:
        proxy = self.server.proxy
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        rule = proxy._rule_for(self.path)
        fault = rule.fault if rule is not None else None
        seen = Seen(self.command, self.path, self.headers.get("Range"), fault)
        proxy._record(seen)
        try:
            if rule is None:
                self._pass_through(seen, body)
            else:
                getattr(self, f"_{rule.fault}")(seen, body, rule, **rule.params)
        except (ConnectionError, TimeoutError):
            pass  # the client left (or the proxy is closing): recorded as far as it went
        except httpx.HTTPError as error:  # upstream down: what a gateway says
            with contextlib.suppress(ConnectionError, TimeoutError):
                self._answer(seen, 502, f"bad gateway: {error}".encode(), "text/plain")
        finally:
            seen.seconds = time.monotonic() - seen.started

    def _upstream(self, body: bytes, drop: frozenset[str] = frozenset()) -> httpx.Response:
        headers = {
            key: value
            for key, value in self.headers.items()
            if key.lower() not in _HOP and key.lower() not in drop
        }
        return self.server.proxy._forward(self.command, self.path, headers, body)

    def _answer(
        self,
        seen: Seen,
        status: int,
        body: bytes,
        content_type: str | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        self.send_response(status)
        sent_type = False
        for key, value in headers or []:
            if key.lower() in _HOP:
                continue
            if key.lower() == "content-type":
                if content_type is not None:
                    continue
                sent_type = True
            self.send_header(key, value)
        if content_type is not None or not sent_type:
            self.send_header("Content-Type", content_type or "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        seen.status = status
        if self.command != "HEAD":
            self.wfile.write(body)
            seen.bytes = len(body)

    def _relay(self, seen: Seen, answer: httpx.Response, body: bytes | None = None) -> None:
        self._answer(
            seen,
            answer.status_code,
            answer.content if body is None else body,
            headers=list(answer.headers.multi_items()),
        )

    # -- faults -------------------------------------------------------------------------------

    def _pass_through(self, seen: Seen, sent: bytes) -> None:
        self._relay(seen, self._upstream(sent))

    def _delay(self, seen: Seen, sent: bytes, rule: Rule, seconds: float = 3.0) -> None:
        self.server.proxy.closing.wait(seconds)
        self._relay(seen, self._upstream(sent))

    def _wrong_shape(
        self, seen: Seen, sent: bytes, rule: Rule, body: Any = None, status: int = 200
    ) -> None:
        value = {"message": "upstream busy"} if body is None else body
        self._answer(seen, status, json.dumps(value).encode(), "application/json")

    def _html(
        self, seen: Seen, sent: bytes, rule: Rule, body: str = LOGIN_PAGE, status: int = 200
    ) -> None:
        self._answer(seen, status, body.encode(), "text/html; charset=utf-8")

    def _redirect(
        self, seen: Seen, sent: bytes, rule: Rule, location: str | None = None, status: int = 302
    ) -> None:
        where = location or f"https://sso.example.com/login?next={self.path}"
        page = f"<html><body>Redirecting to <a href='{where}'>{where}</a></body></html>".encode()
        self._answer(seen, status, page, "text/html", [("Location", where)])

    def _truncate_page(self, seen: Seen, sent: bytes, rule: Rule, keep: int | None = None) -> None:
        answer = self._upstream(sent)

        def cut(page: dict[str, Any]) -> None:
            page.pop("next_page_token", None)
            if keep is not None and isinstance(page.get("runs"), list):
                page["runs"] = page["runs"][:keep]

        self._relay(seen, answer, _edited(answer, cut))

    def _drop_runs(self, seen: Seen, sent: bytes, rule: Rule, run_ids: Any = ()) -> None:
        answer = self._upstream(sent)
        hidden = set(run_ids)

        def drop(page: dict[str, Any]) -> None:
            if isinstance(page.get("runs"), list):
                page["runs"] = [
                    run for run in page["runs"] if run.get("info", {}).get("run_id") not in hidden
                ]

        self._relay(seen, answer, _edited(answer, drop))

    def _garble_metrics(self, seen: Seen, sent: bytes, rule: Rule, run_ids: Any = ()) -> None:
        """The listed metrics of these runs, of the wrong shape (a value that is an object)."""
        answer = self._upstream(sent)
        garbled = set(run_ids)

        def garble(page: dict[str, Any]) -> None:
            for run in page.get("runs", []) if isinstance(page.get("runs"), list) else []:
                if run.get("info", {}).get("run_id") in garbled:
                    run.setdefault("data", {})["metrics"] = [{"key": "m", "value": {"x": 1}}]

        self._relay(seen, answer, _edited(answer, garble))

    def _small_pages(self, seen: Seen, sent: bytes, rule: Rule, size: int = 2) -> None:
        try:
            request = json.loads(sent)
        except (json.JSONDecodeError, UnicodeDecodeError):
            request = None
        if isinstance(request, dict) and isinstance(request.get("max_results"), int):
            request["max_results"] = min(request["max_results"], size)
            sent = json.dumps(request).encode()
        self._relay(seen, self._upstream(sent))

    def _repeat_token(self, seen: Seen, sent: bytes, rule: Rule, token: str | None = None) -> None:
        with self.server.proxy._lock:
            page = rule.page
        if page is None:
            answer = self._upstream(sent)
            first = answer.json() if answer.status_code == 200 else None
            if not isinstance(first, dict):
                self._relay(seen, answer)
                return
            first.setdefault("next_page_token", token or INJECTED_TOKEN)
            with self.server.proxy._lock:
                if rule.page is None:
                    rule.page, rule.token = json.dumps(first).encode(), first["next_page_token"]
                page = rule.page
        self._answer(seen, 200, page, "application/json")

    def _trickle(
        self, seen: Seen, sent: bytes, rule: Rule, interval: float = 1.0, head: bool = False
    ) -> None:
        proxy = self.server.proxy
        data = b'{"runs": [' + b" " * (_MIB - 10)
        headers = f"Content-Type: application/json\r\nContent-Length: {_MIB}\r\n\r\n"
        if head:
            data = b"HTTP/1.1 200 OK\r\n" + headers.encode() + data
        else:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(_MIB))
            self.end_headers()
        seen.status = 200
        proxy._trickle_count(+1)
        try:
            while rule.active and not proxy.closing.is_set():
                self.wfile.write(data[seen.bytes : seen.bytes + 1])
                self.wfile.flush()
                seen.bytes += 1
                proxy.closing.wait(interval)
        finally:
            proxy._trickle_count(-1)
            self.close_connection = True

    def _reset(self, seen: Seen, sent: bytes, rule: Rule) -> None:
        """Close with SO_LINGER 0: the client gets a RST instead of an answer."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()  # the descriptor goes (RST) when rfile/wfile close after us

    def _status(
        self,
        seen: Seen,
        sent: bytes,
        rule: Rule,
        code: int = 503,
        body: Any = None,
        content_type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        if body is None or isinstance(body, bytes):
            data, kind = body or b"", content_type or "text/plain"
        elif isinstance(body, str):
            data = body.encode()
            kind = content_type or ("text/html" if body.lstrip().startswith("<") else "text/plain")
        else:
            data, kind = json.dumps(body).encode(), content_type or "application/json"
        self._answer(seen, code, data, kind, list((headers or {}).items()))

    def _huge(
        self,
        seen: Seen,
        sent: bytes,
        rule: Rule,
        mib: float = 80,
        field: str = "runs",
        item: Any = None,
        content_length: bool = True,
    ) -> None:
        """`{field: [item, item, ...]}` of `mib` MiB, sent 1 MiB at a time."""
        head, tail = json.dumps({field: []}).encode().split(b"[]")
        head, one = head + b"[", json.dumps(HUGE_ITEM if item is None else item).encode()
        tail = b"]" + tail
        count = max(1, (int(mib * _MIB) - len(head) - len(tail) + 1) // (len(one) + 1))
        per_chunk = max(1, _MIB // (len(one) + 1))
        total = len(head) + count * len(one) + (count - 1) + len(tail)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if content_length:
            self.send_header("Content-Length", str(total))
        self.end_headers()
        seen.status = 200
        self.close_connection = True
        self.wfile.write(head)
        seen.bytes = len(head)
        chunk = b",".join([one] * per_chunk)
        left = count
        while left and not self.server.proxy.closing.is_set():
            n = min(left, per_chunk)
            data = (chunk if n == per_chunk else b",".join([one] * n)) + (b"," if left > n else b"")
            self.wfile.write(data)
            seen.bytes += len(data)
            left -= n
        self.wfile.write(tail)
        seen.bytes += len(tail)

    def _short_body(self, seen: Seen, sent: bytes, rule: Rule, keep: int | None = None) -> None:
        answer = self._upstream(sent, drop=frozenset({"range"}))
        data = answer.content
        cut = data[: len(data) // 2 if keep is None else keep]
        headers = [(k, v) for k, v in answer.headers.multi_items() if k.lower() != "content-range"]
        self._answer(seen, 200, cut, headers=headers)


def _edited(answer: httpx.Response, edit: Any) -> bytes | None:
    """The JSON object of `answer` after `edit(page)`; None (unchanged) if it is not one."""
    try:
        page = answer.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(page, dict):
        return None
    edit(page)
    return json.dumps(page).encode()
