"""A real outbound HTTP proxy for tests: Debian's tinyproxy on a free port of 127.0.0.1.

`Tinyproxy(workdir)` writes a minimal config in `workdir`, runs tinyproxy in the foreground and
waits until it accepts connections; `requests()` are the request lines it logged ("GET
http://host:port/path HTTP/1.1", "CONNECT host:port HTTP/1.1"); `close()` (or leaving the `with`
block) stops it. With `basic_auth=(user, password)` it answers 407 to requests without them;
with `connect_ports`, it opens CONNECT tunnels to those ports only (any port by default).
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from helpers.tools import tool
from tbmirror.processes import free_port

START_SECONDS = 20
_REQUEST = re.compile(r"Request \(file descriptor \d+\): (.+)$")


class Tinyproxy:
    """One tinyproxy process (see module docstring)."""

    def __init__(
        self,
        workdir: Path,
        basic_auth: tuple[str, str] | None = None,
        connect_ports: tuple[int, ...] = (),
    ) -> None:
        binary = tool("tinyproxy", "tinyproxy")
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log_path = workdir / "tinyproxy.log"
        config = workdir / "tinyproxy.conf"
        lines = [
            f"Port {self.port}",
            "Listen 127.0.0.1",
            "Timeout 60",
            f'LogFile "{self.log_path}"',
            "LogLevel Info",
            "MaxClients 20",
            "Allow 127.0.0.1",
        ]
        lines += [f"ConnectPort {port}" for port in connect_ports]
        if basic_auth:
            lines.append(f"BasicAuth {basic_auth[0]} {basic_auth[1]}")
        config.write_text("\n".join(lines) + "\n")
        self.url = f"http://127.0.0.1:{self.port}"
        self._output = (workdir / "tinyproxy.out").open("wb")
        self._process = subprocess.Popen(
            [binary, "-d", "-c", str(config)], stdout=self._output, stderr=subprocess.STDOUT
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        self.close()
        raise AssertionError(
            f"tinyproxy did not listen on {self.url} within {START_SECONDS} s "
            f"(exit code {self._process.returncode}); its log:\n{self.log()}"
        )

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else "(no log)"

    def requests(self) -> list[str]:
        """The request lines tinyproxy has logged, in order."""
        return [m.group(1) for line in self.log().splitlines() if (m := _REQUEST.search(line))]

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)
        self._output.close()

    def __enter__(self) -> Tinyproxy:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
