"""A listing read page by page (issue 14): a pass selects, places and writes runs as the pages of
`runs/search` arrive, never holding every run snapshot at once; what only a complete listing can
prove (a run gone, a run past `max_runs`) waits for its end; a run listed exactly as it was last
mirrored whole is not looked into again. The passes run in-process against a scripted MLflow
(helpers/scripted_mlflow.py, held to a real server by test_scripted_mlflow.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import scalars_in
from helpers.in_process import source_for
from helpers.scripted_mlflow import Metric, ScriptedMlflow
from tbmirror.config import MlflowSourceSettings
from tbmirror.engine.mlflow import engine as engine_module
from tbmirror.engine.mlflow.engine import MlflowEngine
from tbmirror.engine.mlflow.selection import MAX_RUNS, PARENT, STATUS, Selection
from tbmirror.journal import Journal
from tbmirror.mirror.layout import MirrorLayout
from tbmirror.model import RunSnapshot

T0 = 1_700_000_000_000
SEARCH = r"/api/2\.0/mlflow/runs/search"


def snapshot(run_id: str, start: int = 0, parent: str | None = None, **kw: Any) -> RunSnapshot:
    fields = {"status": "FINISHED", "lifecycle_stage": "active", "experiment_id": "1"} | kw
    return RunSnapshot(run_id, fields["experiment_id"], run_id, fields["status"],
                       fields["lifecycle_stage"], start, start, parent)  # fmt: skip


def selection(**settings: Any) -> Selection:
    source = MlflowSourceSettings(name="s", tracking_uri="http://h",
                                  experiments=["e"], **settings)  # fmt: skip
    return Selection(source, time.time)


class Counted:
    """An iterable of runs that counts how many have been read, and the most `probe()` said
    as each was read."""

    def __init__(self, runs: list[RunSnapshot], probe: Callable[[], int] = lambda: 0) -> None:
        self.runs, self.probe, self.read, self.most = runs, probe, 0, 0

    def __iter__(self) -> Iterator[RunSnapshot]:
        for run in self.runs:
            self.read += 1
            self.most = max(self.most, self.probe())
            yield run


def test_runs_are_yielded_as_the_listing_is_read_parents_before_children() -> None:
    listing = Counted([snapshot(f"r{i}", i) for i in range(1000)])
    stream = iter(selection().stream(listing, True, in_root=()))
    assert next(stream).run_id == "r0" and listing.read == 1, "the first run before the rest"

    early_child = [snapshot("kid", 1, parent="late"), snapshot("a", 2),
                   snapshot("late", 3), snapshot("grandkid", 4, parent="kid")]  # fmt: skip
    assert [r.run_id for r in selection().stream(early_child, True, in_root=())] == [
        "a", "late", "kid", "grandkid"]  # fmt: skip
    # A child of a mirrored parent goes at once; of a parent never listed, at the end.
    orphans = [snapshot("c1", 1, parent="gone"), snapshot("c2", 2, parent="mirrored"),
               snapshot("c3", 3, parent="c1"), snapshot("b", 4)]  # fmt: skip
    assert [r.run_id for r in selection().stream(orphans, True, in_root={"mirrored"})] == [
        "c2", "b", "c1", "c3"]  # fmt: skip
    cycle = [snapshot("x", 1, parent="y"), snapshot("y", 2, parent="x")]
    assert sorted(r.run_id for r in selection().stream(cycle, True, in_root=())) == ["x", "y"]


def test_max_runs_holds_only_the_most_recent_trees_while_the_listing_streams() -> None:
    runs = [snapshot(f"r{i:04d}", i) for i in range(2000)]
    runs.insert(1500, snapshot("kid-of-old", 1500, parent="r0100"))
    runs += [snapshot("kid-of-new", 3000, parent="r1999"), snapshot("f", 2500, status="FAILED")]
    listing = Counted(runs, probe=lambda: len(stream._trees))  # the trees held
    stream = selection(max_runs=2, run_statuses=["FINISHED"]).stream(listing, True, ())
    assert [r.run_id for r in stream] == ["r1998", "r1999", "kid-of-new"]
    assert listing.read == len(runs) and listing.most <= 3, "never more than max_runs + 1 held"
    assert stream.out["r0000"] == MAX_RUNS and stream.out["kid-of-old"] == PARENT
    assert stream.out["f"] == STATUS and len(stream.out) == 2000 - 2 + 2
    quick = selection(max_runs=2).apply(runs, False, in_root=())  # max_runs: full listings only
    assert quick.out == {} and len(quick.runs) == len(runs)


def test_a_mirrored_parent_judged_out_or_held_takes_its_children_along() -> None:
    """Mirrored runs judged are not kept as such (a daemon's first pass judges 100,000): a
    mirrored parent out or held still decides its children's verdict."""
    runs = [snapshot("old", 1), snapshot("failed", 2, status="FAILED"), snapshot("new", 3),
            snapshot("kid-of-old", 4, parent="old"), snapshot("kid-of-failed", 5, parent="failed"),
            snapshot("kid-of-new", 6, parent="new")]  # fmt: skip
    mirrored = {"old", "failed", "new"}
    stream = selection(max_runs=1, run_statuses=["FINISHED"]).stream(runs, True, mirrored)
    assert [r.run_id for r in stream] == ["new", "kid-of-new"]
    assert stream.out == {"failed": STATUS, "old": MAX_RUNS, "kid-of-old": PARENT,
                          "kid-of-failed": PARENT}  # fmt: skip


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine_module, "CHUNK_RUNS", 2)


