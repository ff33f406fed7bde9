"""Incremental syncs: only new points are appended, nothing already written changes, a sync with
nothing new writes 0 bytes and fetches no history, and points that MLflow inserts mid-history
(late timestamps, lower steps) still arrive exactly once. In-process, against a scripted MLflow
(helpers/scripted_mlflow.py, held to a real server by test_scripted_mlflow.py); the series are read
from the events files as TensorBoard shows them (helpers/in_process.py: MirrorView)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
from tensorboard.compat.proto.event_pb2 import Event

from conftest import new_run, tb_run
from helpers.in_process import MirrorView, source_for
from helpers.scripted_mlflow import Metric, ScriptedMlflow
from tbmirror.config import MlflowSourceSettings
from tbmirror.engine.mlflow.engine import MlflowEngine
from tbmirror.journal import Journal
from tbmirror.mirror.layout import MirrorLayout

T0 = int(time.time() * 1000) - 600_000


def events_file(mirror_root: Path, *parts: str) -> Path:
    (path,) = (mirror_root.joinpath(*parts)).glob("events.out.tfevents.*")
    return path


def scalar_events(path: Path) -> list[tuple[str, int, float, float]]:
    """(tag, step, wall_time, value) of every scalar event, read with TensorBoard's own loader."""
    return [
        (value.tag, event.step, event.wall_time, value.simple_value)
        for event in map(Event.FromString, RawEventFileLoader(str(path)).Load())
        for value in event.summary.value
        if value.WhichOneof("value") == "simple_value"
    ]


def history_requests(server: ScriptedMlflow) -> int:
    return len(server.seen("/metrics/get-history"))


def test_only_new_points_are_appended_and_an_idle_sync_writes_nothing(
    scripted_sync,
    scripted: ScriptedMlflow,
    experiment_name: str,
    source_name: str,
) -> None:
    client, sync, mirror_root = scripted.client(), scripted_sync, scripted_sync.root
    view = MirrorView(mirror_root)
    run_id = new_run(client, experiment_name, "r")
    client.log_batch(run_id, metrics=[Metric("a", i, T0 + i, i) for i in range(5)])
    client.log_batch(run_id, metrics=[Metric("b", -i, T0 + i, 0) for i in range(3)])
    sync([experiment_name])
    path = events_file(mirror_root, source_name, experiment_name, "r")
    before, events_before = path.read_bytes(), scalar_events(path)

    client.log_batch(run_id, metrics=[Metric("a", i, T0 + i, i) for i in range(5, 8)])
    client.log_batch(run_id, metrics=[Metric("b", -i, T0 + i, 0) for i in range(3, 5)])
    client.log_batch(run_id, metrics=[Metric("c", 42.0, T0 + 9, 3)])
    sync([experiment_name])
    after = path.read_bytes()
    assert after.startswith(before), "bytes already written must never change"

    appended = scalar_events(path)[len(events_before) :]
    assert sorted((tag, step, value) for tag, step, _, value in appended) == sorted(
        [
            ("a", 5, 5.0),
            ("a", 6, 6.0),
            ("a", 7, 7.0),
            ("b", 3, -3.0),
            ("b", 4, -4.0),
            ("c", 3, 42.0),
        ]
    )
    run = tb_run(source_name, experiment_name, "r")
    assert [p[1] for p in view.wait_scalars(run, "a", 8)] == list(range(8))
    assert [p[1] for p in view.wait_scalars(run, "b", 5)] == list(range(5))

    stat, requests = path.stat(), history_requests(scripted)
    result = sync([experiment_name])
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    assert history_requests(scripted) == requests, "an idle sync must fetch no history"
    assert ", 0 points, 0 bytes," in result.stdout


