"""Hostile answers of an MLflow server (issue 10, rules 1 and 2) that need no TCP peer, in-process
against a scripted MLflow (helpers/scripted_mlflow.py, held to a real server by
test_scripted_mlflow.py) with the same faults as the hostile proxy; the faults of the connection
and the bounds of a real process (memory, time, signals) stay in test_hostile_sources.py.

1. An answer is data only if it has the expected shape; a run is removed only on proof.
2. Artifact bytes come only from a proper answer; a bad one never removes the committed copy.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from conftest import new_run
from helpers import in_process
from helpers.scripted_mlflow import ScriptedMlflow
from test_hostile_sources import (
    ARTIFACT,
    BUSY,
    GET_RUN,
    HISTORY,
    SEARCH,
    ProxiedSource,
    events_files,
    log_points,
    make_runs,
    mirrored_points,
    mlflow_points,
    output_of,
)
from test_source_failures import snapshot
from test_uploads import write_tfevents


class ScriptedSource(ProxiedSource):
    """This test's MLflow source on a ScriptedMlflow, mirrored by an in-process `tbmirror sync`."""

    def __init__(
        self, directory: Path, root: Path, name: str, experiment: str, server: ScriptedMlflow
    ) -> None:
        super().__init__(directory, root, name, experiment, server)  # type: ignore[arg-type]
        self.server = server

    def sync(self, limit: float = 120, **overrides: Any) -> subprocess.CompletedProcess[str]:
        return in_process.sync(self.write(**overrides), self.server.transport)


@pytest.fixture
def source(
    tmp_path: Path, scripted: ScriptedMlflow, source_name: str, experiment_name: str
) -> ScriptedSource:
    (tmp_path / "mirror").mkdir()
    return ScriptedSource(tmp_path, tmp_path / "mirror", source_name, experiment_name, scripted)


# -- rule 1: the shape of an answer; removal only on proof ------------------------------------

WRONG_SHAPES = {
    "gateway-message": BUSY,
    "not-an-object": [{"runs": []}],
    "runs-not-a-list": {"runs": "x"},
    "run-without-info": {"runs": [{"data": {}}]},
}


@pytest.mark.parametrize("body", WRONG_SHAPES.values(), ids=WRONG_SHAPES.keys())
def test_a_wrong_shape_listing_fails_the_pass_and_removes_nothing(
    body: Any, scripted: ScriptedMlflow, source: ScriptedSource
) -> None:
    make_runs(scripted.client(), source.experiment, ["r0", "r1", "r2"])
    assert source.sync().returncode == 0
    mirrored = source.tree()
    for name in ("r0", "r1", "r2"):
        assert len(events_files(source.run_dir(name))) == 1

    rule = scripted.set("wrong_shape", path=SEARCH, body=body)
    result = source.sync()
    assert rule.hits >= 1
    assert result.returncode == 1, output_of(result)
    assert "runs/search" in source.fail_line(result.stdout)
    assert "Traceback" not in result.stderr
    assert source.tree() == mirrored, "a wrong-shape listing must not change the mirror"

    scripted.clear()
    result = source.sync()
    assert result.returncode == 0 and ", 0 points, 0 bytes, " in result.stdout, output_of(result)


@pytest.mark.parametrize(
    "body", [BUSY, {"metrics": "x"}], ids=["gateway-message", "metrics-not-a-list"]
)
def test_a_wrong_shape_history_fails_the_run_and_loses_no_point(
    body: Any, scripted: ScriptedMlflow, source: ScriptedSource
) -> None:
    """Today such an answer reads as "no new points": they are never mirrored (and the daemon's
    next reconcile writes the series twice)."""
    client = scripted.client()
    run_id = make_runs(client, source.experiment, ["r0"])["r0"]
    assert source.sync().returncode == 0
    log_points(client, run_id, 5, start=5)
    rule = scripted.set("wrong_shape", path=f"{HISTORY}.*run_id={run_id}", body=body)
    result = source.sync()
    assert rule.hits >= 1
    assert result.returncode == 1, output_of(result)
    assert run_id in source.fail_line(result.stdout), "the run is among the failed runs"
    assert "Traceback" not in result.stderr

    scripted.clear()
    result = source.sync()
    assert result.returncode == 0, output_of(result)
    assert mirrored_points(source.run_dir("r0"), "m") == mlflow_points(client, run_id, "m")


def test_a_listed_run_whose_metrics_are_of_the_wrong_shape_fails_alone(
    scripted: ScriptedMlflow, source: ScriptedSource
) -> None:
    """A listing's metrics are validated as each run is looked into: one run's garbled metrics
    fail that run, not the page, and lose none of its points."""
    client = scripted.client()
    ids = make_runs(client, source.experiment, ["bad", "good"])
    rule = scripted.set("garble_metrics", path=SEARCH, run_ids=[ids["bad"]])
    result = source.sync()
    assert rule.hits >= 1
    assert result.returncode == 1, output_of(result)
    assert ids["bad"] in source.fail_line(result.stdout) and ids["good"] not in result.stdout
    assert "a run's metrics: an answer of the wrong shape" in result.stderr
    assert "Traceback" not in result.stderr
    assert mirrored_points(source.run_dir("good"), "m") == mlflow_points(client, ids["good"], "m")

    scripted.clear()
    assert source.sync().returncode == 0
    assert mirrored_points(source.run_dir("bad"), "m") == mlflow_points(client, ids["bad"], "m")


