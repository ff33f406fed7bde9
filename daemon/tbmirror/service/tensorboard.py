"""The one supervised TensorBoard: started on the mirror root, probed, restarted, stopped.

TensorBoard runs as our child (`python -m tensorboard.main`, fast loader) in its own process
group, with PR_SET_PDEATHSIG so the kernel kills it if we die, even by SIGKILL: a TensorBoard that
outlived us could read bytes that recovery later truncates. Its data server keeps every events
file open, so it gets as many file descriptors as the hard limit allows (systemd's LimitNOFILE).
Its output goes into our log, at most OUTPUT_LINES lines a minute (a TensorBoard that cannot open
files says so for each of them); it is read in gathered chunks, not a wake-up per line.

Thread-safety: `start`, `check` and `stop` are called from the daemon's main thread only (the
parent-death signal is tied to the thread that forked the child); `up` and `restarts` may be read
from any thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import io
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import httpx
import structlog

from tbmirror import tensorboard_budget
from tbmirror.config import TensorBoardSettings
from tbmirror.errors import TbmirrorError
from tbmirror.processes import stop_process_group
from tbmirror.tensorboard_budget import Histogram

log = structlog.get_logger(__name__)

PR_SET_PDEATHSIG = 1
PROBE_TIMEOUT_SECONDS = 5.0
UNANSWERED_PROBES_BEFORE_RESTART = 3
BACKOFF_CAP_SECONDS = 60.0
START_TIMEOUT = 60.0
OUTPUT_LINES = 100  # of TensorBoard's output logged per OUTPUT_WINDOW; the rest counted
OUTPUT_WINDOW = 60.0
OUTPUT_READ_BYTES = 1 << 20  # the most one read of TensorBoard's output takes, and its pipe holds
OUTPUT_GATHER_SECONDS = 0.05  # after a read that emptied the pipe, the wait for more to gather


class PortInUseError(TbmirrorError):
    """TensorBoard's port is taken by another process."""


def _prepare_child() -> None:
    """In the child, before exec: ask the kernel for SIGKILL when the parent thread dies, and
    raise the soft limit of open files to the hard one."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def check_port_free(host: str, port: int) -> None:
    """Raise PortInUseError if something already listens on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # as TensorBoard's server binds: connections of a TensorBoard that just died, left in
        # TIME_WAIT, do not make the port busy
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise PortInUseError(
                    f"TensorBoard port {port} on {host} is already in use: stop what listens "
                    f"there or set tensorboard.port"
                ) from None
            raise