def test_points_inserted_mid_history_arrive_exactly_once(
    scripted_sync,
    scripted: ScriptedMlflow,
    experiment_name: str,
    source_name: str,
) -> None:
    client, sync, mirror_root = scripted.client(), scripted_sync, scripted_sync.root
    view = MirrorView(mirror_root)
    run_id = client.create_run(
        client.create_experiment(experiment_name), run_name="late"
    ).info.run_id
    values = [float("nan") if i == 3 else float(i) for i in range(10)]  # a NaN must match too
    client.log_batch(
        run_id, metrics=[Metric("loss", values[i], T0 + 1000 * i, i) for i in range(10)]
    )
    sync([experiment_name])

    # A late point: higher step, but a timestamp older than points already mirrored, so MLflow
    # lists it in the middle of the history (as Azure ML's asynchronous ingestion does).
    client.log_batch(run_id, metrics=[Metric("loss", 99.0, T0 + 4500, 20)])
    sync([experiment_name])
    run = tb_run(source_name, experiment_name, "late")
    points = view.wait_scalars(run, "loss", 11)
    assert [p[1] for p in points] == [*range(10), 20]
    assert points[-1][0] == (T0 + 4500) / 1000 and points[-1][2] == 99.0

    # Resumed training: a lower step with a new timestamp does not change MLflow's "latest" of the
    # key, so a plain pass cannot see it; finishing the run triggers the reconcile that does.
    client.log_batch(run_id, metrics=[Metric("loss", 3.5, T0 + 20_000, 3)])
    sync([experiment_name])
    client.set_terminated(run_id, "FINISHED")
    sync([experiment_name])
    points = view.wait_scalars(run, "loss", 12)
    assert [p[1] for p in points] == [*range(10), 20, 21]
    assert points[-1][2] == 3.5

    # And `--reconcile` finds such points at any time, once.
    client.log_batch(run_id, metrics=[Metric("loss", 1.25, T0 + 30_000, 1)])
    sync([experiment_name])
    assert len(view.scalars(run, "loss")) == 12
    sync([experiment_name], "--reconcile")
    points = view.wait_scalars(run, "loss", 13)
    assert [p[1] for p in points] == [*range(10), 20, 21, 22]
    sync([experiment_name], "--reconcile")
    assert len(view.scalars(run, "loss")) == 13


@contextlib.contextmanager
def clocked_engine(
    tmp_path: Path, server: ScriptedMlflow, experiment: str, now: list[float]
) -> Iterator[MlflowEngine]:
    """An in-process engine for one experiment whose clock is `now[0]`."""
    settings = MlflowSourceSettings(
        name="clocked", tracking_uri=server.url, experiments=[experiment],
        reconcile_interval=600,
    )  # fmt: skip
    journal = Journal.open(MirrorLayout(tmp_path / "root"), tmp_path / "state.db")
    journal.own(settings.name)
    source = source_for(settings, server.transport)
    try:
        yield MlflowEngine(source, journal, clock=lambda: now[0])
    finally:
        source.close()
        journal.close()


def test_running_runs_are_reconciled_every_interval(
    tmp_path: Path, scripted: ScriptedMlflow, experiment_name: str
) -> None:
    """A lower-step point logged into a running run is found at the first pass after
    `reconcile_interval`, not before, and only once."""
    client = scripted.client()
    run_id = new_run(client, experiment_name, "r")
    client.log_batch(run_id, metrics=[Metric("m", float(i), T0 + i, i) for i in range(5)])
    now = [1_000_000.0]
    with clocked_engine(tmp_path, scripted, experiment_name, now) as engine:
        assert engine.run_pass().points == 5
        client.log_batch(run_id, metrics=[Metric("m", 2.5, T0 + 100, 2)])
        now[0] += 599
        assert engine.run_pass().history_series == 0
        now[0] += 1
        report = engine.run_pass()
        assert (report.history_series, report.points) == (1, 1)
        now[0] += 1
        assert engine.run_pass().history_series == 0


def test_finished_runs_are_reconciled_once_after_a_grace_period(
    tmp_path: Path, scripted: ScriptedMlflow, experiment_name: str
) -> None:
    """A point that lands after the run finished (Azure ML ingests asynchronously) with a step
    that does not change MLflow's latest is found `reconcile_interval` after the run ended;
    after that the run is left alone."""
    client = scripted.client()
    run_id = new_run(client, experiment_name, "done")
    client.log_batch(run_id, metrics=[Metric("m", float(i), T0 + i, i) for i in range(5)])
    client.set_terminated(run_id, "FINISHED")
    now = [time.time()]
    with clocked_engine(tmp_path, scripted, experiment_name, now) as engine:
        assert engine.run_pass().points == 5
        client.log_batch(run_id, metrics=[Metric("m", 1.5, T0 + 50, 1)])
        now[0] += 599
        assert engine.run_pass().history_series == 0
        now[0] += 2
        assert engine.run_pass().points == 1
        client.log_batch(run_id, metrics=[Metric("m", 0.5, T0 + 60, 0)])
        now[0] += 601
        assert engine.run_pass().history_series == 0