def test_a_listing_cut_mid_way_keeps_what_its_pages_wrote_and_proves_nothing_gone(
    tmp_path: Path,
    scripted: ScriptedMlflow,
    experiment_name: str,
    small_chunks: None,
) -> None:
    """Pages of 2 runs (a server that caps them), the third refused: the runs of the first two
    pages are written before the listing fails; a deleted run beyond the cut is not removed until
    a complete listing proves it gone; the next pass completes the rest, each point once."""
    client = scripted.client()
    experiment_id = client.create_experiment(experiment_name)
    ids = {}
    for index, name in enumerate(["r0", "r1", "r2", "r3", "r4", "gone"]):
        run = client.create_run(experiment_id, start_time=T0 + index * 1000, run_name=name)
        ids[name] = run.info.run_id
    settings = MlflowSourceSettings(name="streamed", tracking_uri=scripted.url,
                                    experiments=[experiment_name], on_delete="remove",
                                    timeout=5)  # fmt: skip
    journal = Journal.open(MirrorLayout(tmp_path / "root"), tmp_path / "state.db")
    journal.own(settings.name)
    source = source_for(settings, scripted.transport)
    run_dir = tmp_path / "root" / "streamed" / experiment_name

    def log(step: int) -> None:
        for run_id in ids.values():
            client.log_batch(run_id, metrics=[Metric("m", step / 3, T0 + step * 1000, step)])

    def steps(name: str) -> list[int]:
        return sorted(
            round((wall * 1000 - T0) / 1000) for wall, _ in scalars_in(run_dir / name, "m")
        )

    try:
        engine = MlflowEngine(source, journal)
        log(0)
        report = engine.run_pass()
        assert report.failure is None and report.points == 6, report
        log(1)
        client.delete_run(ids["gone"])

        scripted.set("small_pages", path=SEARCH, times=2, size=2)
        scripted.set("status", path=SEARCH, code=400, body={"error_code": "INTERNAL_ERROR"})
        report = engine.run_pass()
        assert report.failure and "runs/search" in str(report.failure), report
        assert report.points == 4 and report.runs_removed == 0, report
        assert [steps(name) for name in ["r0", "r1", "r2", "r3", "r4"]] == [[0, 1]] * 4 + [[0]]
        assert (run_dir / "gone").is_dir(), "an incomplete listing proves no run gone"

        scripted.clear()
        report = engine.run_pass()
        assert report.failure is None and report.runs_removed == 1, report
        assert report.points == 1, "only r4's new point: the others were written once"
        assert [steps(name) for name in ["r0", "r1", "r2", "r3", "r4"]] == [[0, 1]] * 5
        assert not (run_dir / "gone").exists()
    finally:
        source.close()
        journal.close()


