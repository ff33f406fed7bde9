"""Prometheus metrics of the daemon (prometheus-client, one registry per daemon).

Names follow Prometheus conventions (the unit last, `_total` on counters) and every one is
documented in docs/operations/monitoring.md; the alert rules (deploy/prometheus/rules.yml) and
the Grafana dashboard use only these. Counters are fed by each pass; the rest is read at scrape
time from callables the daemon passes in.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tbmirror import __version__
from tbmirror.engine.base import PassReport


@dataclass(frozen=True)
class SourceState:
    """What the scrape reports of one scheduled source."""

    last_success: float | None  # Unix time of its last successful pass (None: never)
    stale_after: float  # seconds without a success after which /healthz calls it degraded
    degraded: bool  # what /healthz says of it now


@dataclass(frozen=True)
class TensorBoardState:
    """What the scrape reports of the supervised TensorBoard (None when it is disabled)."""

    up: bool
    restarts: int


class DaemonMetrics:
    """Counters fed by each pass, plus live values read at scrape time."""

    def __init__(
        self,
        sources: Callable[[], dict[str, SourceState]],
        tensorboard: Callable[[], TensorBoardState | None],
    ) -> None:
        disable_created_metrics()  # no `_created` gauge beside each counter (process-wide)
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_start_time_seconds, memory, CPU, fds
        labels = ["source"]
        self.polls = Counter(
            "tbmirror_polls", "Passes over a source", labels, registry=self.registry
        )
        self.errors = Counter(
            "tbmirror_poll_errors", "Passes that failed", labels, registry=self.registry
        )
        self.run_errors = Counter(
            "tbmirror_run_errors", "Runs (or files) that failed to sync", labels,
            registry=self.registry,
        )  # fmt: skip
        self.points = Counter(
            "tbmirror_points_written", "Metric points written", labels, registry=self.registry
        )
        self.bytes = Counter(
            "tbmirror_written_bytes", "Bytes appended to events files", labels,
            registry=self.registry,
        )  # fmt: skip
        self.requests = Counter(
            "tbmirror_source_requests", "HTTP requests made", labels, registry=self.registry
        )
        self.write_failures = Counter(
            "tbmirror_write_failures", "Failed attempts to write a source's mirror, by cause",
            ["source", "cause"], registry=self.registry,
        )  # fmt: skip
        self.runs = Gauge("tbmirror_runs_mirrored", "Runs mirrored", labels, registry=self.registry)
        self.duration = Histogram(
            "tbmirror_sync_duration_seconds", "Duration of a pass", labels,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=self.registry,
        )  # fmt: skip
        info = Gauge("tbmirror_build_info", "Always 1; the version in a label", ["version"],
                     registry=self.registry)  # fmt: skip
        info.labels(__version__).set(1)
        self._failure_labels: set[tuple[str, str]] = set()
        self._failure_lock = threading.Lock()  # write_failed runs on writer threads
        self.registry.register(_Live(sources, tensorboard))

    def record(self, report: PassReport, runs_mirrored: int) -> None:
        source = report.source
        self.polls.labels(source).inc()
        self.errors.labels(source).inc(0 if report.failure is None else 1)
        self.run_errors.labels(source).inc(len(report.failed_runs))
        self.points.labels(source).inc(report.points)
        self.bytes.labels(source).inc(report.bytes_written)
        self.requests.labels(source).inc(report.requests)
        self.runs.labels(source).set(runs_mirrored)
        self.duration.labels(source).observe(report.seconds)

    def write_failed(self, source: str, cause: str) -> None:
        with self._failure_lock:
            self.write_failures.labels(source, cause).inc()
            self._failure_labels.add((source, cause))

    def forget(self, source: str) -> None:
        """Drop a removed source's series; call it once no pass of the source is in flight (a
        later `record` or `write_failed` would make them again)."""
        for metric in (self.polls, self.errors, self.run_errors, self.points, self.bytes,
                       self.requests, self.runs, self.duration):  # fmt: skip
            with contextlib.suppress(KeyError):
                metric.remove(source)
        with self._failure_lock:
            for labels in [pair for pair in self._failure_labels if pair[0] == source]:
                self.write_failures.remove(*labels)
                self._failure_labels.discard(labels)


class _Live(Collector):
    def __init__(
        self,
        sources: Callable[[], dict[str, SourceState]],
        tensorboard: Callable[[], TensorBoardState | None],
    ) -> None:
        self._sources, self._tensorboard = sources, tensorboard

    def collect(self) -> Iterator[Metric]:
        labels = ["source"]
        success = GaugeMetricFamily(
            "tbmirror_source_last_success_timestamp_seconds",
            "Unix time of the source's last successful pass (0: none yet)",
            labels=labels,
        )
        stale = GaugeMetricFamily(
            "tbmirror_source_stale_after_seconds",
            "Seconds without a successful pass after which the source is degraded",
            labels=labels,
        )
        degraded = GaugeMetricFamily(
            "tbmirror_source_degraded", "1 while /healthz calls the source degraded", labels=labels
        )
        for source, state in sorted(self._sources().items()):
            success.add_metric([source], state.last_success or 0.0)
            stale.add_metric([source], state.stale_after)
            degraded.add_metric([source], int(state.degraded))
        yield from (success, stale, degraded)
        tensorboard = self._tensorboard()
        if tensorboard is not None:
            yield CounterMetricFamily(
                "tbmirror_tensorboard_restarts", "TensorBoard restarts", value=tensorboard.restarts
            )
            yield GaugeMetricFamily(
                "tbmirror_tensorboard_up", "1 while TensorBoard answers", value=int(tensorboard.up)
            )
