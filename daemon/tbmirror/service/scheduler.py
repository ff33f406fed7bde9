"""Polls every source on its own schedule (APScheduler), each in its own thread.

One job per source at `poll_interval` with jitter; never two polls of one source at once
(max_instances=1, and a per-source lock across config reloads); missed runs coalesced. Backoff
without blindness: after n failed passes in a row (`source_backoff`), the next ordinary pass
waits `backoff_delay(n)` (poll_interval x 2^n with jitter, at most BACKOFF_CAP_SECONDS); at the
poll rate meanwhile, a quick pass (no full listing: for MLflow, running and new runs only; one
refused request against a server that refuses) probes the source, so a recovered source is
mirrored, and /healthz healthy, within about a poll interval (`source_recovered`). A write fault
is the disk's, not the source's: no backoff. The other sources keep their schedule. A pass that
changed nothing is logged at debug, one that changed something in one info line
(`source_synced`).
A pass lists every run once `full_listing_interval` has passed since the last such pass ended (a
backfill or a full listing longer than the interval is not followed at once by another); in
between, quick passes list only running, new and just-finished runs. An uploads source is
rescanned at `rescan_interval` and, once its directory exists, also watched (watcher.py):
changed files are synced under the same lock.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from tbmirror.app import Mirror, Schedule
from tbmirror.config import SourceSettings
from tbmirror.engine.base import Engine, PassReport, WatchSpec
from tbmirror.errors import TbmirrorError, WriteFault
from tbmirror.model import SourceStatus
from tbmirror.service.health import SourceView
from tbmirror.service.metrics import DaemonMetrics
from tbmirror.service.watcher import UploadWatcher

log = structlog.get_logger(__name__)

BACKOFF_CAP_SECONDS = 300.0  # the longest wait for an ordinary pass of a failing source


def backoff_delay(failures: int, poll_interval: float, cap: float = BACKOFF_CAP_SECONDS) -> float:
    """Seconds until the next ordinary pass after `failures` failed passes in a row:
    poll_interval x 2^failures, at most `cap`, jittered to between half and all of that (sources
    failing together do not come back in step)."""
    ceiling = min(cap, poll_interval * 2 ** min(failures, 32))
    return random.uniform(ceiling / 2, ceiling)


@dataclass
class _Runner:
    settings: SourceSettings
    schedule: Schedule
    engine: Engine
    lock: threading.Lock
    last_full: float = field(default=float("-inf"))
    watcher: UploadWatcher | None = None
    retired: bool = False
    running_since: float | None = None  # wall time the pass in flight began
    failures: int = 0  # failed passes in a row (probes not counted)
    retry_at: float = field(default=float("-inf"))  # monotonic time of the next ordinary pass


class SourceScheduler:
    def __init__(self, mirror: Mirror, metrics: DaemonMetrics, stop: threading.Event) -> None:
        self._mirror, self._metrics, self._stop = mirror, metrics, stop
        self._runners: dict[str, _Runner] = {}
        self._retiring: list[_Runner] = []  # replaced or removed, closing once their pass ends
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(32)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone=UTC,
        )

    def start(self, sources: list[SourceSettings]) -> None:
        self._scheduler.start()
        self.set_sources(sources)

    def set_sources(self, sources: list[SourceSettings]) -> None:
        """Add, replace (when their settings changed) and remove jobs to match `sources`."""
        wanted = {source.name: source for source in sources}
        with self._guard:
            for name in list(self._runners):
                if name not in wanted or wanted[name] != self._runners[name].settings:
                    self._scheduler.remove_job(name)
                    self._retire(self._runners.pop(name))
                    log.info("source_unscheduled", source=name)
            for name, settings in wanted.items():
                if name in self._runners:
                    continue
                try:
                    self._mirror.own(name)
                except TbmirrorError as error:  # another process mirrors it: not scheduled
                    log.error("source_not_scheduled", source=name, error=str(error))
                    continue
                engine = self._mirror.build(settings, self._stop)
                schedule = self._mirror.schedule(settings)
                lock = self._locks.setdefault(name, threading.Lock())
                self._runners[name] = _Runner(settings, schedule, engine, lock)
                interval = schedule.poll_interval
                self._scheduler.add_job(
                    self._poll,
                    IntervalTrigger(seconds=interval, jitter=min(5.0, interval / 10)),
                    args=[name],
                    id=name,
                    name=f"poll {name}",
                    next_run_time=datetime.now(UTC),
                )
                log.info("source_scheduled", source=name, poll_interval=interval)

    def shutdown(self, grace: float) -> bool:
        """Stop scheduling; passes in flight end at their next run boundary (the stop event ends
        waits and reads at once). True if every pass, of retired sources too, ended within
        `grace` seconds (engines are then closed); False if some are still in a request."""
        deadline = time.monotonic() + grace
        with self._guard:
            runners = list(self._runners.values())
            retiring = list(self._retiring)
        for runner in runners:  # not under the guard: a watcher's batch may be waiting for it
            _stop_watching(runner, max(0.0, deadline - time.monotonic()))
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        for runner in runners + retiring:
            if not runner.lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                log.warning("pass_abandoned", source=runner.settings.name)
                return False
            runner.lock.release()
        for runner in runners:
            runner.engine.close()
        return True

    def statuses(self) -> dict[str, SourceStatus]:
        """Status of every scheduled source (a never-polled one has an empty status)."""
        stored = self._mirror.statuses()
        return {name: stored.get(name) or SourceStatus(name) for name in self.names()}

    def views(self) -> dict[str, SourceView]:
        """What health needs of every scheduled source."""
        stored = self._mirror.statuses()
        with self._guard:
            runners = dict(self._runners)
        return {
            name: SourceView(
                stored.get(name) or SourceStatus(name),
                runner.schedule.poll_interval,
                runner.running_since,
                runner.engine.progress_at,
            )
            for name, runner in runners.items()
        }

    def names(self) -> list[str]:
        with self._guard:
            return sorted(self._runners)

    def runs_mirrored(self) -> int:
        with self._guard:
            return sum(runner.engine.runs_mirrored for runner in self._runners.values())

    def _poll(self, name: str) -> None:
        with self._guard:
            runner = self._runners.get(name)
        if runner is None or self._stop.is_set():
            return
        with runner.lock:
            with self._guard:
                if self._runners.get(name) is not runner:
                    return  # replaced by a reload while we waited
            now = time.monotonic()
            probe = now < runner.retry_at  # backing off: a quick pass tells if it is back
            full = not probe and now - runner.last_full >= runner.schedule.full_listing_interval
            self._watch(runner)  # before the rescan: nothing changes unseen between the two
            runner.running_since = time.time()
            try:
                report = runner.engine.run_pass(full=full, stop=self._stop)
            finally:
                runner.running_since = None
            self._metrics.record(report, runner.engine.runs_mirrored)
        if isinstance(report.failure, WriteFault):  # the disk, not the source: retry on schedule
            log.warning("source_write_fault", source=name)
            return
        if report.failure is not None:
            if not probe:
                runner.failures += 1
                delay = backoff_delay(runner.failures, runner.schedule.poll_interval)
                runner.retry_at = now + delay
                log.warning("source_backoff", source=name, failures=runner.failures,
                            seconds=round(delay, 1))  # fmt: skip
            return
        if runner.failures:
            if probe or runner.retry_at != float("-inf"):
                log.info("source_recovered", source=name, failures=runner.failures, probe=probe)
            runner.retry_at = float("-inf")  # polled at its pace again
            if not probe:  # a whole ordinary pass went well (a quick probe may miss what the
                runner.failures = 0  # full listing meets: the backoff keeps growing until then)
        if full:
            runner.last_full = time.monotonic()  # the interval counts from the listing's end
        _log_synced(report, full)

    def _retire(self, runner: _Runner) -> None:
        """Close a replaced or removed source once its pass in flight (if any) is over, without
        waiting here; the subtree and the metric series of a source no longer scheduled are let
        go (after that pass: its `record` cannot bring the series back)."""
        runner.retired = True
        name = runner.settings.name
        self._retiring.append(runner)

        def close() -> None:
            with runner.lock:
                _stop_watching(runner)
                runner.engine.close()
                with self._guard:
                    self._retiring.remove(runner)
                    if name not in self._runners:
                        self._mirror.disown(name)
                        self._metrics.forget(name)

        threading.Thread(target=close, name=f"retire {name}", daemon=True).start()

    def _watch(self, runner: _Runner) -> None:
        """Watch an engine's directory (if it has one) once it exists, and again after its watch
        ended (the directory was removed and made again); called under the runner's lock."""
        spec = runner.engine.watch_spec()
        if spec is None or runner.retired or self._stop.is_set():
            return
        if runner.watcher is not None and runner.watcher.healthy:
            return
        _stop_watching(runner)
        if not spec.path.is_dir():
            return
        watcher = UploadWatcher(spec, lambda paths: self._sync_paths(runner, spec, paths))
        try:
            watcher.start()
        except OSError as error:  # e.g. inotify watch limits: rescans still catch everything
            log.warning("watch_failed", source=spec.name, error=str(error))
            watcher.stop()
            return
        runner.watcher = watcher

    def _sync_paths(self, runner: _Runner, spec: WatchSpec, paths: set[str]) -> None:
        """Sync the files a watcher saw change (on the watcher's thread)."""
        while not runner.lock.acquire(timeout=0.5):  # a rescan is running: wait, unless retired
            if runner.retired or self._stop.is_set():
                return
        try:
            if runner.retired or self._stop.is_set():
                return
            report = spec.sync_paths(paths, self._stop)
            self._metrics.record(report, runner.engine.runs_mirrored)
        finally:
            runner.lock.release()
        if report.failure is not None or _changed(report):
            _log_synced(report, full=False)


def _changed(report: PassReport) -> bool:
    """Whether a pass changed the mirror or found runs failing (anything an operator reads)."""
    return bool(
        report.points or report.bytes_written or report.runs_written or report.runs_moved
        or report.runs_removed or report.runs_retired or report.failed_runs
    )  # fmt: skip


def _log_synced(report: PassReport, full: bool) -> None:
    """One `source_synced` line per pass: info if it changed something, debug if idle (the
    default poll makes ~8,600 idle passes a day per source)."""
    (log.info if _changed(report) else log.debug)(
        "source_synced",
        source=report.source,
        full=full,
        runs=report.runs_listed,
        points=report.points,
        images=report.images,
        tables=report.tables,
        bytes=report.bytes_written,
        requests=report.requests,
        planned=report.runs_planned,
        failed_runs=len(report.failed_runs),
        retired=report.runs_retired,
        duration_ms=round(report.seconds * 1000),
    )


def _stop_watching(runner: _Runner, timeout: float = 10.0) -> None:
    if runner.watcher is not None:
        runner.watcher.stop(timeout)
        runner.watcher = None
