"""The in-process seams of the MLflow side: an httpx transport in place of the network, and the
RunSource protocol in place of a source.

`httpx.MockTransport` and `ScriptedRuns` answer here (fakes at the seams: the real server is
tested elsewhere). They show that every request of a source goes through the transport it was
given, that the engine needs nothing of a source but the protocol, that a run leaves the mirror
only on proof, and that failures reach the pass report (and the scheduler) as the exceptions
they were.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Collection, Iterable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest
import structlog

from conftest import scalars_in, wait_until
from tbmirror.app import Mirror
from tbmirror.config import MlflowSourceSettings, SourceSettings, parse_settings
from tbmirror.engine.base import Engine, PassReport
from tbmirror.engine.mlflow.engine import MlflowEngine
from tbmirror.errors import SourceError, TbmirrorError, WriteFault
from tbmirror.journal import Journal
from tbmirror.kinds.mlflow import build_source
from tbmirror.mirror.layout import MirrorLayout
from tbmirror.model import Experiment, MetricPoint, RunSnapshot
from tbmirror.service.metrics import DaemonMetrics
from tbmirror.service.scheduler import SourceScheduler
from tbmirror.sources.http import BadAnswerError, HttpStatusError, RestClient, StoppedError
from tbmirror.sources.mlflow import History, HistoryRequest, RunListing, RunState
from tbmirror.sources.stores import Artifact, FileReader, RunRef

T0 = 1_700_000_000_000


def test_a_rest_client_sends_its_requests_through_the_transport_given() -> None:
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url}")
        return httpx.Response(200, json={"ok": True})

    client = RestClient(
        "http://mlflow.invalid", timeout=5, max_retries=0, transport=httpx.MockTransport(answer)
    )
    assert json.loads(client.get("/api/x", {"a": "1"})) == {"ok": True}
    assert seen == ["GET http://mlflow.invalid/api/x?a=1"]
    client.close()


def test_a_built_source_reads_its_experiments_through_the_transport() -> None:
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        found = {"experiment_id": "7", "name": "e", "lifecycle_stage": "active"}
        return httpx.Response(200, json={"experiment": found})

    settings = MlflowSourceSettings(
        name="s", tracking_uri="http://mlflow.invalid", experiments=["e"]
    )
    source = build_source(settings, transport=httpx.MockTransport(answer))
    experiments, missing = source.experiments()
    assert [e.name for e in experiments.values()] == ["e"] and missing == []
    assert seen == ["/api/2.0/mlflow/experiments/get-by-name"]
    source.close()


class ScriptedRuns:
    """A RunSource (engine/mlflow/source.py) whose runs and answers each test sets: a fake at the
    engine's seam, to show the engine asks a source for nothing more than the protocol."""

    requests_made = 0
    answered_at: float | None = None
    artifact_sizes_listed = True

    def __init__(self, settings: MlflowSourceSettings) -> None:
        self.settings = settings
        self.runs: dict[str, RunSnapshot] = {}
        self.series: dict[tuple[str, str], list[MetricPoint]] = {}
        self.refused: dict[tuple[str, str], SourceError] = {}  # series the server refuses
        self.states: dict[str, RunState | SourceError] = {}  # what runs/get says
        self.listing_failure: SourceError | None = None  # raised once the runs are listed

    @property
    def name(self) -> str:
        return self.settings.name

    def add(self, run_id: str, points: list[MetricPoint]) -> None:
        self.series[(run_id, "m")] = points
        self.runs[run_id] = RunSnapshot(run_id, "1", run_id, "RUNNING", "active", T0, None, None,
                                        latest={"m": points[-1]})  # fmt: skip

    def list_runs(
        self,
        since_ms: int | None = None,
        watch_ids: Iterable[str] = (),
        mirrored_ids: Collection[str] = (),
    ) -> RunListing:
        listing = RunListing({"1": Experiment("1", "e")}, iter(()))

        def runs() -> Iterator[RunSnapshot]:
            for run in list(self.runs.values()):
                listing.note(run)
                yield run
            if self.listing_failure is not None:
                raise self.listing_failure

        listing.runs = runs()
        return listing

    def fetch(self, requests: list[HistoryRequest]) -> dict[tuple[str, str], History]:
        found = {}
        for request in requests:
            series = (request.run_id, request.key)
            if series in self.refused:
                found[series] = History([], failure=self.refused[series])
            else:
                found[series] = History(self.series[series][request.cursor.count :])
        return found

    def run(self, run_id: str) -> RunSnapshot:
        return self.runs[run_id]

    def run_state(self, run_id: str) -> RunState:
        state = self.states[run_id]
        if isinstance(state, SourceError):
            raise state
        return state

    def matches_filter(self, run_id: str, experiment_id: str) -> bool:
        return True

    def artifacts_of(self, runs: dict[RunRef, bool]) -> dict[str, list[Artifact] | SourceError]:
        return {run.run_id: [] for run in runs}

    def artifact_file(self, run: RunRef, artifact: Artifact) -> FileReader:
        raise AssertionError("no run here has artifacts")

    def artifact_bytes(self, run: RunRef, artifact: Artifact) -> bytes:
        raise AssertionError("no run here has artifacts")

    def close(self) -> None:
        pass


