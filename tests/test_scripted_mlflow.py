"""The scripted MLflow (helpers/scripted_mlflow.py) keeps to what a real `mlflow server` answers:
one history is logged into both, then read back through tbmirror's own client, and what it decodes
(experiments, runs with their params, tags and latest points, filtered searches and their pages,
histories and their pages, the bulk history, run states, artifact listings and byte ranges) must
be the same. A fake that drifts from MLflow fails here, not in the tests that rely on it."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from mlflow.entities import Metric

from conftest import MlflowServer
from helpers.in_process import source_for
from helpers.scripted_mlflow import ScriptedMlflow
from tbmirror.config import MlflowSourceSettings
from tbmirror.kinds.mlflow import build_source
from tbmirror.sources.http import BadAnswerError, HttpStatusError
from tbmirror.sources.mlflow import MlflowSource
from tbmirror.sources.mlflow.artifacts import ArtifactFile
from tbmirror.sources.mlflow.client import API
from tbmirror.sources.responses import HistoryPage, RunsPage, parse

T0 = 1_700_000_000_000


def script(client: Any, prefix: str, files: Path) -> None:
    """One history, logged the way a user's code logs it (MlflowClient's methods)."""
    first = client.create_experiment(f"{prefix}-a")
    second = client.create_experiment(f"{prefix}-b")
    runs = {}
    for index, (name, experiment, tags) in enumerate([
        ("vision", first, {"team": "vision"}),
        ("nlp", first, {"team": "nlp"}),
        ("later", first, {}),
        ("other", second, {"team": "vision"}),
        ("doomed", first, {}),
    ]):  # fmt: skip
        run = client.create_run(experiment, start_time=T0 + index * 1000, tags=tags, run_name=name)
        runs[name] = run.info.run_id
    child = client.create_run(
        second, start_time=T0 + 500, run_name="child", tags={"mlflow.parentRunId": runs["vision"]}
    )
    runs["child"] = child.info.run_id
    client.log_batch(
        runs["vision"], metrics=[Metric("loss", 1 / (i + 1), T0 + i, i) for i in range(7)]
    )
    client.log_batch(runs["vision"], metrics=[Metric("loss", 0.25, T0 + 3, 3)])  # exact duplicate
    client.log_batch(runs["vision"], metrics=[Metric("loss", 0.5, T0 + 3, 3)])  # same step
    client.log_batch(runs["vision"], metrics=[Metric("loss", 9.0, T0 + 2, 20)])  # a late point
    client.log_batch(runs["vision"], metrics=[Metric("acc", float("nan"), T0, 0),
                                              Metric("acc", 0.75, T0 + 1, 1)])  # fmt: skip
    client.log_batch(
        runs["nlp"], metrics=[Metric("loss", 2.0, T0 + 5, 0), Metric("acc", 0.25, T0, 0)]
    )
    client.log_batch(runs["child"], metrics=[Metric("loss", 3.0, T0, 0)])
    client.log_metric(runs["later"], "loss", 5.0, timestamp=T0 + 9, step=4)
    client.log_param(runs["vision"], "lr", "0.1")
    client.log_param(runs["nlp"], "lr", "0.01")
    client.set_tag(runs["nlp"], "mlflow.note.content", "a note")
    client.set_terminated(runs["vision"], "FINISHED", end_time=T0 + 10_000)
    client.set_terminated(runs["nlp"], "FAILED", end_time=T0 + 20_000)
    client.update_run(runs["later"], name="renamed")
    client.delete_run(runs["doomed"])
    for relative, data in [("model/weights.bin", bytes(range(256)) * 3), ("notes.txt", b"hi\n"),
                           ("model/deep/config.json", b'{"a": 1}')]:  # fmt: skip
        local = files / relative
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(data)
        folder = str(Path(relative).parent)
        client.log_artifact(runs["vision"], str(local), None if folder == "." else folder)


FILTERS = [
    "",
    "attributes.status = 'RUNNING'",
    f"attributes.start_time >= {T0 + 1500}",
    "tags.`mlflow.parentRunId` IS NULL",
    "tags.`mlflow.parentRunId` IS NOT NULL",
    "tags.team = 'vision' AND tags.`mlflow.parentRunId` IS NULL",
    "metrics.acc > 0.5",
    "metrics.loss <= 2",
    "params.lr = '0.1'",
    "attributes.run_name = 'renamed'",
    "tags.team LIKE 'vis%'",
    "tags.team != 'nlp'",
]


def decoded(source: MlflowSource, prefix: str) -> dict[str, Any]:
    """What tbmirror's client reads of the scripted history, with ids replaced by names."""
    client = source.client
    experiments = {e.experiment_id: e for e in client.experiments() if e.name.startswith(prefix)}
    ids = sorted(experiments)
    every = list(client.search_runs(ids))
    names = {run.run_id: run.name for run in every}

    def run_view(run: Any) -> tuple[Any, ...]:
        latest = {k: (p.timestamp, p.step, repr(p.value)) for k, p in sorted(run.latest.items())}
        tags = {k: v for k, v in run.tags.items() if k != "mlflow.parentRunId"}  # (an id)
        parent = names.get(run.parent_run_id or "")
        experiment = experiments[run.experiment_id].name
        return (run.name, experiment, run.status, run.lifecycle_stage, run.start_time,
                run.end_time, parent, run.params, tags, latest)  # fmt: skip

    found: dict[str, Any] = {
        "experiments": sorted((e.name, e.lifecycle_stage) for e in experiments.values()),
        "by_name": [
            client.experiment_by_name(name) is not None
            for name in (f"{prefix}-a", f"{prefix}-missing")
        ],
        "runs": [run_view(run) for run in every],
    }
    for query in FILTERS:
        found[f"search {query}"] = [run.name for run in client.search_runs(ids, query)]
    with pytest.raises(HttpStatusError) as refused:
        list(client.search_runs(ids, "tags.team = vision("))
    found["refused"] = (refused.value.status_code, refused.value.error_code)
    found["pages"] = pages(source, ids)
    by_name = {run.name: run.run_id for run in every}
    vision = by_name["vision"]
    for key in ("loss", "acc", "none"):
        history = [(p.timestamp, p.step, repr(p.value), token is None)
                   for page, token in client.history(vision, key) for p in page]  # fmt: skip
        found[f"history {key}"] = history
    found["history pages"] = history_pages(source, vision)
    bulk = client.history_bulk([by_name["vision"], by_name["nlp"], by_name["child"]], "loss")
    assert bulk is not None
    found["bulk"] = {
        names[r]: [(p.timestamp, p.step, p.value) for p in ps] for r, ps in bulk.items()
    }
    found["states"] = [client.run_state(by_name[n]) for n in ("vision", "doomed")]
    found["gone"] = client.run_state("0123456789abcdef0123456789abcdef")
    found["artifacts"] = [
        sorted(client.artifacts(vision, folder)) for folder in ("", "model", "model/deep", "no")
    ]
    size = 768
    reader = ArtifactFile(client.rest, vision, "model/weights.bin", size)
    found["ranges"] = [reader.read(s, e) for s, e in ((0, 5), (250, 262), (760, 800), (768, 780))]
    return found


