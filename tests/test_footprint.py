"""Memory at scale: what a listing holds while it reads, and what a run record read back holds.

The 100,000-run figures are benchmarks/footprint.py's; these tests pin the mechanisms behind them
at the seams (no server: the pages are bytes, the store a file).
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import subprocess
import sys
import time
import weakref
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tbmirror.config import MlflowSourceSettings, parse_settings
from tbmirror.engine.mlflow.engine import MlflowEngine
from tbmirror.engine.mlflow.selection import PARENT, PRUNE_DECIDED, STATUS, Selection
from tbmirror.journal import Journal
from tbmirror.journal.store import Store
from tbmirror.mirror.layout import MirrorLayout
from tbmirror.model import MetricPoint, RunRecord, RunSnapshot
from tbmirror.sources.http import BadAnswerError
from tbmirror.sources.mlflow import RunListing
from tbmirror.sources.responses import RunsPage, pages
from test_seams import ScriptedRuns

ENDPOINT = "runs/search"


def runs_page(first: int, token: str | None) -> bytes:
    """A runs/search page of two runs (each with a latest metric) and `token`."""
    runs = [
        {"info": {"run_id": f"r{index}", "experiment_id": "1"},
         "data": {"metrics": [{"key": "m", "value": 1.0, "timestamp": 1, "step": 0}]}}
        for index in (first, first + 1)
    ]  # fmt: skip
    return json.dumps({"runs": runs} | ({"next_page_token": token} if token else {})).encode()


def test_a_page_is_not_held_while_the_next_one_is_fetched() -> None:
    """A page's runs keep its body (their metrics are raw JSON in it); once the caller has let
    go of a page, nothing of it is held while the next one is fetched."""
    bodies = [runs_page(0, "t1"), runs_page(2, "t2"), runs_page(4, None)]

    def references() -> list[int]:
        return [sys.getrefcount(bodies[index]) for index in range(len(bodies))]

    alone = references()  # (the list's, and the call's)
    held: list[list[int]] = []

    def fetch(extra: dict[str, str]) -> bytes:
        held.append(references())
        return bodies[{"": 0, "t1": 1, "t2": 2}[extra.get("page_token", "")]]

    seen = []
    for page in pages(fetch, RunsPage, ENDPOINT):
        seen += [run.info.run_id for run in page.runs]
        assert references() != alone, "a page holds its body (its runs' metrics are in it)"
        del page
    assert seen == [f"r{index}" for index in range(6)]
    assert held == [alone] * 3, f"references to the bodies while fetching: {held} ({alone} alone)"


def test_the_same_page_again_is_refused() -> None:
    """A server that answers a page token with the page that carried it (stuck on one page)."""
    body = runs_page(0, "t1")
    with pytest.raises(BadAnswerError, match="the page token t1 repeats"):
        list(pages(lambda extra: body, RunsPage, ENDPOINT))


def test_a_record_read_back_shares_what_many_records_hold(tmp_path: Path) -> None:
    """100,000 records are held: the values they share are one object each, a run's HParams
    session named after it is its name, and a time never set is the one 0.0."""
    store = Store(tmp_path / "state.db")
    try:
        with store.transaction():
            for index in range(2):
                name = f"run{index}"
                record = RunRecord("bench", f"id{index}", "1", None, f"bench/e/{name}", name,
                                   "FINISHED", trial=name, reconciled_at=5.0)  # fmt: skip
                store.put_run(record)
        first, second = store.runs("bench").values()
    finally:
        store.close()
    assert (first.trial, second.trial) == ("run0", "run1")
    assert first.trial is first.name and second.trial is second.name
    assert first.status is second.status and first.experiment_id is second.experiment_id
    assert first.source is second.source
    assert first.artifacts_at is second.artifacts_at == 0.0
    assert first.reconciled_at == 5.0


def test_trial_names_are_looked_up_in_the_store_by_an_index(tmp_path: Path) -> None:
    """A first sync names 100,000 HParams sessions: each name is looked up in the store (with
    an index), not held in a set of them all."""
    store = Store(tmp_path / "state.db")
    try:
        with store.transaction():
            store.put_run(RunRecord("a", "id0", "1", None, "a/e/x", "x", "FINISHED", trial="x"))
            store.put_run(RunRecord("b", "id1", "1", None, "b/e/y", "y", "FINISHED"))
        assert store.trial_taken("x"), "another source's session counts too"
        assert not store.trial_taken("y") and not store.trial_taken("x (id0)")
        plan = store._query("EXPLAIN QUERY PLAN SELECT 1 FROM runs WHERE trial = ?", ("x",))
        assert any("runs_trial" in str(row) for row in plan), plan
    finally:
        store.close()


def test_a_first_syncs_selection_forgets_the_runs_placed_since() -> None:
    """A first sync judges every run (none is mirrored yet): the ids of those the engine placed
    since are forgotten, and a child listed long after its parent still follows it."""
    settings = MlflowSourceSettings(name="s", tracking_uri="http://h",
                                    experiments=["e"], run_statuses=["FINISHED"])  # fmt: skip
    count = 5 * PRUNE_DECIDED

    def run(
        run_id: str, start: int, parent: str | None = None, status: str = "FINISHED"
    ) -> RunSnapshot:
        return RunSnapshot(run_id, "1", run_id, status, "active", start, start, parent)

    runs = [run("failed", 0, status="FAILED"), run("kept", 1)]
    runs += [run(f"r{index:05d}", index + 2) for index in range(count)]
    runs += [run("kid-of-failed", count + 2, "failed"), run("kid-of-kept", count + 3, "kept")]
    placed: set[str] = set()  # the engine's records, as it places each run yielded
    stream = Selection(settings, time.time).stream(runs, True, placed)
    most = 0
    for selected in stream:
        placed.add(selected.run_id)
        most = max(most, len(stream._decided))
    assert "kid-of-kept" in placed and len(placed) == count + 2
    assert stream.out == {"failed": STATUS, "kid-of-failed": PARENT}
    assert most <= 2 * PRUNE_DECIDED, f"{most} decided run ids held at once"


def _footprint_benchmark() -> ModuleType:
    """benchmarks/footprint.py as a module (it imports its neighbour common.py)."""
    benchmarks = Path(__file__).parent.parent / "benchmarks"
    sys.path.insert(0, str(benchmarks))
    try:
        spec = importlib.util.spec_from_file_location("footprint", benchmarks / "footprint.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # (its dataclasses look their module up there)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(benchmarks))
    return module


def synced(
    full: bool, points: int = 0, bytes: int = 0, runs: int = 3, failed: int = 0
) -> dict[str, object]:
    """A `source_synced` event as the daemon logs it."""
    return {"event": "source_synced", "full": full, "points": points, "bytes": bytes,
            "runs": runs, "failed_runs": failed, "planned": 0, "requests": 2,
            "duration_ms": 5}  # fmt: skip


@pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy")  # (mlflow, via common.py)
def test_a_daemon_from_empty_is_caught_up_after_a_full_pass_that_wrote_nothing(
    tmp_path: Path,
) -> None:
    """--daemon-from-empty follows the daemon's passes until a full one after the backfill listed
    every run, failed none and wrote nothing (idle quick passes before it do not count), with the
    peak RSS of a live process."""
    footprint = _footprint_benchmark()
    backfill, quick, wrote = synced(True, 9, 90), synced(False), synced(True, 1, 10)
    assert not footprint.caught_up([backfill], 3)
    assert not footprint.caught_up([backfill, quick, wrote, quick], 3)
    assert not footprint.caught_up([backfill, synced(True, failed=1)], 3)
    assert not footprint.caught_up([backfill, synced(True, runs=2)], 3)
    assert footprint.caught_up([backfill, quick, wrote, synced(True)], 3)
    log_path = tmp_path / "daemon.log"
    lines = [backfill, quick, synced(True)]
    log_path.write_text("not json\n" + "".join(json.dumps(e) + "\n" for e in lines))
    daemon = subprocess.Popen(["sleep", "60"])
    try:
        passes, backfill_peak, peak = footprint.follow_passes(log_path, daemon, 3, 30)
    finally:
        daemon.kill()
        daemon.wait()
    assert passes == lines
    assert 0 < backfill_peak <= peak, (backfill_peak, peak)
    log_path.write_text(json.dumps(backfill) + "\n")
    with pytest.raises(SystemExit, match="the daemon exited"):
        footprint.follow_passes(log_path, subprocess.Popen(["true"]), 3, 30)


def _config(tmp_path: Path) -> str:
    """A config of a mirror in `tmp_path` with one MLflow source "s" (experiment "e")."""
    return (
        f"mirror: {{root: {tmp_path / 'root'}, state: {tmp_path / 'state.db'}}}\n"
        "sources: [{name: s, type: mlflow, tracking_uri: 'http://mlflow.invalid', "
        "experiments: [e], on_delete: remove}]\n"
    )


def _scripted_engine(tmp_path: Path) -> tuple[MlflowEngine, ScriptedRuns, Journal]:
    """An engine on a ScriptedRuns source "s" (experiment "1", "e"), its mirror in tmp_path."""
    settings = parse_settings(_config(tmp_path)).sources[0]
    assert isinstance(settings, MlflowSourceSettings)
    journal = Journal.open(MirrorLayout(tmp_path / "root"), tmp_path / "state.db")
    journal.own(settings.name)
    source = ScriptedRuns(settings)
    return MlflowEngine(source, journal), source, journal


def test_a_pass_lets_go_of_its_listing(tmp_path: Path) -> None:
    """A daemon's full pass after its backfill reads 100,000 runs again: the listing of the pass
    before (with its set of 100,000 listed ids) is not held meanwhile. After a pass, nothing
    holds its listing (the proofs of absence it gathered were for it alone)."""
    engine, source, journal = _scripted_engine(tmp_path)
    listings: list[weakref.ref[RunListing]] = []
    list_runs = source.list_runs

    def listed(*args: Any, **kwargs: Any) -> RunListing:
        listing = list_runs(*args, **kwargs)
        listings.append(weakref.ref(listing))
        return listing

    source.list_runs = listed  # type: ignore[method-assign]
    source.add("a", [MetricPoint(1, 0, 0.5)])
    source.add("b", [MetricPoint(1, 0, 0.5)])
    try:
        for _ in range(2):
            report = engine.run_pass(full=True)
            assert (report.failure, report.runs_listed) == (None, 2), report
            assert listings[-1]() is None, "the pass's listing is held after it"
        del source.runs["b"]
        source.states["b"] = "gone"  # (proven absent: the proofs are gathered for its listing)
        report = engine.run_pass(full=True)
        assert (report.failure, report.runs_removed) == (None, 1), report
        assert listings[-1]() is None, "the pass's listing is held after it"
    finally:
        journal.close()


def test_run_directories_are_looked_up_in_the_store(tmp_path: Path) -> None:
    """Placement holds no set of every run's directory (100,000 of them): a directory taken by
    a run committed in an earlier pass or chunk is found in the store, one placed in the chunk
    being made is held until its batch commits."""
    engine, source, journal = _scripted_engine(tmp_path)
    try:

        def named(run_id: str, name: str) -> RunSnapshot:
            point = MetricPoint(1, 0, 0.5)
            return RunSnapshot(run_id, "1", name, "FINISHED", "active", 1, 2, None,
                               latest={"m": point})  # fmt: skip

        runs = ("a1", "a2", "a3", "b1", "b2")
        source.series.update({(i, "m"): [MetricPoint(1, 0, 0.5)] for i in runs})
        source.runs.update({"a1": named("a1", "same"), "b1": named("b1", "twin")})
        source.runs["b2"] = named("b2", "twin")  # placed in the same chunk as b1, none committed
        assert engine.run_pass().failure is None
        source.runs["a2"], source.runs["a3"] = named("a2", "same"), named("a3", "same")
        assert engine.run_pass().failure is None
        dirs = {run_id: record.dir for run_id, record in engine.placement.records.items()}
        assert dirs == {"a1": "s/e/same", "a2": "s/e/same-a2", "a3": "s/e/same-a3",
                        "b1": "s/e/twin", "b2": "s/e/twin-b2"}, dirs  # fmt: skip
        assert journal.run_dir_taken("s/e/same-a2") and not journal.run_dir_taken("s/e/other")
    finally:
        journal.close()


ALLOCATES = """
import ctypes, sys
from tbmirror import app, config
if len(sys.argv) > 1:  # a process that opens a journal, as `tbmirror run` and `sync` do
    app.open_journal(config.parse_settings(sys.argv[1])).close()
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks",
                "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
