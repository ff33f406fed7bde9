"""Artifact listings without a run read on the server: a run whose artifact root is in the
server's own store (`mlflow-artifacts:/...`, `mlflow server`'s default) is listed through
`mlflow-artifacts/artifacts`, for which MLflow reads no run, instead of `artifacts/list`, for
which it reads the run (its latest metrics, params and tags) for every folder. Same files either
way; a server or gateway that does not serve the endpoint makes the source fall back for good.

The first test runs against a real `mlflow server` serving artifacts, the others at the httpx
seam (helpers/scripted_mlflow.py). Requests are counted by a transport in the test process.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog.testing
from msgspec.structs import replace
from tensorboard.compat.proto.event_pb2 import Event

from conftest import MlflowServer, mlflow_source, new_run, write_config
from helpers import in_process
from helpers.scripted_mlflow import ScriptedMlflow
from tbmirror.config import ArtifactSettings, MlflowSourceSettings
from tbmirror.engine.mlflow.engine import MlflowEngine
from tbmirror.journal import Journal
from tbmirror.mirror import events
from tbmirror.mirror.layout import MirrorLayout
from tbmirror.model import RunSnapshot
from tbmirror.sources.mlflow.artifacts import MlflowArtifacts
from tbmirror.sources.mlflow.client import SERVED_ARTIFACTS, run_from_json
from tbmirror.sources.responses import RunsPage, parse
from tbmirror.sources.stores import RunRef
from test_media import picture
from test_uploads import write_tfevents

LIST = "/api/2.0/mlflow/artifacts/list"
FALLBACK = "served_artifacts_unavailable"


class Counting(httpx.BaseTransport):
    """Sends requests to the network (or to `inner`), noting each one's path; with `refused`,
    answers that status itself to every request for the server's own store (a gateway that
    exposes only /api/2.0/mlflow/)."""

    def __init__(self, inner: httpx.BaseTransport | None = None, refused: int | None = None):
        self.inner = inner or httpx.HTTPTransport()
        self.refused = refused
        self.paths: list[str] = []
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            self.paths.append(request.url.path)
        if self.refused and request.url.path.startswith(SERVED_ARTIFACTS):
            page = "<html><body>not here</body></html>"
            return httpx.Response(self.refused, html=page, headers={"Location": "/login"})
        return self.inner.handle_request(request)

    def count(self, path: str) -> int:
        return sum(found.startswith(path) for found in self.paths)

    def close(self) -> None:
        self.inner.close()


@pytest.fixture(scope="module")
def served_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real `mlflow server` as MLflow starts one by default: runs' artifacts in its own store."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-served"), serve_artifacts=True).start()
    yield server
    server.stop()


def mirrored(root: Path) -> dict[str, list[bytes]]:
    """Every directory of the mirror holding events files -> its events in file order, without
    their wall times and file_version records (the only parts two syncs may write apart)."""
    found: dict[str, list[bytes]] = {}
    for path in sorted(root.rglob("*tfevents*")):
        kept = found.setdefault(str(path.parent.relative_to(root)), [])
        for record in events.iter_records(path.read_bytes()):
            event = Event.FromString(record.payload)
            if not event.HasField("file_version"):
                event.wall_time = 0
                kept.append(event.SerializeToString())
    return found


def sync(tmp_path: Path, name: str, url: str, experiment: str, transport: Counting) -> str:
    """One in-process `tbmirror sync` into its own root under `tmp_path`; its log."""
    (tmp_path / name).mkdir()
    config = write_config(
        tmp_path / name / "tbmirror.yaml",
        tmp_path / name / "mirror",
        [mlflow_source("src", url, [experiment])],
    )
    result = in_process.sync(config, transport)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stderr


@pytest.mark.e2e  # (a real mlflow server: served_server)
def test_a_served_store_is_listed_without_artifacts_list_and_mirrors_the_same(
    tmp_path: Path, served_server: MlflowServer, experiment_name: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    client = served_server.client()
    run_id = new_run(client, experiment_name, "trainer")
    assert client.get_run(run_id).info.artifact_uri.startswith("mlflow-artifacts:/")
    client.log_metric(run_id, "loss", 0.5, step=1)
    logs = tmp_path / "logs"
    write_tfevents(logs / "tb" / "events.out.tfevents.1.host", [0.1, 0.2, 0.3])
    write_tfevents(logs / "tb" / "eval" / "events.out.tfevents.2.host", [0.9, 0.8])
    write_tfevents(logs / "tb" / "eval" / "deep" / "deeper" / "events.out.tfevents.3.h", [1.0])
    client.log_artifacts(run_id, str(logs))
    client.log_image(run_id, picture(1), key="pred", step=3)
    client.log_image(run_id, picture(2), key="pred", step=5)
    figure, axes = plt.subplots(figsize=(2, 2))
    axes.plot([1, 3, 2])
    client.log_figure(run_id, figure, "plots/curve.png")
    client.log_table(run_id, {"alpha": [0.1, 0.2], "mse": [3.5, 2.25]}, "eval.json")
    client.set_terminated(run_id)

    served = Counting()
    served_log = sync(tmp_path, "served", served_server.url, experiment_name, served)
    assert served.count(LIST) == 0, served.paths
    assert served.count(SERVED_ARTIFACTS) >= 5, served.paths  # the root, tb/, tb/eval, ...
    assert FALLBACK not in served_log

    listed = Counting(refused=404)  # a gateway before the same server: artifacts/list
    listed_log = sync(tmp_path, "listed", served_server.url, experiment_name, listed)
    assert listed.count(LIST) >= 5 and listed.count(SERVED_ARTIFACTS) == 1, listed.paths
    assert listed_log.count(FALLBACK) == 1, listed_log

    ours, theirs = (
        mirrored(tmp_path / "served" / "mirror"),
        mirrored(tmp_path / "listed" / "mirror"),
    )
    assert ours == theirs
    run_dir = f"src/{experiment_name}/trainer"
    # Tailed: tb/ and tb/eval/ (deep/deeper/ is past max_depth), and the run's own file with
    # its metric, the image series, the figure and the table.
    assert sorted(ours) == [run_dir, f"{run_dir}/tb", f"{run_dir}/tb/eval"], sorted(ours)
    tags = {
        value.tag for record in ours[run_dir] for value in Event.FromString(record).summary.value
    }
    assert {"loss", "pred", "plots/curve.png", "eval.json (table)"} <= tags, tags
    assert len(ours[f"{run_dir}/tb"]) == 3 and len(ours[f"{run_dir}/tb/eval"]) == 2


def scripted_settings(**artifacts: Any) -> MlflowSourceSettings:
    return MlflowSourceSettings(name="s", tracking_uri=ScriptedMlflow.url,
                                experiments=["e"], max_retries=0,
                                artifacts=ArtifactSettings(**artifacts))  # fmt: skip


def test_a_gateway_refusing_the_store_makes_the_source_list_runs_the_old_way_said_once(
    tmp_path: Path,
) -> None:
    scripted = ScriptedMlflow()
    client = scripted.client()
    runs = [new_run(client, "e", f"run{index}") for index in range(3)]
    sizes = []
    for index, run_id in enumerate(runs):
        tfevents = tmp_path / f"{index}" / "tb" / "events.out.tfevents.1.h"
        sizes.append(len(write_tfevents(tfevents, [1.0] * (index + 1))))
        client.log_artifacts(run_id, str(tmp_path / f"{index}"))
        client.log_text(run_id, "x", "notes/readme.txt")

    def listed(refused: int | None) -> tuple[dict[str, list[tuple[str, int | None]]], Counting]:
        transport = Counting(scripted.transport, refused)
        source = in_process.source_for(scripted_settings(), transport)
        try:
            refs = {RunRef(r, "1", f"mlflow-artifacts:/scripted/1/{r}/artifacts"): False
                    for r in runs}  # fmt: skip
            found = source.artifacts_of(refs)
        finally:
            source.close()
        files = {r: [(a.path, a.size) for a in found[r]] for r in runs}  # type: ignore[union-attr]
        return files, transport

    expected, served = listed(None)
    assert served.count(LIST) == 0 and served.count(SERVED_ARTIFACTS) == 9, served.paths
    assert expected[runs[2]] == [("notes/readme.txt", 1), ("tb/events.out.tfevents.1.h", sizes[2])]
    for status in (404, 405, 501, 401, 403, 302, 200):  # (302 and 200: HTML, as a gateway's)
        with structlog.testing.capture_logs() as logged:
            files, fallen = listed(status)
        assert files == expected, status
        said = [e for e in logged if e["event"] == FALLBACK]
        assert len(said) == 1 and ("HTML" if status == 200 else f"{status}") in said[0]["error"]
        # Each thread may have asked once before the first refusal was heard; never again.
        assert fallen.count(SERVED_ARTIFACTS) <= 3 and fallen.count(LIST) == 9, fallen.paths


def test_mlflows_no_serve_artifacts_503_falls_back_and_a_busy_503_is_retried() -> None:
    scripted = ScriptedMlflow()
    client = scripted.client()
    run_id = new_run(client, "e", "r")
    client.log_text(run_id, "x", "a.txt")
    ref = RunRef(run_id, "1", f"mlflow-artifacts:/scripted/1/{run_id}/artifacts")
    text = "Endpoint: /api/2.0/mlflow-artifacts/artifacts disabled due to the mlflow server "
    scripted.set("status", path="mlflow-artifacts", code=503,
                 body=text + "running with `--no-serve-artifacts`.")  # fmt: skip
    store = in_process.source_for(scripted_settings(), scripted.transport).store
    assert isinstance(store, MlflowArtifacts)
    assert [a.path for a in store.files(ref, False)] == ["a.txt"] and not store.served
    scripted.clear()
    scripted.set("status", path="mlflow-artifacts", code=503, times=1, body="busy")
    settings = replace(scripted_settings(), max_retries=2)
    store = in_process.source_for(settings, scripted.transport).store
    assert isinstance(store, MlflowArtifacts)
    assert [a.path for a in store.files(ref, False)] == ["a.txt"] and store.served
    assert [s.status for s in scripted.seen("mlflow-artifacts")][-2:] == [503, 200]


@pytest.mark.parametrize("served", [True, False])
def test_hostile_entries_are_refused_alike_by_both_listings(served: bool) -> None:
    scripted = ScriptedMlflow()
    client = scripted.client()
    run_id = new_run(client, "e", "r")
    client.log_text(run_id, "x", "ok.txt")
    names = ["..", ".", "", "a/b", "x\x00y", "ok.txt"]
    entries = [{"path": name, "is_dir": False, "file_size": 1} for name in names]
    if not served:  # artifacts/list names each entry by its path from the run's root
        entries += [{"path": p, "is_dir": True} for p in ("../up", "tb/../x", "/abs")]
    else:
        entries += [{"path": "..", "is_dir": True}, {"path": "a/b", "is_dir": True}]
    scripted.set("wrong_shape", path="mlflow-artifacts" if served else "artifacts/list",
                 body={"files": entries})  # fmt: skip
    store = in_process.source_for(scripted_settings(), scripted.transport).store
    assert isinstance(store, MlflowArtifacts)
    uri = f"mlflow-artifacts:/scripted/1/{run_id}/artifacts" if served else None
    with structlog.testing.capture_logs() as logged:
        found = store.files(RunRef(run_id, "1", uri), False)
    assert [a.path for a in found] == ["ok.txt"]
    refused = [e["entry"] for e in logged if e["event"] == "artifact_entry_refused"]
    assert len(refused) == len(entries) - 1, refused
    assert len(scripted.seen("mlflow-artifacts" if served else "artifacts/list")) == 1


@pytest.mark.parametrize(
    ("uri", "root"),
    [
        ("mlflow-artifacts:/1/abc/artifacts", "1/abc/artifacts"),
        ("mlflow-artifacts://mlflow.scripted/1/abc/artifacts", "1/abc/artifacts"),
        ("mlflow-artifacts://mlflow.scripted:80/1/abc/artifacts", "1/abc/artifacts"),
        ("mlflow-artifacts://elsewhere:5000/1/abc/artifacts", None),
        ("mlflow-artifacts://mlflow.scripted:8080/1/abc/artifacts", None),
        ("mlflow-artifacts://mlflow.scripted:port/1/abc/artifacts", None),
        ("mlflow-artifacts:/1/../abc/artifacts", None),
        ("mlflow-artifacts:/", None),
        ("/srv/mlflow/artifacts/1/abc/artifacts", None),
        ("s3://bucket/1/abc/artifacts", None),
        ("http://mlflow.scripted/api/2.0/mlflow-artifacts/artifacts/1/abc", None),
        (None, None),
    ],
)
def test_only_roots_in_this_servers_own_store_are_listed_there(
    uri: str | None, root: str | None
) -> None:
    store = in_process.source_for(scripted_settings(), ScriptedMlflow().transport).store
    assert isinstance(store, MlflowArtifacts)
    assert store.served_root(uri) == root


@pytest.mark.e2e  # (a real mlflow server: served_server)
def test_the_scripted_store_lists_as_a_real_server_serving_artifacts(
    tmp_path: Path, served_server: MlflowServer, experiment_name: str
) -> None:
    """helpers/scripted_mlflow.py's `mlflow-artifacts/artifacts` keeps to MLflow's."""
    files = {"model/weights.bin": bytes(range(256)), "notes.txt": b"hi\n", "a/b/c.json": b"{}"}
    for relative, data in files.items():
        (tmp_path / "logged" / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "logged" / relative).write_bytes(data)
    scripted = ScriptedMlflow()
    listings = []
    for client, url, transport in [
        (served_server.client(), served_server.url, httpx.HTTPTransport()),
        (scripted.client(), scripted.url, scripted.transport),
    ]:
        run_id = new_run(client, experiment_name, "r")
        client.log_artifacts(run_id, str(tmp_path / "logged"))
        settings = replace(scripted_settings(), tracking_uri=url)
        source = in_process.source_for(settings, transport)
        assert isinstance(source.store, MlflowArtifacts)
        root = source.store.served_root(client.get_run(run_id).info.artifact_uri)
        assert root is not None
        folders = ("", "model", "a", "a/b", "none")
        listings.append(
            {f: sorted(source.client.served_artifacts(f"{root}/{f}".rstrip("/"))) for f in folders}
        )
        source.close()
    assert listings[0] == listings[1]
    assert listings[0][""] == [("a", True, 0), ("model", True, 0), ("notes.txt", False, 3)]


def test_the_fingerprint_leaves_the_artifact_uri_out_as_mirrors_made_before_it_have_it() -> None:
    """A run's artifact root (fixed for its life) is not digested: the fingerprint of a listed
    run is the one tbmirror kept before it read artifact URIs (25fdba9), so a restarted daemon
    looks into none of the unchanged runs of such a mirror; anything else it says still counts."""

    def fingerprint(artifact_uri: str, status: str = "FINISHED") -> int:
        info = {"run_id": "abc", "experiment_id": "1", "status": status, "lifecycle_stage":
                "active", "start_time": 1, "end_time": 2, "artifact_uri": artifact_uri}  # fmt: skip
        metrics = [{"key": "m", "value": 1.0, "timestamp": 1, "step": 0}]
        body = json.dumps({"runs": [{"info": info, "data": {"metrics": metrics}}]}).encode()
        return run_from_json(parse(RunsPage, body, "runs/search").runs[0]).fingerprint

    before = 8395002748593385808  # this run's fingerprint as 25fdba9 computed it
    assert fingerprint("mlflow-artifacts:/1/abc/artifacts") == before
    assert fingerprint("/elsewhere/1/abc/artifacts") == before
    assert fingerprint("mlflow-artifacts:/1/abc/artifacts", status="RUNNING") != before


@pytest.mark.parametrize("enabled", [True, False])
def test_artifact_roots_are_kept_only_while_artifacts_are_mirrored(
    tmp_path: Path, enabled: bool
) -> None:
    """With artifacts off, the engine keeps no artifact root of the runs it lists (100,000
    runs of a default `mlflow server` would hold ~4 MB of them for nothing)."""
    scripted = ScriptedMlflow()
    journal = Journal.open(MirrorLayout(tmp_path / "root"), tmp_path / "state.db")
    journal.own("s")
    engine = in_process.engine_for(scripted_settings(enabled=enabled), journal, scripted.transport)
    try:
        assert isinstance(engine, MlflowEngine)
        runs = [RunSnapshot(f"r{i}", "1", f"r{i}", "FINISHED", "active", 0, 0, None,
                            artifact_uri=f"mlflow-artifacts:/1/r{i}/artifacts")
                for i in range(3)]  # fmt: skip
        engine.artifacts.note(runs)
        assert len(engine.artifacts._roots) == (3 if enabled else 0)
    finally:
        engine.close()
        journal.close()
