"""A source a reload removes while its pass is in flight: its metric series go once that pass
has ended, never before (the pass's own `record` would bring them back). A real scheduler, journal
and uploads engine; only the engine's pass is held open by the test."""

from __future__ import annotations

import threading
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
