"""Proofs of absence need a control (issue 28, defects 4 and 5), and a refused history page size
falls back to one the server accepts.

`Gateway` is an in-process MLflow at the httpx seam (a fake at the transport: these are logic
cases; the real server behind the fault proxy is tested in test_hostile_sources.py). It evaluates
only the filters tbmirror sends: a run id (`=` or `IN`), the parent tag, and one `params.k = 'v'`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog

from tbmirror.config import MlflowSourceSettings
from tbmirror.engine.mlflow.engine import MlflowEngine
from tbmirror.journal import Journal
from tbmirror.kinds.mlflow import build_engine
from tbmirror.mirror.layout import MirrorLayout

T0 = 1_700_000_000_000
API = "/api/2.0/mlflow"


class Gateway:
    """Answers MLflow's REST calls from `runs` (run id -> {"start", "params", "metric"}).
    `empty` answers `{}` to every runs/search; searches leave out the runs in `withheld` (an
    answer cut short without a next_page_token); `max_history` refuses larger get-history pages
    as Azure ML once did."""

    def __init__(self) -> None:
        self.runs: dict[str, dict[str, Any]] = {}
        self.empty = False
        self.withheld: set[str] = set()
        self.max_history: int | None = None
        self.history_sizes: list[int] = []

    def add(self, run_id: str, start: int, metric: int = 0, **params: str) -> None:
        self.runs[run_id] = {"start": T0 + start, "params": params, "metric": metric}

    def _json(self, run_id: str) -> dict[str, Any]:
        run = self.runs[run_id]
        info = {"run_id": run_id, "experiment_id": "1", "run_name": run_id, "status": "FINISHED",
                "start_time": run["start"], "end_time": run["start"]}  # fmt: skip
        params = [{"key": k, "value": v} for k, v in run["params"].items()]
        metrics = [{"key": "m", "value": 1.0, "timestamp": T0, "step": i}
                   for i in range(run["metric"])][-1:]  # fmt: skip
        return {"info": info, "data": {"params": params, "tags": [], "metrics": metrics}}

    def _matches(self, run_id: str, query: str) -> bool:
        if "IS NOT NULL" in query:  # every run here is top-level
            return False
        ids = re.search(r"run_id (?:= '([^']+)'|IN \(([^)]*)\))", query)
        if ids and run_id not in re.findall(r"[\w-]+", ids.group(1) or ids.group(2)):
            return False
        param = re.search(r"params\.(\w+) = '([^']*)'", query)
        return not param or self.runs[run_id]["params"].get(param.group(1)) == param.group(2)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix(API)
        if path == "/experiments/get-by-name":
            return httpx.Response(200, json={"experiment": {"experiment_id": "1", "name": "e"}})
        if path == "/experiments/search":
            return httpx.Response(200, json={"experiments": [{"experiment_id": "1", "name": "e"}]})
        if path == "/runs/search":
            if self.empty:
                return httpx.Response(200, json={})
            query = json.loads(request.content)["filter"]
            found = sorted((r for r in self.runs if self._matches(r, query)),
                           key=lambda r: self.runs[r]["start"])  # fmt: skip
            shown = [self._json(r) for r in found if r not in self.withheld]
            return httpx.Response(200, json={"runs": shown})
        if path == "/runs/get":
            run_id = request.url.params["run_id"]
            if run_id not in self.runs:
                error = {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no such run"}
                return httpx.Response(404, json=error)
            return httpx.Response(200, json={"run": self._json(run_id)})
        if path == "/metrics/get-history":
            size = int(request.url.params["max_results"])
            self.history_sizes.append(size)
            if self.max_history is not None and size > self.max_history:
                message = f"MaxResults must be less than {self.max_history}"
                return httpx.Response(400, json={"error_code": "BAD_REQUEST", "message": message})
            count = self.runs[request.url.params["run_id"]]["metric"]
            points = [{"key": "m", "value": 1.0, "timestamp": T0, "step": i} for i in range(count)]
            return httpx.Response(200, json={"metrics": points})
        if path.endswith("/get-history-bulk"):
            return httpx.Response(404, json={"error_code": "ENDPOINT_NOT_FOUND"})
        if path == "/artifacts/list":
            return httpx.Response(200, json={})
        return httpx.Response(404, json={"error_code": "ENDPOINT_NOT_FOUND"})


class Mirrored:
    """A gateway and the engine of one source reading it, over a root with an archive."""

    def __init__(self, tmp_path: Path, **settings: Any) -> None:
        self.gateway = Gateway()
        self.root, self.archive = tmp_path / "root", tmp_path / "archive"
        self.journal = Journal.open(MirrorLayout(self.root, self.archive), tmp_path / "state.db")
        source = MlflowSourceSettings(name="s", tracking_uri="http://mlflow.invalid",
                                      experiments=["e"], **settings)  # fmt: skip
        self.journal.own(source.name)
        self.engine: MlflowEngine = build_engine(
            source, self.journal, transport=httpx.MockTransport(self.gateway)
        )

    def in_root(self) -> list[str]:
        return sorted(p.name for p in (self.root / "s" / "e").iterdir())

    def in_archive(self) -> list[str]:
        folder = self.archive / "s" / "e"
        return sorted(p.name for p in folder.iterdir()) if folder.exists() else []

    def close(self) -> None:
        self.engine.close()
        self.journal.close()


@pytest.fixture
def mirrored(tmp_path: Path) -> Iterator[Any]:
    made: list[Mirrored] = []

    def make(**settings: Any) -> Mirrored:
        made.append(Mirrored(tmp_path / str(len(made)), **settings))
        return made[-1]

    yield make
    for each in made:
        each.close()


def test_an_empty_answer_to_every_search_retires_nothing(mirrored: Any) -> None:
    """Defect 5: a filtered search that answers `{}` proves nothing unless the same search
    without the filter finds the run; a gateway answering `{}` to every runs/search (runs/get
    still answering: the runs exist) leaves the mirror as it was."""
    m = mirrored(filter="params.keep = 'yes'")
    for run_id, start in [("a", 1), ("b", 2), ("c", 3)]:
        m.gateway.add(run_id, start, keep="yes")
    report = m.engine.run_pass()
    assert (report.failure, m.in_root()) == (None, ["a", "b", "c"]), report
    m.gateway.empty = True
    for _ in range(2):
        report = m.engine.run_pass()
        assert (report.runs_retired, report.runs_removed) == (0, 0), report
        assert (m.in_root(), m.in_archive()) == (["a", "b", "c"], []), report


def test_a_run_that_left_the_filter_is_still_retired(mirrored: Any) -> None:
    """The honest case: the search without the filter finds the run, the filtered one does not."""
    m = mirrored(filter="params.keep = 'yes'")
    m.gateway.add("a", 1, keep="yes")
    m.gateway.add("b", 2, keep="yes")
    assert m.engine.run_pass().failure is None and m.in_root() == ["a", "b"]
    m.gateway.runs["a"]["params"]["keep"] = "no"
    report = m.engine.run_pass()
    assert (report.failure, report.runs_retired) == (None, 1), report
    assert (m.in_root(), m.in_archive()) == (["b"], ["a"])


def test_max_runs_admits_no_run_a_cut_listing_makes_look_recent(mirrored: Any) -> None:
    """Defect 4: with `max_runs: 2`, a search answer cut to its oldest run (no next_page_token)
    must not admit it next to the two newer mirrored runs; nothing outside the selection ever
    reaches the archive, and the newest runs stay."""
    m = mirrored(max_runs=2)
    for run_id, start in [("old", 1), ("b", 2), ("c", 3)]:
        m.gateway.add(run_id, start)
    assert m.engine.run_pass().failure is None and m.in_root() == ["b", "c"]
    m.gateway.withheld = {"b", "c"}
    report = m.engine.run_pass()
    assert (report.failure, m.in_root()) == (None, ["b", "c"]), report
    m.gateway.withheld = set()
    report = m.engine.run_pass()
    assert (report.failure, m.in_root(), m.in_archive()) == (None, ["b", "c"], []), report


def test_a_quick_listing_admits_no_run_older_than_max_runs_kept(mirrored: Any) -> None:
    """A quick listing (it holds running runs, whatever their age) does not let in a run the last
    complete listing put past `max_runs`, so it never reaches the archive; a newer run comes in
    at once."""
    m = mirrored(max_runs=2)
    for run_id, start in [("old", 1), ("b", 2), ("c", 3)]:
        m.gateway.add(run_id, start)
    assert m.engine.run_pass().failure is None and m.in_root() == ["b", "c"]
    m.gateway.add("d", 4)
    report = m.engine.run_pass(full=False)  # (this gateway lists every run in a quick listing)
    assert (report.failure, m.in_root()) == (None, ["b", "c", "d"]), report
    report = m.engine.run_pass()
    assert (report.failure, m.in_root(), m.in_archive()) == (None, ["c", "d"], ["b"]), report


def test_max_runs_still_admits_a_newer_run_and_retires_the_oldest(mirrored: Any) -> None:
    """The honest cases: a newer run enters even while the listing is cut to it, the oldest
    mirrored run leaves at the next complete listing, and a mirrored run the server says does
    not exist makes room."""
    m = mirrored(max_runs=2)
    m.gateway.add("a", 1)
    m.gateway.add("b", 2)
    assert m.engine.run_pass().failure is None and m.in_root() == ["a", "b"]
    m.gateway.add("c", 3)
    m.gateway.withheld = {"a", "b"}
    report = m.engine.run_pass()  # (a and b, absent, are asked about by runs/get)
    assert (report.failure, m.in_root()) == (None, ["a", "b", "c"]), report
    m.gateway.withheld = set()
    report = m.engine.run_pass()
    assert (report.failure, m.in_root(), m.in_archive()) == (None, ["b", "c"], ["a"]), report
    del m.gateway.runs["c"]  # gone from the server (on_delete: remove): d may enter
    m.gateway.add("d", 4)
    report = m.engine.run_pass()
    assert (report.failure, m.in_root()) == (None, ["b", "d"]), report


def test_a_refused_history_page_size_falls_back_once(mirrored: Any) -> None:
    """Azure ML once answered get-history's max_results=25000 with 400 "MaxResults must be less
    than 1000" (mlflow/mlflow#10694): the source falls back to a size the server accepts, keeps
    it for later requests, and says so once."""
    m = mirrored(concurrency=1)  # (one request at a time: the sizes asked come in order)
    m.gateway.max_history = 999
    m.gateway.add("a", 1, metric=3)
    m.gateway.add("b", 2, metric=2)
    with structlog.testing.capture_logs() as logs:
        report = m.engine.run_pass()
    assert (report.failure, report.failed_runs, report.points) == (None, [], 5), report
    refused = [e["refused"] for e in logs if e["event"] == "history_page_size_refused"]
    assert refused == [25000, 1000], logs  # each refused size said once
    sizes = m.gateway.history_sizes
    assert (sizes.count(25000), sizes.count(1000), set(sizes[2:])) == (1, 1, {500}), sizes
    m.gateway.add("c", 3, metric=1)
    report = m.engine.run_pass()
    assert (report.failure, report.points, m.gateway.history_sizes[-1]) == (None, 1, 500), report
