"""`tbmirror run`: the long-running service.

Order of start-up: recovery (the mirror brought back to the committed state), then TensorBoard
(once it answers), the health endpoint, the scheduler, and READY=1 to systemd. The main thread then
supervises TensorBoard, pings the systemd watchdog and reloads the config on SIGHUP or when the
file's content changed (its directory is watched: service/config_watch.py). SIGTERM or
SIGINT stops the passes at their next run boundary (what was written is committed), stops
TensorBoard and returns 0.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import structlog

from tbmirror import logs
from tbmirror.app import Mirror
from tbmirror.config import Settings, SourceSettings, TensorBoardSettings, load_settings
from tbmirror.errors import ConfigError, TbmirrorError
from tbmirror.service.config_watch import ConfigWatcher
from tbmirror.service.health import HealthReport, HealthServer, heartbeat
from tbmirror.service.metrics import DaemonMetrics, SourceState, TensorBoardState
from tbmirror.service.scheduler import SourceScheduler
from tbmirror.service.systemd import Notifier
from tbmirror.service.tensorboard import TensorBoardSupervisor

log = structlog.get_logger(__name__)

TICK_SECONDS = 1.0
SHUTDOWN_GRACE_SECONDS = (
    5.0  # then passes still in a request are abandoned (SIGTERM -> exit < 10 s)
)


class Daemon:
    def __init__(
        self,
        settings: Settings,
        config_path: Path | None = None,
        on_ready: Callable[[Daemon], None] | None = None,
        on_stopping: Callable[[], None] | None = None,
        stop_event: threading.Event | None = None,
    ) -> None:
        """`on_ready` is called once everything runs, `on_stopping` once a stop is asked for
        (before the passes and TensorBoard are stopped); `stop_event`, set before or while the
        daemon runs, stops it (SIGTERM and SIGINT set it)."""
        self.settings = settings
        self.config_path = config_path
        self.on_ready = on_ready
        self.on_stopping = on_stopping
        self.stop_event = stop_event or threading.Event()
        self._reload_requested = False
        self._last_tick = time.monotonic()  # the main loop's heartbeat, for /livez
        self.notifier = Notifier()
        self.tensorboard: TensorBoardSupervisor | None = None
        self._health: HealthServer | None = None
        self._report: HealthReport | None = None
        # made now: it compares with the content of the file as it is while settings are fresh
        self._config_watch = ConfigWatcher(config_path) if config_path else None

    def request_stop(self, *_: object) -> None:
        self.stop_event.set()

    def _request_reload(self, signum: int, frame: FrameType | None) -> None:
        self._reload_requested = True

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; returns the exit code."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGHUP, self._request_reload)
        mirror = Mirror.open(self.settings)
        try:
            self.metrics = DaemonMetrics(self._source_states, self._tensorboard_state)
            mirror.add_fault_listener(self.metrics.write_failed)
            self.mirror = mirror
            self.scheduler = SourceScheduler(mirror, self.metrics, self.stop_event)
            self._start_tensorboard()
            self._start_health()
            self.scheduler.start(self.settings.sources)
            if self._config_watch:
                self._config_watch.start()
            self.notifier.notify(READY="1", STATUS=self._status_line())
            log.info("daemon_ready", sources=len(self.settings.sources))
            if self.on_ready:
                self.on_ready(self)
            self._main_loop()
        finally:
            self.notifier.notify(STOPPING="1")
            log.info("daemon_stopping")
            if self.on_stopping:
                self.on_stopping()
            if self._config_watch:
                self._config_watch.stop()
            ended = True
            if hasattr(self, "scheduler"):
                ended = self.scheduler.shutdown(SHUTDOWN_GRACE_SECONDS)
            if self.tensorboard:
                self.tensorboard.stop()
            if self._health:
                self._health.stop()
            if ended:
                mirror.close()
        log.info("daemon_stopped")
        if not ended:  # a pass stuck in a request: leave it (what it wrote is recovered at start)
            os._exit(0)
        return 0

    def _main_loop(self) -> None:
        interval = min(TICK_SECONDS, self.notifier.watchdog_interval or TICK_SECONDS)
        while not self.stop_event.wait(interval):
            self._tick()
            if self._reload_requested:
                self._reload_requested = False
                self._reload("SIGHUP")
            elif self._config_watch and self._config_watch.due():
                self._reload("file changed")
            if self.tensorboard:
                self.tensorboard.check()
            fields = {"STATUS": self._status_line()}
            if self.notifier.watchdog_interval:
                fields["WATCHDOG"] = "1"
            self.notifier.notify(**fields)

    def _tick(self) -> None:
        self._last_tick = time.monotonic()

    def _start_tensorboard(self) -> None:
        if self.settings.tensorboard.enabled:
            self.tensorboard = TensorBoardSupervisor(
                self.settings.tensorboard, self.settings.mirror.root, self.mirror.holdings
            )
            self.tensorboard.start()
            log.info("tensorboard_url", url=self.settings.tensorboard.shown_url)
            if self.settings.tensorboard.public_url:
                _warn_loopback_links(self.settings.sources, self.mirror.link_base)

    def _start_health(self) -> None:
        settings = self.settings.health
        if not settings.enabled:
            return
        report = HealthReport(
            settings, self.scheduler.views, self.mirror.faults, self._tensorboard_health,
            last_tick=lambda: self._last_tick,
        )  # fmt: skip
        self._report = report
        try:
            self._health = HealthServer(settings, report, self.metrics)
        except OSError as error:
            raise TbmirrorError(
                f"health endpoint cannot listen on {settings.host}:{settings.port}: "
                f"{error.strerror}"
            ) from None
        self._health.start()
        log.info("health_listening", url=f"http://{settings.host}:{settings.port}/healthz")

    def _source_states(self) -> dict[str, SourceState]:
        """Each source as /metrics shows it: /healthz's verdict and the threshold it applies."""
        verdicts = self._report.build()[1]["sources"] if self._report else {}
        health = self.settings.health
        return {
            name: SourceState(
                view.status.last_success,
                health.stale_after_for(view.poll_interval),
                not verdicts.get(name, {}).get("healthy", True),
            )
            for name, view in self.scheduler.views().items()
        }

    def _tensorboard_state(self) -> TensorBoardState | None:
        """None when TensorBoard is disabled; down (not absent) when it failed to start."""
        if not self.settings.tensorboard.enabled:
            return None
        board = self.tensorboard
        return TensorBoardState(bool(board and board.up), board.restarts if board else 0)

    def _tensorboard_health(self) -> dict[str, Any] | None:
        if self.tensorboard is None:
            return None
        return {"up": self.tensorboard.up, "url": self.tensorboard.url,
                "restarts": self.tensorboard.restarts}  # fmt: skip

    def _reload(self, cause: str) -> None:
        """Apply a changed config file (`cause`: what asked, for the log). One that is invalid,
        or whose new or changed sources cannot be built, is reported in one `reload_failed` line
        (never a traceback: the file may hold secrets) and the old config keeps running."""
        if self.config_path is None:
            return
        self.notifier.notify(RELOADING="1", MONOTONIC_USEC=str(time.monotonic_ns() // 1000))
        if self._config_watch:
            self._config_watch.loading()
        try:
            new = load_settings(self.config_path)
            if new.mirror != self.settings.mirror:
                raise ConfigError("mirror.root and mirror.state cannot change without a restart")
            for source in new.sources:  # built (and closed) before anything is replaced
                if source not in self.settings.sources:
                    self.mirror.build(source, None).close()
        except Exception as error:
            message = (
                str(error)
                if isinstance(error, TbmirrorError)
                else f"unexpected {type(error).__name__}"
            )
            log.error("reload_failed", cause=cause, error=message)
            self.notifier.notify(READY="1")
            return
        old = self.settings
        self.settings = new
        logs.configure(new.logging.level)
        added = {source.name for source in new.sources} - {source.name for source in old.sources}
        with heartbeat(self._tick):  # recovery and TensorBoard's start may take a minute or more
            cut = self.mirror.own_and_recover(sorted(added))
            if cut or _restart_needed(old.tensorboard, new.tensorboard):
                self._restart_tensorboard()
            elif new.tensorboard.shown_url != old.tensorboard.shown_url:
                log.info("tensorboard_url", url=new.tensorboard.shown_url)
        if new.health != old.health:
            if self._health:
                self._health.stop()
                self._health = None
            try:
                self._start_health()
            except TbmirrorError as error:
                log.error("health_start_failed", error=str(error))
        self.scheduler.set_sources(new.sources)
        log.info("reloaded", cause=cause, sources=len(new.sources))
        self.notifier.notify(READY="1", STATUS=self._status_line())

    def _restart_tensorboard(self) -> None:
        if self.tensorboard:
            self.tensorboard.stop()
            self.tensorboard = None
        try:
            self._start_tensorboard()
        except (TbmirrorError, OSError) as error:
            log.error("tensorboard_start_failed", error=str(error))

    def _status_line(self) -> str:
        statuses = self.scheduler.statuses()
        successes = [s.last_success for s in statuses.values() if s.last_success]
        last = f"last sync {time.time() - max(successes):.0f} s ago" if successes else "no sync yet"
        failing = sum(1 for s in statuses.values() if s.consecutive_errors)
        sources = f"{len(statuses)} source" + "s" * (len(statuses) != 1)
        line = f"{sources}, {self.scheduler.runs_mirrored():,} runs, {last}"
        return line + (f", {failing} failing" if failing else "")


def _restart_needed(old: TensorBoardSettings, new: TensorBoardSettings) -> bool:
    """Whether TensorBoard must restart for a change of its settings: not for `public_url`
    alone, which only the daemon's banner and status show."""
    return any(
        getattr(new, field) != getattr(old, field)
        for field in new.__struct_fields__
        if field != "public_url"
    )


def _warn_loopback_links(
    sources: list[SourceSettings], link_base: Callable[[SourceSettings], str | None]
) -> None:
    """Behind a proxy, a link back to a run at this host's loopback address opens nothing in a
    colleague's browser: say which sources need `ui_url` (`link_base`: where a source links)."""
    for source in sources:
        base = link_base(source)
        if base is None:
            continue
        host = urllib.parse.urlsplit(base).hostname or ""
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if loopback:
            log.warning(
                "mlflow_links_not_public",
                source=source.name,
                hint="set the source's ui_url to the MLflow address colleagues open",
            )
