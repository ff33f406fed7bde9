"""The registry of source kinds (tbmirror.app.KINDS) and what the kinds offer, in process: every
kind the schema accepts has a plug-in, and the MLflow kind's engine sends every request through
the httpx transport it is given (a scripted one here: no server is needed for what is asserted)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import get_args

import httpx
import pytest

from tbmirror.app import KINDS
from tbmirror.config import SourceSettings, parse_settings
from tbmirror.errors import TbmirrorError
from tbmirror.journal import Journal
from tbmirror.kinds.base import Registry, Schedule
from tbmirror.kinds.mlflow import build_engine
from tbmirror.mirror.layout import MirrorLayout

CONFIG = """
mirror: {root: /srv/root, state: /srv/state.db}
sources:
  - {name: tracked, type: mlflow, tracking_uri: "http://user:pw@mlflow.example:5000",
     experiments: ["team-*"], full_listing_interval: 5m, poll_interval: 20s}
  - {name: jobs, type: uploads, path: /srv/uploads, rescan_interval: 45s}
"""


def _sources() -> list[SourceSettings]:
    return list(parse_settings(CONFIG).sources)


def test_every_kind_the_schema_accepts_has_a_plugin() -> None:
    models = get_args(SourceSettings)
    assert len(models) >= 2
    sources = _sources()
    assert {type(source) for source in sources} == set(models)  # CONFIG has one of each kind
    for source in sources:
        assert KINDS.of(source).settings is type(source)


def test_a_kind_answers_for_its_sources() -> None:
    tracked, jobs = _sources()
    assert KINDS.location(tracked) == "http://mlflow.example:5000"  # no user:password@
    assert KINDS.location(jobs) == "/srv/uploads"
    assert KINDS.schedule(tracked) == Schedule(20.0, 300.0)
    assert KINDS.schedule(jobs) == Schedule(45.0, 0.0)  # every rescan is full
    assert KINDS.link_base(tracked) == "http://mlflow.example:5000"
    assert KINDS.link_base(jobs) is None
    assert KINDS.owns_experiment(tracked, "team-a") and not KINDS.owns_experiment(tracked, "b")
    assert KINDS.owns_experiment(jobs, "anything")


def test_a_source_of_an_unregistered_kind_is_an_error() -> None:
    tracked, _ = _sources()
    with pytest.raises(TbmirrorError, match="source 'tracked': no kind is registered"):
        Registry().of(tracked)


def test_the_mlflow_engine_sends_every_request_through_its_transport(tmp_path: Path) -> None:
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        if request.url.path.endswith("/experiments/search"):
            page = {"experiments": [{"experiment_id": "1", "name": "team-a"}]}
            return httpx.Response(200, content=json.dumps(page))
        return httpx.Response(200, content=b"{}")  # MLflow's empty page

    tracked, _ = _sources()
    journal = Journal.open(MirrorLayout(tmp_path / "root"), tmp_path / "state.db")
    try:
        journal.own(tracked.name)
        engine = build_engine(tracked, journal, transport=httpx.MockTransport(answer))
        try:
            report = engine.run_pass()
        finally:
            engine.close()
    finally:
        journal.close()
    assert report.failure is None, report.failure
    assert "POST /api/2.0/mlflow/experiments/search" in seen, seen
    assert "POST /api/2.0/mlflow/runs/search" in seen, seen
