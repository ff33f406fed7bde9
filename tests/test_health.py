"""The daemon's probes at the class level: /readyz follows TensorBoard, /livez the main loop,
and the heartbeat that keeps /livez alive through a long but known step of that loop."""

from __future__ import annotations

import threading
import time
from typing import Any

from msgspec.structs import replace

from tbmirror.config import HealthSettings, TensorBoardSettings, parse_settings
from tbmirror.config.schema import PublicUrl
from tbmirror.service.daemon import _restart_needed
from tbmirror.service.health import LIVENESS_SECONDS, HealthReport, heartbeat


class _Probes:
    """A HealthReport whose TensorBoard state and main-loop heartbeat the test sets."""

    def __init__(self) -> None:
        self.tensorboard: dict[str, Any] | None = {"up": True}
        self.tick = 0.0
        self.report = HealthReport(
            HealthSettings(), dict, dict, lambda: self.tensorboard, last_tick=lambda: self.tick
        )


def test_readiness_follows_tensorboard_and_liveness_the_main_loop() -> None:
    probes = _Probes()
    probes.tick = time.monotonic()
    assert probes.report.ready()[0] and probes.report.live()[0]
    probes.tensorboard = {"up": False}
    assert probes.report.ready() == (False, {"ready": False, "tensorboard": {"up": False}})
    assert probes.report.live()[0], "TensorBoard down is no reason to restart the daemon"
    probes.tensorboard = None  # disabled: nothing to wait for
    assert probes.report.ready()[0]
    probes.tick = time.monotonic() - LIVENESS_SECONDS - 1
    alive, body = probes.report.live()
    assert not alive and body["last_tick_seconds_ago"] > LIVENESS_SECONDS


def test_a_heartbeat_ticks_through_a_long_step_and_stops_at_its_limit() -> None:
    """While the block runs the beat keeps coming, up to `limit`; after the block, none."""
    beats: list[float] = []
    start = time.monotonic()
    with heartbeat(lambda: beats.append(time.monotonic()), limit=0.6, interval=0.05):
        time.sleep(1.2)  # a step longer than the limit
    ended = time.monotonic()
    assert len(beats) >= 3, beats
    assert max(beats) <= start + 0.6 + 0.05, (start, beats)  # a stuck step still goes unlive
    count = len(beats)
    time.sleep(0.2)
    assert len(beats) == count and ended - start >= 1.2
    assert not [t for t in threading.enumerate() if t.name == "heartbeat"]


def test_a_heartbeat_keeps_liveness_through_a_step_longer_than_its_window() -> None:
    probes = _Probes()
    probes.tick = time.monotonic() - LIVENESS_SECONDS + 0.3  # about to go unlive

    def beat() -> None:
        probes.tick = time.monotonic()

    with heartbeat(beat, interval=0.05):
        time.sleep(0.6)
        assert probes.report.live()[0], probes.report.live()[1]


PROXIED = """
mirror: {root: /r, state: /s.db}
sources: [{name: a, type: mlflow, tracking_uri: "http://h", experiments: [e]}]
tensorboard: {public_url: "https://x.org/tb/", path_prefix: /tb}
"""


def test_only_tensorboards_own_settings_restart_it_not_the_public_url() -> None:
    old = TensorBoardSettings()
    assert not _restart_needed(old, replace(old, public_url=PublicUrl("https://x.org/")))
    assert _restart_needed(old, replace(old, port=6007))
    assert _restart_needed(old, replace(old, reload_interval=30))
    proxied = parse_settings(PROXIED).tensorboard
    moved = parse_settings(PROXIED.replace("/tb", "/tb2")).tensorboard
    assert _restart_needed(proxied, moved) and _restart_needed(moved, proxied)
    assert _restart_needed(proxied, old) and _restart_needed(old, proxied)
