"""One deadline per request (issue 28 defect 2), at the RestClient: a peer that sends its status
line one byte at a time, or never finishes the connection, is cut off by the request's deadline,
and the daemon's stop ends the request at once whatever the peer does.

The peers are real sockets on 127.0.0.1 served by a thread of this test (no mock)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from tbmirror.errors import SourceError
from tbmirror.sources.http import RestClient, StoppedError

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


class TricklingPeer:
    """Accepts connections and sends `HEAD` one byte every `interval` seconds to each, until
    closed. `sent` counts the bytes sent in all."""

    def __init__(self, interval: float) -> None:
        self.interval, self.sent = interval, 0
        self.closing = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        self.listener.settimeout(0.1)
        while not self.closing.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            thread = threading.Thread(target=self._trickle, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _trickle(self, conn: socket.socket) -> None:
        with conn:
            for byte in HEAD:
                if self.closing.wait(self.interval):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return
                self.sent += 1

    def close(self) -> None:
        self.closing.set()
        for thread in self.threads:
            thread.join(10)
            assert not thread.is_alive(), "a peer thread is left running"
        self.listener.close()


@pytest.fixture
def trickling() -> Iterator[TricklingPeer]:
    peer = TricklingPeer(interval=0.5)
    yield peer
    peer.close()


def test_status_line_and_headers_count_against_the_deadline(trickling: TricklingPeer) -> None:
    """Each byte comes well within the per-read timeout; the whole answer would take ~36 s; a
    request with a 2 s deadline and no retry fails as a timeout after a few bytes."""
    client = RestClient(trickling.url, timeout=2.0, max_retries=0)
    try:
        with pytest.raises(SourceError, match="no complete answer within the timeout"):
            client.get("/api/2.0/mlflow/experiments/search")
    finally:
        client.close()
    assert 0 < trickling.sent < len(HEAD) // 2, f"{trickling.sent} bytes sent"


def test_stop_ends_a_request_waiting_for_its_status_line(trickling: TricklingPeer) -> None:
    """With a 10-minute deadline, only the stop event can end this request before the peer is
    done: it ends with StoppedError, not with an answer or a timeout."""
    client = RestClient(trickling.url, timeout=600.0, max_retries=0)
    threading.Timer(1.5, client.stop.set).start()
    try:
        with pytest.raises(StoppedError):
            client.get("/api/2.0/mlflow/experiments/search")
    finally:
        client.close()
    assert trickling.sent < len(HEAD), "the whole answer came: stop was not what ended it"


def test_stop_ends_a_connect_that_is_never_accepted() -> None:
    """A listener whose backlog is full drops new connection attempts (SYNs): connecting waits,
    and the stop event ends the wait (with a 10-minute deadline, nothing else would)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    address = listener.getsockname()
    fillers = []
    try:
        for _ in range(4):  # fill the accept queue: later attempts are not completed
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(address)
            fillers.append(filler)
        client = RestClient(f"http://{address[0]}:{address[1]}", timeout=600.0, max_retries=0)
        threading.Timer(1.5, client.stop.set).start()
        try:
            with pytest.raises(StoppedError):
                client.get("/api/2.0/mlflow/experiments/search")
        finally:
            client.close()
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def test_a_name_lookup_that_hangs_ends_at_the_deadline_or_at_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """getaddrinfo blocks in the C library (a resolver that does not answer waits for its own
    timeouts): the request's deadline and the stop event end the wait for it all the same. The
    slow resolver is a stand-in at the socket module (no real one can be made slow here)."""
    release = threading.Event()

    def hanging_lookup(*args: object, **kwargs: object) -> list[object]:
        release.wait(60)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", hanging_lookup)
    try:
        client = RestClient("http://mlflow.example.invalid", timeout=1.0, max_retries=0)
        try:
            with pytest.raises(SourceError, match="no complete answer within the timeout"):
                client.get("/api/2.0/mlflow/experiments/search")
        finally:
            client.close()
        client = RestClient("http://mlflow.example.invalid", timeout=600.0, max_retries=0)
        threading.Timer(0.5, client.stop.set).start()
        try:
            with pytest.raises(StoppedError):
                client.get("/api/2.0/mlflow/experiments/search")
        finally:
            client.close()
    finally:
        release.set()
