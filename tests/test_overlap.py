"""A backfill's artifact listings overlap its history fetches (issue 29, target 2).

Finished runs never looked at are the artifact backlog's; a pass lists their artifacts with
their chunk, while the chunk's histories are in flight, instead of after every chunk is
written. In the daemon the backlog still takes at most `artifacts.batch` runs a pass. The
source is `ScriptedRuns` (test_seams.py: a fake at the engine's RunSource seam; the real
server's timings are benchmarks/backfill.py's).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tbmirror.config import MlflowSourceSettings
from tbmirror.engine.mlflow.engine import MlflowEngine
from tbmirror.errors import SourceError
from tbmirror.journal import Journal
from tbmirror.mirror.layout import MirrorLayout
from tbmirror.model import RunSnapshot
from tbmirror.sources.mlflow import History, HistoryRequest
from tbmirror.sources.stores import Artifact, RunRef
from test_seams import T0, ScriptedRuns, points

WAIT_SECONDS = 10


class OverlapWatch(ScriptedRuns):
    """Finished runs; each fetch waits (up to WAIT_SECONDS) for a listing of one of its runs'
    artifacts and notes whether it came while the fetch was in flight. Records which runs each
    listing asked."""

    def __init__(self, settings: MlflowSourceSettings) -> None:
        super().__init__(settings)
        self.listings: list[set[str]] = []
        self.overlapped: list[bool] = []
        self._listed = threading.Condition()

    def add_finished(self, run_id: str) -> None:
        series = points(3)
        self.series[(run_id, "m")] = series
        self.runs[run_id] = RunSnapshot(run_id, "1", run_id, "FINISHED", "active", T0, T0 + 5000,
                                        None, latest={"m": series[-1]})  # fmt: skip

    def fetch(self, requests: list[HistoryRequest]) -> dict[tuple[str, str], History]:
        wanted = {request.run_id for request in requests}
        if wanted:
            with self._listed:
                self.overlapped.append(
                    self._listed.wait_for(
                        lambda: any(wanted & listed for listed in self.listings), WAIT_SECONDS
                    )
                )
        return super().fetch(requests)

    def artifacts_of(self, runs: dict[RunRef, bool]) -> dict[str, list[Artifact] | SourceError]:
        with self._listed:
            self.listings.append({run.run_id for run in runs})
            self._listed.notify_all()
        return super().artifacts_of(runs)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    journal = Journal.open(MirrorLayout(tmp_path / "root"), tmp_path / "state.db")
    journal.own("s")
    yield journal
    journal.close()


def watched(*run_ids: str) -> OverlapWatch:
    settings = MlflowSourceSettings(
        name="s", type="mlflow", tracking_uri="http://mlflow.invalid", experiments=["e"]
    )
    source = OverlapWatch(settings)
    for run_id in run_ids:
        source.add_finished(run_id)
    return source


def test_the_backlog_of_a_chunk_is_listed_while_its_histories_are_fetched(
    journal: Journal,
) -> None:
    source = watched("a", "b", "c")
    report = MlflowEngine(source, journal).run_pass()  # as `tbmirror sync`: no batch limit
    assert (report.failure, report.points, report.failed_runs) == (None, 9, []), report
    assert source.overlapped == [True], "the listing came only after the fetch"
    assert source.listings == [{"a", "b", "c"}]  # once each, with the chunk
    assert all(record.artifacts_at for record in journal.runs("s").values())


def test_the_daemon_still_lists_at_most_its_batch_of_the_backlog_a_pass(
    journal: Journal,
) -> None:
    source = watched("a", "b", "c")
    engine = MlflowEngine(source, journal, artifact_batch=1)
    for _ in range(3):
        assert engine.run_pass().failure is None
    assert [len(listed) for listed in source.listings] == [1, 1, 1], source.listings
    assert set().union(*source.listings) == {"a", "b", "c"}
    assert source.overlapped == [True], "the first pass's listing came only after the fetch"