@pytest.fixture
def scripted(tmp_path: Path) -> Iterator[tuple[ScriptedRuns, MlflowEngine]]:
    settings = MlflowSourceSettings(name="s", tracking_uri="http://mlflow.invalid",
                                    experiments=["e"], on_delete="remove")  # fmt: skip
    journal = Journal.open(MirrorLayout(tmp_path / "root"), tmp_path / "state.db")
    journal.own(settings.name)
    source = ScriptedRuns(settings)
    yield source, MlflowEngine(source, journal)
    journal.close()


def points(count: int) -> list[MetricPoint]:
    return [MetricPoint(T0 + step * 1000, step, step / 2) for step in range(count)]


def test_the_engine_mirrors_what_a_run_source_gives(
    scripted: tuple[ScriptedRuns, MlflowEngine], tmp_path: Path
) -> None:
    source, engine = scripted
    source.add("a", points(2))
    report = engine.run_pass()
    assert (report.failure, report.points, report.failed_runs) == (None, 2, []), report
    source.add("a", points(3))
    assert engine.run_pass().points == 1
    assert len(scalars_in(tmp_path / "root" / "s" / "e" / "a", "m")) == 3


def test_a_run_absent_from_a_listing_leaves_only_on_proof(
    scripted: tuple[ScriptedRuns, MlflowEngine], tmp_path: Path
) -> None:
    """Invariant 8: a run a full listing lacks is kept while runs/get gives no clear answer or
    shows it active, and removed once the server says it does not exist."""
    source, engine = scripted
    source.add("a", points(1))
    assert engine.run_pass().points == 1
    del source.runs["a"]
    run_dir = tmp_path / "root" / "s" / "e" / "a"
    for state in [BadAnswerError("runs/get: an HTML page"), "active"]:
        source.states["a"] = state
        report = engine.run_pass()
        assert (report.failure, report.runs_removed, run_dir.is_dir()) == (None, 0, True), state
    source.states["a"] = "gone"
    assert engine.run_pass().runs_removed == 1 and not run_dir.exists()


@pytest.mark.parametrize("proof", ["runs/get", "filtered search"])
def test_a_stop_while_proving_a_run_gone_ends_the_pass_and_blames_no_run(
    tmp_path: Path, proof: str
) -> None:
    """The daemon stops while a run absent from a full listing is being proven gone (runs/get)
    or out of the selection (the filtered search): the pass ends as stopped, that run is neither
    failed nor kept on "no proof" nor removed, and the next pass proves it as usual."""
    settings = MlflowSourceSettings(
        name="s", tracking_uri="http://mlflow.invalid", experiments=["e"],
        on_delete="remove", filter="metrics.m >= 0" if proof == "filtered search" else "",
    )  # fmt: skip
    journal = Journal.open(MirrorLayout(tmp_path / "root"), tmp_path / "state.db")
    journal.own(settings.name)
    source = ScriptedRuns(settings)
    engine = MlflowEngine(source, journal)
    source.add("a", points(1))
    assert engine.run_pass().points == 1
    del source.runs["a"]
    stopped = StoppedError("the daemon is stopping")
    if proof == "runs/get":
        source.states["a"] = stopped
    else:
        source.states["a"] = "active"
        source.matches_filter = lambda run_id, experiment_id: raise_(stopped)  # type: ignore[method-assign]
    run_dir = tmp_path / "root" / "s" / "e" / "a"
    with structlog.testing.capture_logs() as logged:
        report = engine.run_pass()
    assert report.failure is stopped and report.failed_runs == [], report
    assert run_dir.is_dir() and "run_absent_kept" not in [e["event"] for e in logged]
    source.states["a"] = "gone"
    assert engine.run_pass().runs_removed == 1 and not run_dir.exists()
    journal.close()


def raise_(error: Exception) -> NoReturn:
    raise error


