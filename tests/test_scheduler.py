"""The scheduler with a real journal and real engines whose passes the tests hold or time: a
source a reload removes while its pass is in flight (its metric series go once that pass has
ended, never before: the pass's own `record` would bring them back), and when a full listing
is due."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from conftest import wait_until
from tbmirror.app import Mirror
from tbmirror.config import SourceSettings, parse_settings
from tbmirror.engine.base import Engine, PassReport
from tbmirror.service.metrics import DaemonMetrics
from tbmirror.service.scheduler import SourceScheduler


def test_a_retired_sources_series_go_after_its_pass_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "uploads").mkdir()
    settings = parse_settings(
        f"mirror: {{root: {tmp_path / 'root'}, state: {tmp_path / 'state.db'}}}\n"
        f"sources: [{{name: held, type: uploads, path: {tmp_path / 'uploads'}}}]\n"
    )
    entered, release = threading.Event(), threading.Event()
    mirror = Mirror.open(settings)
    real_build = mirror.build

    def held_engine(source: SourceSettings, stop: threading.Event | None) -> Engine:
        engine = real_build(source, stop)
        real_pass = engine.run_pass

        def run_pass(**options: object) -> PassReport:
            entered.set()
            assert release.wait(30), "the test never released the pass"
            return real_pass(**options)

        engine.run_pass = run_pass
        return engine

    monkeypatch.setattr(mirror, "build", held_engine)
    metrics = DaemonMetrics(lambda: {}, lambda: None)
    stop = threading.Event()
    scheduler = SourceScheduler(mirror, metrics, stop)
    try:
        scheduler.start(list(settings.sources))
        assert entered.wait(30), "the first pass never began"
        scheduler.set_sources([])  # the reload removes it mid-pass
        release.set()

        def retired() -> bool:  # the scheduler's thread that closes the source has ended
            return not [t for t in threading.enumerate() if t.name == "retire held"]

        wait_until(retired, 10, "the removed source's retirement to end")
        exposed = generate_latest(metrics.registry).decode()
        assert 'source="held"' not in exposed, exposed
    finally:
        release.set()
        stop.set()
        scheduler.shutdown(10)
        mirror.close()


def test_a_full_listing_longer_than_its_interval_is_not_followed_by_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`full_listing_interval` counts from the end of the last full listing: after a backfill
    that outlasted it (17 minutes at 100,000 runs), the next poll is a quick pass, not the whole
    listing again. A real scheduler; the engine's passes are the test's (nothing is fetched)."""
    settings = parse_settings(
        f"mirror: {{root: {tmp_path / 'root'}, state: {tmp_path / 'state.db'}}}\n"
        "sources: [{name: s, type: mlflow, tracking_uri: 'http://mlflow.invalid', "
        "experiments: [e], poll_interval: 0.2s, full_listing_interval: 3s}]\n"
    )
    passes: list[bool] = []
    mirror = Mirror.open(settings)
    real_build = mirror.build

    def timed_engine(source: SourceSettings, stop: threading.Event | None) -> Engine:
        engine = real_build(source, stop)

        def run_pass(full: bool = False, **options: object) -> PassReport:
            passes.append(full)
            if len(passes) == 1:
                time.sleep(3.5)  # the backfill: longer than the interval
            return PassReport(source.name)

        engine.run_pass = run_pass  # type: ignore[method-assign]
        return engine

    monkeypatch.setattr(mirror, "build", timed_engine)
    stop = threading.Event()
    scheduler = SourceScheduler(mirror, DaemonMetrics(lambda: {}, lambda: None), stop)
    try:
        scheduler.start(list(settings.sources))
        wait_until(lambda: len(passes) >= 3, 30, "three passes")
        assert passes[:3] == [True, False, False], passes
    finally:
        stop.set()
        scheduler.shutdown(10)
        mirror.close()