def test_a_run_listed_as_it_was_mirrored_whole_is_not_looked_into_again(
    tmp_path: Path,
    scripted: ScriptedMlflow,
    experiment_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A full pass over unchanged runs reads no cursor and writes nothing; a tag edited, a point
    logged or a reconcile due brings exactly that run back."""
    client = scripted.client()
    experiment_id = client.create_experiment(experiment_name)
    ids = [client.create_run(experiment_id, run_name=f"r{i}").info.run_id for i in range(3)]
    for run_id in ids:
        client.log_batch(run_id, metrics=[Metric("m", 1.0, T0, 0)])
        client.set_terminated(run_id)
    settings = MlflowSourceSettings(name="unchanged", tracking_uri=scripted.url,
                                    experiments=[experiment_name])  # fmt: skip
    journal = Journal.open(MirrorLayout(tmp_path / "root"), tmp_path / "state.db")
    journal.own(settings.name)
    source = source_for(settings, scripted.transport)
    read: list[str] = []
    cursors = journal.cursors
    monkeypatch.setattr(
        journal, "cursors", lambda s, run_id: read.append(run_id) or cursors(s, run_id)
    )
    now = [time.time() + 3600]  # past every run's reconcile after it ended
    try:
        engine = MlflowEngine(source, journal, clock=lambda: now[0])
        assert engine.run_pass().points == 3 and set(read) == set(ids)
        read.clear()
        report = engine.run_pass()
        assert (report.failure, report.bytes_written, read) == (None, 0, []), report

        client.set_tag(ids[0], "note", "edited")
        client.log_batch(ids[1], metrics=[Metric("m", 2.0, T0 + 1000, 1)])
        report = engine.run_pass()
        assert set(read) == set(ids[:2]) and report.points == 1, report
        read.clear()
        assert engine.run_pass().bytes_written == 0 and read == []

        fresh = MlflowEngine(source, journal, clock=lambda: now[0])  # (a restarted daemon)
        report = fresh.run_pass()
        assert (report.bytes_written, report.runs_planned, read) == (0, 0, []), "unchanged"
        client.set_tag(ids[2], "note", "edited")
        report = fresh.run_pass()
        assert report.bytes_written > 0 and report.runs_planned == 1 and read == [ids[2]]
    finally:
        source.close()
        journal.close()


def test_a_listed_runs_fingerprint_is_the_same_in_every_process() -> None:
    """The fingerprint kept in the state store (what a restarted daemon compares a listing
    with) does not depend on the process's hash seed; any change to what is listed changes it."""
    body = {"runs": [{"info": {"run_id": "a", "experiment_id": "1", "status": "FINISHED"},
                      "data": {"metrics": [{"key": "m", "value": 1.5, "timestamp": 5, "step": 2}],
                               "params": [{"key": "lr", "value": "0.1"}],
                               "tags": [{"key": "t", "value": "x"}]}}]}  # fmt: skip
    code = (
        "import json, sys\n"
        "from tbmirror.sources.mlflow.client import run_from_json\n"
        "from tbmirror.sources.responses import RunsPage, parse\n"
        "page = parse(RunsPage, sys.stdin.buffer.read(), 'runs/search')\n"
        "print(run_from_json(page.runs[0]).fingerprint)\n"
    )

    def fingerprint(answer: dict[str, Any], seed: str) -> int:
        done = subprocess.run(
            [sys.executable, "-c", code], input=json.dumps(answer).encode(), capture_output=True,
            env={**os.environ, "PYTHONHASHSEED": seed}, check=True,
        )  # fmt: skip
        return int(done.stdout)

    first = fingerprint(body, "1")
    assert first != 0 and fingerprint(body, "2") == first
    edited = json.loads(json.dumps(body))
    edited["runs"][0]["data"]["metrics"][0]["value"] = 1.25
    assert fingerprint(edited, "3") != first


def test_a_listed_value_that_is_not_a_number_fails_only_its_run() -> None:
    from tbmirror.sources.http import BadAnswerError
    from tbmirror.sources.mlflow.client import run_from_json
    from tbmirror.sources.responses import RunsPage, parse

    body = {"runs": [{"info": {"run_id": "a", "experiment_id": "1"},
                      "data": {"metrics": [{"key": "m", "value": "oops"}]}}]}  # fmt: skip
    run = run_from_json(parse(RunsPage, json.dumps(body).encode(), "runs/search").runs[0])
    assert run.run_id == "a"
    with pytest.raises(BadAnswerError, match=r"not a number \(m\)"):
        dict(run.latest)