class TensorBoardSupervisor:
    def __init__(
        self,
        settings: TensorBoardSettings,
        logdir: Path,
        holdings: Callable[[], tuple[int, Histogram]] | None = None,
    ) -> None:
        """`holdings`: what the mirror holds (Store.holdings), read at each start to keep
        TensorBoard within `memory_budget`; None: `scalars_samples` points per series."""
        self.settings = settings
        self._holdings = holdings
        self.logdir = logdir
        self.url = settings.url
        self.restarts = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._ready = False
        self._unanswered = 0
        self._failures = 0
        self._spawned_at = 0.0
        self._next_attempt = 0.0
        # TensorBoard is our child on this host: probed direct, never through HTTP_PROXY.
        self._http = httpx.Client(timeout=PROBE_TIMEOUT_SECONDS, trust_env=False)

    @property
    def up(self) -> bool:
        """True while the child runs and its last probe answered."""
        return self._ready and self._process is not None and self._process.poll() is None

    def scalars_samples(self) -> int:
        """Points TensorBoard keeps per scalar series: `scalars_samples`, or fewer to keep the
        estimate for what the mirror holds now within `memory_budget` (tensorboard_budget.py)."""
        budget, cap = self.settings.memory_budget, self.settings.scalars_samples
        if budget is None or self._holdings is None:
            return cap
        try:
            runs, series = self._holdings()
        except TbmirrorError as error:  # TensorBoard starts all the same, with the cap
            log.warning("tensorboard_memory_unknown", error=str(error), points_per_series=cap)
            return cap
        kept = tensorboard_budget.points_per_series(budget, runs, series, cap)
        within, text = tensorboard_budget.describe(budget, runs, series, cap)
        (log.info if within else log.warning)("tensorboard_memory", estimate=text)
        return kept

    def command(self) -> list[str]:
        s = self.settings
        return [
            sys.executable, "-m", "tensorboard.main",
            "--logdir", str(self.logdir),
            "--host", s.host,
            "--port", str(s.port),
            "--path_prefix", s.path_prefix,
            "--reload_interval", str(s.reload_interval),
            "--samples_per_plugin",
            f"scalars={self.scalars_samples()},images={s.images_samples},text={s.text_samples}",
            "--load_fast", "true",
            *s.extra_args,
        ]  # fmt: skip

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start TensorBoard and wait until it answers. Raises PortInUseError, TbmirrorError."""
        check_port_free(self.settings.host, self.settings.port)
        self._spawn()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._probe():
                self._became_ready()
                return
            assert self._process is not None
            if self._process.poll() is not None:
                raise TbmirrorError(
                    f"TensorBoard exited with code {self._process.returncode} at start-up"
                    + (" (could not bind its port)" if self._process.returncode == 255 else "")
                )
            time.sleep(0.2)
        raise TbmirrorError(f"TensorBoard did not answer on {self.url} within {timeout:.0f} s")

    def check(self) -> None:
        """Probe once; restart (with capped exponential backoff) if it died or stopped answering."""
        process = self._process
        if process is not None and process.poll() is None:
            if self._probe():
                self._unanswered = 0
                if not self._ready:
                    self._became_ready()
                return
            self._unanswered += 1
            starting = not self._ready and time.monotonic() - self._spawned_at < START_TIMEOUT
            if starting or self._unanswered < UNANSWERED_PROBES_BEFORE_RESTART:
                return
            log.error("tensorboard_unresponsive", probes=self._unanswered)
            stop_process_group(process, grace=5)
        elif process is not None:
            log.error("tensorboard_exited", code=process.returncode)
        self._process = None
        self._ready = False
        self._restart()

    def _restart(self) -> None:
        now = time.monotonic()
        if now < self._next_attempt:
            return
        self.restarts += 1
        self._failures += 1
        self._next_attempt = now + min(BACKOFF_CAP_SECONDS, 2 ** (self._failures - 1))
        try:
            check_port_free(self.settings.host, self.settings.port)
        except PortInUseError as error:
            log.error("tensorboard_restart_failed", error=str(error))
            return
        log.warning("tensorboard_restarting", restarts=self.restarts)
        self._spawn()

    def stop(self) -> None:
        self._ready = False
        if self._process is not None:
            stop_process_group(self._process, grace=5)
            self._process = None
        self._http.close()

    def _spawn(self) -> None:
        self._unanswered = 0
        self._process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_prepare_child,
        )
        assert self._process.stdout is not None
        with contextlib.suppress(OSError):  # the pipe stays at its default size (64 KiB)
            fcntl.fcntl(self._process.stdout.fileno(), fcntl.F_SETPIPE_SZ, OUTPUT_READ_BYTES)
        threading.Thread(
            target=_forward_output,
            args=(cast(io.BufferedIOBase, self._process.stdout), self._process.pid),
            daemon=True,
        ).start()
        self._spawned_at = time.monotonic()

    def _probe(self) -> bool:
        try:
            response = self._http.get(self.url.rstrip("/") + "/data/environment")
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def _became_ready(self) -> None:
        self._ready = True
        self._failures = 0
        log.info(
            "tensorboard_ready", url=self.url, pid=self._process.pid if self._process else None
        )


def _forward_output(stream: io.BufferedIOBase, pid: int) -> None:
    """Copy TensorBoard's output into our log, one event per line, at most OUTPUT_LINES per
    OUTPUT_WINDOW: the lines past those are only counted (a chunk at a time: a TensorBoard that
    cannot open its files says so thousands of times a second), and the count logged at the first
    output after the window (or when the output ends). A read that empties the pipe is followed
    by OUTPUT_GATHER_SECONDS of sleep, so a TensorBoard writing a line at a time costs at most 20
    reads a second, not one per line (~6,000 a second at 100,000 unopenable files: 3 % of a
    core); output is relayed that much later."""
    window_end, logged, suppressed, partial = time.monotonic() + OUTPUT_WINDOW, 0, 0, b""
    while chunk := stream.read1(OUTPUT_READ_BYTES):
        if len(chunk) < OUTPUT_READ_BYTES:
            time.sleep(OUTPUT_GATHER_SECONDS)
        if time.monotonic() >= window_end:
            if suppressed:
                log.warning("tensorboard_output_suppressed", pid=pid, lines=suppressed)
            window_end, logged, suppressed = time.monotonic() + OUTPUT_WINDOW, 0, 0
        if logged >= OUTPUT_LINES:
            suppressed += chunk.count(b"\n")
            end = chunk.rfind(b"\n")
            partial = chunk[end + 1 :] if end >= 0 else partial + chunk
            continue
        *lines, partial = (partial + chunk).split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", errors="replace").rstrip()
            if not line:
                continue
            if logged < OUTPUT_LINES:
                log.info("tensorboard_output", pid=pid, line=line)
                logged += 1
            else:
                suppressed += 1
    if suppressed:
        log.warning("tensorboard_output_suppressed", pid=pid, lines=suppressed)
