"""tbmirror driven inside the test process over a ScriptedMlflow's transport (helpers/
scripted_mlflow.py), and the mirror read back from its files as TensorBoard would show it.

`engine_for` is the one place tests build an engine on a transport; `sync` is `tbmirror sync`
run in-process (its summary lines and exit code, as cli.py prints them); `MirrorView` answers
what `TensorBoardReader` answers (runs, scalar tags, scalars) from the events files themselves
(each record CRC-checked, as TensorBoard reads them).
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import structlog.testing
from tensorboard.compat.proto.event_pb2 import Event

from tbmirror import app, cli
from tbmirror.config import MlflowSourceSettings, load_settings
from tbmirror.engine.base import Engine
from tbmirror.errors import TbmirrorError
from tbmirror.journal import Journal
from tbmirror.kinds.mlflow import build_engine, build_source
from tbmirror.mirror import events
from tbmirror.sources.mlflow import MlflowSource


def source_for(
    settings: MlflowSourceSettings,
    transport: httpx.BaseTransport,
    stop: threading.Event | None = None,
) -> MlflowSource:
    """The source `settings` describe, every request of it sent through `transport`."""
    return build_source(settings, stop, transport=transport)


def engine_for(
    settings: MlflowSourceSettings, journal: Journal, transport: httpx.BaseTransport
) -> Engine:
    """The engine `tbmirror sync` builds for `settings`, its requests through `transport`."""
    return build_engine(settings, journal, transport=transport)


Completed = subprocess.CompletedProcess[str]


def sync(config: Path, transport: httpx.BaseTransport, *args: str) -> Completed:
    """`tbmirror sync --config config [--reconcile]`, in-process: each source's summary line
    on stdout, exit code 0 only if every pass was ok, the log events as JSON lines on stderr;
    an error as cli.py ends the command."""
    with structlog.testing.capture_logs() as logged:
        result = _sync(config, transport, *args)
    logs = "".join(f"{json.dumps(event, default=str)}\n" for event in logged)
    result.stderr = logs + result.stderr
    return result


def _sync(config: Path, transport: httpx.BaseTransport, *args: str) -> Completed:
    try:
        settings = load_settings(config)
        journal = app.open_journal(settings)
    except TbmirrorError as error:
        return subprocess.CompletedProcess(args, error.exit_code, "", f"tbmirror: {error}\n")
    lines, ok = [], True
    try:
        for source in settings.sources:
            assert isinstance(source, MlflowSourceSettings), "in-process sync: MLflow sources"
            engine = engine_for(source, journal, transport)
            try:
                report = engine.run_pass(reconcile_all="--reconcile" in args)
            finally:
                engine.close()
            lines.append(cli._summary(report))
            ok &= report.ok
    finally:
        journal.close()
    return subprocess.CompletedProcess(args, 0 if ok else 1, "".join(f"{x}\n" for x in lines), "")


class MirrorView:
    """What TensorBoard shows of a mirror root, read from its events files: runs (directories
    holding an events file), and each (run, tag)'s scalars as `[[wall_time, step, value]]`,
    where a point at step s drops the earlier points at steps >= s (TensorBoard's loaders)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def runs(self) -> list[str]:
        files = self.root.rglob("*tfevents*")
        return sorted({str(path.parent.relative_to(self.root)) for path in files if path.is_file()})

    def scalar_tags(self, run: str) -> list[str]:
        return sorted({tag for tag, _, _, _ in self._scalars(run)})

    def scalars(self, run: str, tag: str) -> list[list[float]]:
        shown: list[list[float]] = []
        for found, step, wall_time, value in self._scalars(run):
            if found == tag:
                while shown and shown[-1][1] >= step:  # (steps before it are in order)
                    shown.pop()
                shown.append([wall_time, step, value])
        return shown

    def wait_scalars(self, run: str, tag: str, count: int) -> list[list[float]]:
        """The series, which must hold `count` points (TensorBoardReader's, without waiting:
        what is in the files is all there is)."""
        points = self.scalars(run, tag)
        assert len(points) == count, f"{run}/{tag}: {len(points)} points, expected {count}"
        return points

    def _scalars(self, run: str) -> Iterator[tuple[str, int, float, float]]:
        for path in sorted((self.root / run).glob("*tfevents*")):
            for record in events.iter_records(path.read_bytes()):
                event = Event.FromString(record.payload)
                for value in event.summary.value:
                    if value.WhichOneof("value") == "simple_value":
                        yield value.tag, event.step, event.wall_time, value.simple_value