def test_failures_stay_exceptions_until_the_edges(
    scripted: tuple[ScriptedRuns, MlflowEngine], tmp_path: Path
) -> None:
    """A series the server refuses fails its run only; a listing that fails fails the pass with
    that very error, whose text the state store keeps for `tbmirror status`."""
    source, engine = scripted
    source.add("a", points(1))
    source.add("b", points(1))
    refused = HttpStatusError("get-history: HTTP 403", 403, "PERMISSION_DENIED")
    source.refused[("b", "m")] = refused
    report = engine.run_pass()
    assert (report.failure, report.points, report.failed_runs) == (None, 1, ["b"]), report
    failure = SourceError("runs/search: HTTP 500")
    source.listing_failure = failure
    report = engine.run_pass()
    assert report.failure is failure and not isinstance(report.failure, WriteFault)
    assert engine.journal.passes.current()["s"].last_error == "runs/search: HTTP 500"


Script = Callable[[str, dict[str, Any], Callable[..., PassReport]], PassReport]


def _scheduled(
    tmp_path: Path, script: Script, until: Callable[[list[dict[str, Any]]], bool], what: str
) -> list[dict[str, Any]]:
    """A real scheduler over one uploads source (a pass a second) whose passes `script` decides
    (it gets the source's name, the pass's options and the real pass), run until `until` holds
    for the scheduler's log events (within 60 s); those events."""
    (tmp_path / "uploads").mkdir()
    settings = parse_settings(
        f"mirror: {{root: {tmp_path / 'root'}, state: {tmp_path / 'state.db'}}}\n"
        f"sources: [{{name: up, type: uploads, path: {tmp_path / 'uploads'},\n"
        "  rescan_interval: 1}]\n"
    )

    class ScriptedMirror(Mirror):
        def build(self, source: SourceSettings, stop: threading.Event | None) -> Engine:
            engine = super().build(source, stop)
            real_pass = engine.run_pass

            def run_pass(**options: Any) -> PassReport:
                return script(source.name, options, real_pass)

            engine.run_pass = run_pass  # type: ignore[method-assign]
            return engine

    mirror = ScriptedMirror.open(settings)
    stop = threading.Event()
    scheduler = SourceScheduler(mirror, DaemonMetrics(lambda: {}, lambda: None), stop)
    with structlog.testing.capture_logs() as logged:
        try:
            scheduler.start(list(settings.sources))
            wait_until(lambda: until([e for e in logged if e["event"].startswith("source_")]),
                       60, what, saw=lambda: [e["event"] for e in logged])  # fmt: skip
            told = [e for e in logged if e["event"].startswith("source_")]
        finally:
            stop.set()
            scheduler.shutdown(10)
            mirror.close()
    return told


def test_the_scheduler_tells_a_write_fault_from_a_source_error_by_type(tmp_path: Path) -> None:
    """A pass ended by a WriteFault (the disk, not the source) is retried on schedule; one ended
    by a SourceError backs off. The test sets what the first two passes report."""
    failures: list[TbmirrorError] = [
        WriteFault("up", "ENOSPC", "up/a", "No space left on device"),
        SourceError("the upload directory is gone"),
    ]

    def script(name: str, options: dict[str, Any], real: Callable[..., PassReport]) -> PassReport:
        return PassReport(name, failure=failures.pop(0)) if failures else real(**options)

    told = _scheduled(tmp_path, script, lambda told: any(e["event"] == "source_backoff"
                      for e in told), "the second pass to back off")  # fmt: skip
    names = [e["event"] for e in told]
    faults = [n for n in names if n in ("source_write_fault", "source_backoff")]
    assert faults == ["source_write_fault", "source_backoff"], names


def test_a_probe_that_succeeds_does_not_reset_the_backoff_of_a_failing_full_pass(
    tmp_path: Path,
) -> None:
    """Only the full listing fails (a quick pass, the probe, succeeds): the probe lets the source
    be polled at its pace again, but the backoff keeps growing until an ordinary pass succeeds,
    so a source whose full listing fails stays visibly failing."""

    def script(name: str, options: dict[str, Any], real: Callable[..., PassReport]) -> PassReport:
        if options.get("full", True):
            return PassReport(name, failure=SourceError("the full listing fails"))
        return real(**options)

    def grown(told: list[dict[str, Any]]) -> bool:
        return any(e["event"] == "source_backoff" and e["failures"] >= 3 for e in told)

    told = _scheduled(tmp_path, script, grown, "a backoff after three failed full passes")
    backoffs = [e["failures"] for e in told if e["event"] == "source_backoff"]
    assert backoffs[:3] == [1, 2, 3], told
    assert any(e["event"] == "source_recovered" and e["probe"] for e in told), told
