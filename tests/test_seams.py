"""The in-process seams of the MLflow side: an httpx transport in place of the network.

`httpx.MockTransport` answers here (a fake at a seam: the real server is tested elsewhere); these
tests show that every request of a source goes through the transport it was given.
"""

from __future__ import annotations

import json

import httpx

from tbmirror.config import MlflowSourceSettings
from tbmirror.sources.http import RestClient
from tbmirror.sources.mlflow import MlflowSource


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


def test_a_source_from_settings_reads_its_experiments_through_the_transport() -> None:
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        found = {"experiment_id": "7", "name": "e", "lifecycle_stage": "active"}
        return httpx.Response(200, json={"experiment": found})

    settings = MlflowSourceSettings(
        name="s", type="mlflow", tracking_uri="http://mlflow.invalid", experiments=["e"]
    )
    source = MlflowSource.from_settings(settings, transport=httpx.MockTransport(answer))
    experiments, missing = source.experiments()
    assert [e.name for e in experiments.values()] == ["e"] and missing == []
    assert seen == ["/api/2.0/mlflow/experiments/get-by-name"]
    source.close()
