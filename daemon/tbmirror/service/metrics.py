"""Prometheus metrics of the daemon (prometheus-client, one registry per daemon)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tbmirror.engine.base import PassReport


class DaemonMetrics:
    """Counters fed by each pass, plus live values read at scrape time."""

    def __init__(
        self,
        last_success: Callable[[], dict[str, float | None]],
        tensorboard_restarts: Callable[[], int],
        tensorboard_up: Callable[[], bool],
    ) -> None:
        self.registry = CollectorRegistry()
        labels = ["source"]
        self.polls = Counter(
            "tbmirror_polls", "Passes over a source", labels, registry=self.registry
        )
        self.errors = Counter(
            "tbmirror_poll_errors", "Passes that failed", labels, registry=self.registry
        )
        self.run_errors = Counter(
            "tbmirror_run_errors", "Runs that failed to sync", labels, registry=self.registry
        )
        self.points = Counter(
            "tbmirror_points_written", "Metric points written", labels, registry=self.registry
        )
        self.bytes = Counter(
            "tbmirror_bytes_written", "Bytes appended to events files", labels,
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
        self.registry.register(_Live(last_success, tensorboard_restarts, tensorboard_up))

    def record(self, report: PassReport, runs_mirrored: int) -> None:
        source = report.source
        self.polls.labels(source).inc()
        if report.error:
            self.errors.labels(source).inc()
        self.run_errors.labels(source).inc(len(report.failed_runs))
        self.points.labels(source).inc(report.points)
        self.bytes.labels(source).inc(report.bytes_written)
        self.requests.labels(source).inc(report.requests)
        self.runs.labels(source).set(runs_mirrored)
        self.duration.labels(source).observe(report.seconds)

    def write_failed(self, source: str, cause: str) -> None:
        self.write_failures.labels(source, cause).inc()

    def forget(self, source: str) -> None:
        """Drop a removed source's series."""
        for metric in (self.polls, self.errors, self.run_errors, self.points, self.bytes,
                       self.requests, self.runs, self.duration):  # fmt: skip
            with contextlib.suppress(KeyError):
                metric.remove(source)


class _Live(Collector):
    def __init__(
        self,
        last_success: Callable[[], dict[str, float | None]],
        restarts: Callable[[], int],
        up: Callable[[], bool],
    ) -> None:
        self._last_success, self._restarts, self._up = last_success, restarts, up

    def collect(self) -> Iterator[Metric]:
        lag = GaugeMetricFamily(
            "tbmirror_source_lag_seconds",
            "Seconds since the last successful pass (NaN before the first)",
            labels=["source"],
        )
        now = time.time()
        for source, success in sorted(self._last_success().items()):
            lag.add_metric([source], now - success if success else float("nan"))
        yield lag
        yield CounterMetricFamily(
            "tbmirror_tensorboard_restarts", "TensorBoard restarts", value=self._restarts()
        )
        yield GaugeMetricFamily(
            "tbmirror_tensorboard_up", "1 while TensorBoard answers", value=int(self._up())
        )