page = bytearray(4 << 20)  # a listing page, served by mmap, freed
del page
before = libc.mallinfo2().hblks
pages = [bytearray(1 << 20) for _ in range(4)]
print(libc.mallinfo2().hblks - before)  # of these, the blocks served by mmap
"""


@pytest.mark.skipif(
    not hasattr(ctypes.CDLL(None), "mallinfo2"), reason="the C library is not glibc >= 2.33"
)
def test_a_mirroring_process_hands_large_freed_blocks_back(tmp_path: Path) -> None:
    """Once a 4 MiB block was freed, glibc serves the next 1 MiB blocks from its heap (where
    what they leave stays with the process); in a process that opened a journal, by mmap (handed
    back when freed), unless the operator set glibc's threshold himself."""

    def mmapped(*args: str, **environment: str) -> int:
        result = subprocess.run([sys.executable, "-c", ALLOCATES, *args], capture_output=True,
                                text=True, check=True, env=os.environ | environment)  # fmt: skip
        return int(result.stdout.splitlines()[-1])

    assert (mmapped(), mmapped(_config(tmp_path))) == (0, 4)
    assert mmapped(_config(tmp_path), MALLOC_MMAP_THRESHOLD_=str(8 << 20)) == 0
    tunables = f"glibc.malloc.mmap_threshold={8 << 20}"
    assert mmapped(_config(tmp_path), GLIBC_TUNABLES=tunables) == 0
    assert mmapped(_config(tmp_path), GLIBC_TUNABLES="glibc.pthread.rseq=0") == 4  # another one
