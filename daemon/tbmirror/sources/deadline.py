"""An httpcore network backend that holds every socket wait of a request to one deadline.

httpx's own timeouts bound each read, not the request: a peer that sends its status line and
headers one byte per `timeout - e` seconds holds a request for days. Under `DeadlineBackend`,
looking up the host's address, connecting, the TLS handshake, writing and every read of the
status line, the headers and the body wait at most until the deadline set for the calling thread
(`bounded`), and lookups, reads and connects wake every `STOP_CHECK_SECONDS` to end at once
(StoppedError) when `stop` is set.

A request's socket work happens in the thread that makes it (httpx's sync client), so the
deadline is per thread. Thread-safe.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import ssl
import threading
import time
import typing
from collections.abc import Iterable, Iterator

from tbmirror.errors import StoppedError
from tbmirror.sources.blocking_httpcore import httpcore

STOP_CHECK_SECONDS = 0.25


class ConnectFailure(httpcore.ConnectError):
    """No connection, keeping the OS error that said why as `os_error` (httpcore's pool
    re-raises errors `from None`, which drops their cause)."""

    def __init__(self, os_error: OSError) -> None:
        super().__init__(str(os_error))
        self.os_error = os_error


class TlsFailure(httpcore.ConnectError):
    """The TLS handshake with the server failed (its certificate not trusted, no common
    protocol...), keeping the SSL error as `ssl_error`: told apart from a failure to connect,
    which through a proxy is the proxy's."""

    def __init__(self, ssl_error: ssl.SSLError) -> None:
        super().__init__(str(ssl_error))
        self.ssl_error = ssl_error


class DeadlineBackend(httpcore.NetworkBackend):
    """TCP connections whose waits end at the thread's deadline, or at once on `stop`."""

    def __init__(self, stop: threading.Event) -> None:
        self._stop = stop
        self._local = threading.local()

    @contextlib.contextmanager
    def bounded(self, deadline: float) -> Iterator[None]:
        """Within the block, this thread's socket waits end at `deadline` (time.monotonic())."""
        self._local.deadline = deadline
        try:
            yield
        finally:
            self._local.deadline = None

    def wait_for(self, timeout: float | None) -> float:
        """Seconds one wait may take: httpx's per-operation `timeout`, cut to the deadline.
        Raises StoppedError on stop, and `timeout` exceeded as httpcore's ReadTimeout."""
        if self._stop.is_set():
            raise StoppedError("stopped")
        deadline = getattr(self._local, "deadline", None)
        left = float("inf") if deadline is None else deadline - time.monotonic()
        if left <= 0:
            raise httpcore.ReadTimeout("total deadline exceeded")
        return min(left, float("inf") if timeout is None else timeout)

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        """A connected socket to the first address of `host` that answers in time."""
        limit = time.monotonic() + self.wait_for(timeout)
        try:
            addresses = self._addresses(host, port, limit, timeout)
        except OSError as error:
            raise ConnectFailure(error) from error
        failure = OSError("no address")
        for family, kind, proto, _, address in addresses:
            sock = socket.socket(family, kind, proto)
            try:
                for option in socket_options or ():
                    sock.setsockopt(*option)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if local_address is not None:
                    sock.bind((local_address, 0))
                self._connect(sock, address, limit, timeout)
                return DeadlineStream(sock, self)
            except OSError as error:  # this address failed: try the next one
                sock.close()
                failure = error
            except BaseException:
                sock.close()
                raise
        raise ConnectFailure(failure) from failure

    def _addresses(
        self, host: str, port: int, limit: float, timeout: float | None
    ) -> list[tuple[typing.Any, ...]]:
        """`getaddrinfo(host, port)` by `limit`, stop seen while waiting. The lookup blocks in
        the C library, so it runs in a thread of its own, left to end by itself (the resolver's
        own timeouts) if the wait is given up."""
        outcome: list[list[tuple[typing.Any, ...]] | OSError] = []
        done = threading.Event()

        def look_up() -> None:
            try:
                outcome.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
            except OSError as error:
                outcome.append(error)
            done.set()

        threading.Thread(target=look_up, name=f"resolve {host}", daemon=True).start()
        while not done.is_set():
            left = min(self.wait_for(timeout), limit - time.monotonic())
            if left <= 0:
                raise httpcore.ConnectTimeout(f"no address for {host} within the timeout")
            done.wait(min(left, STOP_CHECK_SECONDS))
        found = outcome[0]
        if isinstance(found, OSError):
            raise found
        return found

    def _connect(
        self, sock: socket.socket, address: typing.Any, limit: float, timeout: float | None
    ) -> None:
        """Connect `sock` by `limit`, polling so that stop is seen while waiting."""
        sock.setblocking(False)
        code = sock.connect_ex(address)
        while code == errno.EINPROGRESS:
            left = min(self.wait_for(timeout), limit - time.monotonic())
            if left <= 0:
                raise httpcore.ConnectTimeout("no connection within the timeout")
            _, writable, _ = select.select([], [sock], [], min(left, STOP_CHECK_SECONDS))
            if writable:
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code != 0:
            raise OSError(code, os.strerror(code))
        sock.setblocking(True)


class DeadlineStream(httpcore.NetworkStream):
    """One connection (plain or TLS) whose waits `backend` bounds."""

    def __init__(self, sock: socket.socket, backend: DeadlineBackend) -> None:
        self._sock, self._backend = sock, backend

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        """Bytes as soon as some arrive; waits in slices to see stop and the deadline."""
        while True:
            wait = self._backend.wait_for(timeout)
            self._sock.settimeout(min(wait, STOP_CHECK_SECONDS))
            try:
                return self._sock.recv(max_bytes)
            except TimeoutError:
                if timeout is not None and wait <= STOP_CHECK_SECONDS:
                    raise httpcore.ReadTimeout("no answer within the timeout") from None
            except OSError as error:
                raise httpcore.ReadError(str(error)) from error

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        while buffer:
            self._sock.settimeout(self._backend.wait_for(timeout))
            try:
                buffer = buffer[self._sock.send(buffer) :]
            except TimeoutError:
                raise httpcore.WriteTimeout("could not send within the timeout") from None
            except OSError as error:
                raise httpcore.WriteError(str(error)) from error

    def close(self) -> None:
        self._sock.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        self._sock.settimeout(self._backend.wait_for(timeout))
        try:
            wrapped = ssl_context.wrap_socket(self._sock, server_hostname=server_hostname)
        except TimeoutError:
            self._sock.close()
            raise httpcore.ConnectTimeout("no TLS handshake within the timeout") from None
        except ssl.SSLError as error:
            self._sock.close()
            raise TlsFailure(error) from error
        except OSError as error:
            self._sock.close()
            raise httpcore.ConnectError(str(error)) from error
        return DeadlineStream(wrapped, self._backend)

    def get_extra_info(self, info: str) -> typing.Any:
        if info == "ssl_object" and isinstance(self._sock, ssl.SSLSocket):
            return self._sock._sslobj  # type: ignore[attr-defined]
        if info == "client_addr":
            return self._sock.getsockname()
        if info == "server_addr":
            return self._sock.getpeername()
        if info == "socket":
            return self._sock
        if info == "is_readable":
            return _is_readable(self._sock)
        return None


def _is_readable(sock: socket.socket) -> bool:
    """True if a read would not block (data, or the peer closed): an idle kept-alive
    connection that is readable is dead and not reused."""
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)