def pages(source: MlflowSource, ids: list[str]) -> list[tuple[int, bool]]:
    """runs/search two runs a page: each page's size and whether a token came with it."""
    seen, token = [], None
    for _ in range(10):
        body = {"experiment_ids": ids, "max_results": 2, "run_view_type": "ALL",
                "order_by": ["attributes.start_time ASC"]}  # fmt: skip
        asked = body | ({"page_token": token} if token else {})
        page = parse(RunsPage, source.client.rest.post(f"{API}/runs/search", asked), "search")
        seen.append((len(page.runs), page.next_page_token is not None))
        token = page.next_page_token
        if token is None:
            break
    return seen


def history_pages(source: MlflowSource, run_id: str) -> list[tuple[list[int], int | None]]:
    """get-history three points a page: each page's steps and the offset its token names."""
    seen, token = [], None
    for _ in range(10):
        params = {"run_id": run_id, "metric_key": "loss", "max_results": 3}
        asked = params | ({"page_token": token} if token else {})
        body = source.client.rest.get(f"{API}/metrics/get-history", asked)
        page = parse(HistoryPage, body, "history")
        token = page.next_page_token
        offset = json.loads(base64.b64decode(token))["offset"] if token else None
        seen.append(([p.step for p in page.metrics], offset))
        if token is None:
            break
    return seen


def settings_for(url: str) -> MlflowSourceSettings:
    return MlflowSourceSettings(name="conformance", tracking_uri=url,
                                experiments=["*"], max_retries=0)  # fmt: skip


def test_the_scripted_server_answers_what_a_real_mlflow_server_answers(
    tmp_path: Path, mlflow_server: MlflowServer, experiment_name: str
) -> None:
    script(mlflow_server.client(), experiment_name, tmp_path / "real")
    real = build_source(settings_for(mlflow_server.url))
    scripted = ScriptedMlflow()
    script(scripted.client(), experiment_name, tmp_path / "scripted")
    fake = source_for(settings_for(scripted.url), scripted.transport)
    try:
        expected, got = decoded(real, experiment_name), decoded(fake, experiment_name)
    finally:
        real.close()
        fake.close()
    assert expected["runs"], "the real server listed the scripted runs"
    for key in expected:
        assert got[key] == expected[key], key
    assert got == expected


def test_hostile_answers_of_the_scripted_server_reach_the_client_as_errors() -> None:
    scripted = ScriptedMlflow()
    client = scripted.client()
    client.create_experiment("e")
    source = source_for(settings_for(scripted.url), scripted.transport)
    try:
        scripted.set("html", path="experiments/search", times=1)
        with pytest.raises(BadAnswerError, match="HTML page"):
            source.client.experiments()
        scripted.set("redirect", path="experiments/search", times=1)
        with pytest.raises(BadAnswerError, match="redirect"):
            source.client.experiments()
        assert [s.fault for s in scripted.seen("experiments/search")] == ["html", "redirect"]
        assert [e.name for e in source.client.experiments()] == ["Default", "e"]
        with pytest.raises(ValueError, match="HostileProxy"):
            scripted.set("reset")
    finally:
        source.close()