def test_an_empty_page_is_valid_but_proves_no_run_gone(
    scripted: ScriptedMlflow, source: ScriptedSource
) -> None:
    """`{}` is what MLflow sends for an experiment without runs: no error, but not evidence."""
    client = scripted.client()
    client.create_experiment(f"{source.experiment}-empty")
    empty = ScriptedSource(
        source.config.parent / "empty", source.root, f"{source.name}-e",
        f"{source.experiment}-empty", scripted,
    )  # fmt: skip
    empty.config.parent.mkdir()
    result = empty.sync()
    assert result.returncode == 0 and ": 0 runs, " in result.stdout, output_of(result)

    make_runs(client, source.experiment, ["r0", "r1"])
    assert source.sync().returncode == 0
    mirrored = source.tree()
    rule = scripted.set("wrong_shape", path=SEARCH, body={})
    result = source.sync()
    assert rule.hits >= 1
    assert result.returncode == 0, output_of(result)
    assert source.tree() == mirrored, "runs missing from a listing are no proof they are gone"
    # nor is an empty filtered search, when the same search without the filter is empty too
    result = source.sync(filter="attributes.run_name LIKE 'r%'")
    assert source.tree() == mirrored, output_of(result)
    assert "neither with the filter nor without it" in output_of(result), output_of(result)


def test_only_proof_removes_a_run(scripted: ScriptedMlflow, source: ScriptedSource) -> None:
    """A run missing from the listing stays unless runs/get shows it deleted or answers 404
    RESOURCE_DOES_NOT_EXIST as JSON; a bare or HTML 404 proves nothing."""
    client = scripted.client()
    names = ["alive_hidden", "bare_404", "html_404", "deleted_listed", "deleted_hidden",
             "json_404", "shown"]  # fmt: skip
    ids = make_runs(client, source.experiment, names)
    assert source.sync().returncode == 0
    kept = ["alive_hidden", "bare_404", "html_404", "shown"]
    before = {name: snapshot(source.run_dir(name)) for name in kept}
    assert all(before.values())

    client.delete_run(ids["deleted_listed"])
    client.delete_run(ids["deleted_hidden"])
    hidden = ["alive_hidden", "bare_404", "html_404", "deleted_hidden", "json_404"]
    scripted.set("drop_runs", path=SEARCH, run_ids=[ids[name] for name in hidden])
    scripted.set("status", path=f"{GET_RUN}.*{ids['bare_404']}", code=404)
    scripted.set("status", path=f"{GET_RUN}.*{ids['html_404']}", code=404,
              body="<html><body><h1>404 Not Found</h1>nginx</body></html>")  # fmt: skip
    scripted.set("status", path=f"{GET_RUN}.*{ids['json_404']}", code=404, body={
        "error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"Run '{ids['json_404']}' not found"
    })  # fmt: skip
    result = source.sync()
    for name in kept:
        assert snapshot(source.run_dir(name)) == before[name], f"{name} must be kept unchanged"
    for name in ("deleted_listed", "deleted_hidden", "json_404"):
        assert not source.run_dir(name).exists(), f"{name} is proven gone: {output_of(result)}"

    scripted.clear()
    result = source.sync()
    assert result.returncode == 0, output_of(result)
    for name in kept:
        assert snapshot(source.run_dir(name)) == before[name], f"{name} written again"


# -- rule 2: artifact bytes only from a proper answer -----------------------------------------


@pytest.mark.parametrize("fault", ["redirect", "html", "short_body"])
def test_a_bad_artifact_answer_fails_the_run_and_keeps_the_committed_copy(
    fault: str,
    tmp_path: Path,
    scripted: ScriptedMlflow,
    source: ScriptedSource,
) -> None:
    client = scripted.client()
    run_id = new_run(client, source.experiment, "job")  # stays RUNNING: looked at every pass
    log_points(client, run_id, 1)
    local = tmp_path / "job" / "events.out.tfevents.1.job"
    first = write_tfevents(local, [float(i) for i in range(300)])
    client.log_artifact(run_id, str(local), "tb")
    assert source.sync().returncode == 0
    copies = source.run_dir("job", "tb")
    committed = snapshot(copies)
    assert [(name, data) for name, (data, _) in committed.items()] == [(local.name, first)]

    grown = write_tfevents(local, [float(i) for i in range(600)])  # the same 300, and 300 more
    assert grown.startswith(first)
    client.log_artifact(run_id, str(local), "tb")
    rule = scripted.set(fault, path=ARTIFACT)
    result = source.sync()
    assert rule.hits >= 1
    assert result.returncode == 1, output_of(result)
    assert run_id in source.fail_line(result.stdout), "the run is among the failed runs"
    assert snapshot(copies) == committed, f"a {fault} answer must not touch the committed copy"

    scripted.clear()
    before = len(scripted.requests)
    result = source.sync()
    assert result.returncode == 0, output_of(result)
    assert [(p.name, p.read_bytes()) for p in copies.iterdir()] == [(local.name, grown)]
    downloads = [s for s in scripted.requests[before:] if re.search(ARTIFACT, s.target)]
    assert downloads and all(s.status == 206 and s.range for s in downloads), downloads
    assert sum(s.bytes for s in downloads) <= len(grown) - len(first) + 2048, "downloaded again"
