"""Contract tests of the cloud stand-ins (helpers/cloud_standins.py), so they cannot drift from what
real clients expect.

Azure ML: every answer is deserialized with the generated msrest models of
`azureml-mlflow==1.62.0.post6` (only its `_restclient/run_artifact/models`, loaded under a
synthetic package: importing `azureml.mlflow` would pull azureml-core and an older mlflow) and must
serialize back to exactly the JSON sent. Databricks: mlflow's own `DatabricksArtifactRepository`
lists and downloads through the stand-in, and the answers parse strictly into mlflow's protos.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import msrest
import pytest
from google.protobuf.json_format import ParseDict

from conftest import MlflowServer, new_run, wait_until
from helpers.cloud_standins import AzureMlWorkspace, DatabricksWorkspace
from helpers.prepared import azureml_models

SYNTHETIC_PACKAGE = "azureml_run_artifact_models"

ARTIFACTS = {
    "logs/a.txt": b"alpha",
    "logs/tb/events.out.tfevents.1.host": bytes(range(256)) * 40,
    "logs2/x.txt": b"not under logs/",
    "outputs/model.pkl": b"m" * 10,
    "tb/events.out.tfevents.2.host": b"t" * 100,
}


# -- Azure ML ----------------------------------------------------------------------------------


def load_run_artifact_models() -> ModuleType:
    """`_models_py3` of azureml-mlflow==AZUREML_MLFLOW (prepared by tests/prepare.py) imported as
    `SYNTHETIC_PACKAGE._models_py3`."""
    directory = azureml_models()
    if SYNTHETIC_PACKAGE not in sys.modules:
        spec = importlib.machinery.ModuleSpec(SYNTHETIC_PACKAGE, None, is_package=True)
        spec.submodule_search_locations = [str(directory)]
        sys.modules[SYNTHETIC_PACKAGE] = importlib.util.module_from_spec(spec)
    return importlib.import_module(f"{SYNTHETIC_PACKAGE}._models_py3")


def without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(item) for item in value]
    return value


class RunArtifactModels:
    """The real wire models, and the check every stand-in answer must pass."""

    def __init__(self, module: ModuleType) -> None:
        self.module = module
        classes = {name: cls for name, cls in vars(module).items() if isinstance(cls, type)}
        self.deserialize = msrest.Deserializer(classes)  # what the generated client builds

    def check(self, model: str, response: httpx.Response, status: int = 200) -> Any:
        """The answer as `model`: it has the status, deserializes, has its required fields, and
        serializes back to exactly the JSON sent (nulls aside: no other key, the right types)."""
        assert response.status_code == status, response.text
        value = self.deserialize(model, response.text, response.headers["content-type"])
        assert value.validate() == []
        assert value.serialize() == without_nulls(response.json())
        return value


@pytest.fixture(scope="session")
def models() -> RunArtifactModels:
    return RunArtifactModels(load_run_artifact_models())


@pytest.fixture
def azureml_run(
    mlflow_server: MlflowServer, azureml_workspace: AzureMlWorkspace
) -> tuple[str, str]:
    """(experiment id, run id) of a new run whose artifacts are ARTIFACTS."""
    client = mlflow_server.client()
    run_id = new_run(client, "cloud-standins-azureml", "run")
    for path, data in ARTIFACTS.items():
        azureml_workspace.put(run_id, path, data)
    return str(client.get_run(run_id).info.experiment_id), run_id


def bearer(token: str) -> httpx.Client:
    return httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=30)


def follow(
    models: RunArtifactModels, http: httpx.Client, model: str, url: str
) -> tuple[list[Any], int]:
    """Every item of a paged listing, following `nextLink` as the generated client does (the
    link as is, no query added); and how many pages."""
    items: list[Any] = []
    pages = 0
    next_link: str | None = url
    while next_link:
        assert pages < 100, f"more than 100 pages: {next_link}"  # a link that never ends
        page = models.check(model, http.get(next_link))
        pages += 1
        assert (page.continuation_token is None) == (page.next_link is None)
        items += page.value
        next_link = page.next_link
    return items, pages


def test_azureml_listing_pages_by_next_link(
    models: RunArtifactModels, azureml_workspace: AzureMlWorkspace, azureml_run: tuple[str, str]
) -> None:
    experiment_id, run_id = azureml_run
    base = azureml_workspace.history_url(experiment_id, run_id)
    with bearer(azureml_workspace.token) as http:
        artifacts, pages = follow(models, http, "PaginatedArtifactList", f"{base}/artifacts")
        assert [a.path for a in artifacts] == sorted(ARTIFACTS)  # each once, in order
        assert pages == 3  # page_size 2
        for artifact in artifacts:
            assert artifact.origin == "ExperimentRun"
            assert artifact.container == f"dcid.{run_id}"
            assert artifact.artifact_id == f"ExperimentRun/dcid.{run_id}/{artifact.path}"
            assert artifact.etag and artifact.created_time is not None

        azureml_workspace.page_size = 1
        logs, pages = follow(
            models, http, "PaginatedArtifactList", f"{base}/artifacts/path?path=logs"
        )
        assert [a.path for a in logs] == ["logs/a.txt", "logs/tb/events.out.tfevents.1.host"]
        assert pages == 2  # the nextLink kept path=logs
        for prefix, expected in [
            ("logs/", ["logs/a.txt", "logs/tb/events.out.tfevents.1.host"]),
            ("logs/a.txt", ["logs/a.txt"]),
            ("log", []),
        ]:
            found, _ = follow(
                models, http, "PaginatedArtifactList", f"{base}/artifacts/path?path={prefix}"
            )
            assert [a.path for a in found] == expected, prefix

        page = models.check("PaginatedArtifactList", http.get(f"{base}/artifacts"))
        token = page.continuation_token  # the token alone resumes too (no nextLink)
        resumed = models.check(
            "PaginatedArtifactList", http.get(f"{base}/artifacts?continuationToken={token}")
        )
        assert [a.path for a in resumed.value] == [sorted(ARTIFACTS)[1]]
    listings = [p for m, p in azureml_workspace.requests if p.endswith("/artifacts")]
    assert len(listings) == 3 + 2


def test_azureml_content_information_reads_blobs(
    models: RunArtifactModels, azureml_workspace: AzureMlWorkspace, azureml_run: tuple[str, str]
) -> None:
    experiment_id, run_id = azureml_run
    base = azureml_workspace.history_url(experiment_id, run_id)
    path = "logs/tb/events.out.tfevents.1.host"
    with bearer(azureml_workspace.token) as http:
        info = models.check(
            "ArtifactContentInformation", http.get(f"{base}/artifacts/contentinfo?path={path}")
        )
        assert (info.origin, info.container, info.path) == ("ExperimentRun", f"dcid.{run_id}", path)
        assert httpx.get(info.content_uri).content == ARTIFACTS[path]
        ranged = httpx.get(info.content_uri, headers={"Range": "bytes=10-19"})
        assert (ranged.status_code, ranged.content) == (206, ARTIFACTS[path][10:20])

        grown = ARTIFACTS[path] + b"more records"
        azureml_workspace.put(run_id, path, grown)  # Azure ML re-uploads the whole file
        assert httpx.get(info.content_uri).content == grown

        infos, pages = follow(
            models,
            http,
            "PaginatedArtifactContentInformationList",
            f"{base}/artifacts/prefix/contentinfo?path=logs",
        )
        assert [i.path for i in infos] == ["logs/a.txt", path] and pages == 1
        assert [httpx.get(i.content_uri).content for i in infos] == [ARTIFACTS["logs/a.txt"], grown]

        missing = http.get(f"{base}/artifacts/contentinfo?path=logs/none")
        error = models.check("ErrorResponse", missing, status=404)
        assert (error.error.code, error.error.inner_error.code) == ("UserError", "NotFoundError")
        no_path = http.get(f"{base}/artifacts/contentinfo")
        assert models.check("ErrorResponse", no_path, 400).error.inner_error.code == "BadArgument"
        other_experiment = azureml_workspace.history_url("999999", run_id)
        models.check("ErrorResponse", http.get(f"{other_experiment}/artifacts"), 404)
        models.check("ErrorResponse", http.post(f"{base}/artifacts"), 405)
    with bearer("wrong") as http:
        denied = models.check("ErrorResponse", http.get(f"{base}/artifacts"), status=401)
        assert denied.error.code == "AuthenticationError"
    models.check("ErrorResponse", httpx.get(f"{base}/artifacts"), status=401)


def test_azureml_expired_and_badly_signed_sas_are_refused(
    models: RunArtifactModels, azureml_workspace: AzureMlWorkspace, azureml_run: tuple[str, str]
) -> None:
    experiment_id, run_id = azureml_run
    url = f"{azureml_workspace.history_url(experiment_id, run_id)}/artifacts/contentinfo"
    path = {"path": "logs/a.txt"}
    with bearer(azureml_workspace.token) as http:
        azureml_workspace.bad_signature_runs = {run_id}
        info = models.check("ArtifactContentInformation", http.get(url, params=path))
        assert httpx.get(info.content_uri).status_code == 403
        azureml_workspace.bad_signature_runs = {"another run"}
        info = models.check("ArtifactContentInformation", http.get(url, params=path))
        assert httpx.get(info.content_uri).status_code == 200

        azureml_workspace.bad_signature = True
        info = models.check("ArtifactContentInformation", http.get(url, params=path))
        assert httpx.get(info.content_uri).status_code == 403

        azureml_workspace.bad_signature = False
        azureml_workspace.sas_ttl = 2  # the expiry has whole seconds: 1 to 2 s from now
        info = models.check("ArtifactContentInformation", http.get(url, params=path))
        assert httpx.get(info.content_uri).status_code == 200
        wait_until(lambda: httpx.get(info.content_uri).status_code == 403, 30, "the SAS to expire")


def test_azureml_tracking_uri_forwards_mlflow_calls(
    azureml_workspace: AzureMlWorkspace,
    azureml_run: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mlflow import MlflowClient

    experiment_id, run_id = azureml_run
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", azureml_workspace.token)  # sent as Bearer
    client = MlflowClient(azureml_workspace.tracking_uri)
    run = client.get_run(run_id)
    assert run.info.artifact_uri == (
        f"azureml://{azureml_workspace.url.removeprefix('http://')}/mlflow/v2.0"
        f"{azureml_workspace.workspace_path}/experiments/{experiment_id}/runs/{run_id}/artifacts"
    )
    assert run_id in [r.info.run_id for r in client.search_runs([experiment_id])]
    mlflow_calls = [p for _, p in azureml_workspace.requests if "/api/2.0/mlflow/" in p]
    assert mlflow_calls and all(p.startswith("/mlflow/v1.0/subscriptions/") for p in mlflow_calls)
    assert httpx.get(f"{azureml_workspace.tracking_uri}/api/2.0/mlflow/runs/get").status_code == 401


# -- Databricks --------------------------------------------------------------------------------

DATABRICKS_ARTIFACTS = {
    "metrics.json": b"{}",
    "tb/events.out.tfevents.1.host": b"first file",
    "tb/events.out.tfevents.2.host": bytes(range(256)) * 100,
    "tb/events.out.tfevents.3.host": b"third",
    "tb/plugins/profile/trace.json": b"[]",
}


@pytest.fixture
def databricks_run(
    mlflow_server: MlflowServer, databricks_workspace: DatabricksWorkspace
) -> tuple[str, str]:
    """(experiment id, run id) of a new run whose artifacts are DATABRICKS_ARTIFACTS."""
    client = mlflow_server.client()
    run_id = new_run(client, "cloud-standins-databricks", "run")
    experiment_id = str(client.get_run(run_id).info.experiment_id)
    for path, data in DATABRICKS_ARTIFACTS.items():
        databricks_workspace.put(experiment_id, run_id, path, data)
    return experiment_id, run_id


@pytest.fixture
def databricks_env(
    databricks_workspace: DatabricksWorkspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mlflow's own client pointed at the stand-in: tracking URI `databricks`, host and token
    from the environment (read by databricks-sdk, then by mlflow's legacy provider)."""
    from mlflow.tracking._tracking_service import utils

    for name in ("DATABRICKS_CONFIG_PROFILE", "DATABRICKS_CONFIG_FILE", "DATABRICKS_CLIENT_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABRICKS_HOST", databricks_workspace.host)
    monkeypatch.setenv("DATABRICKS_TOKEN", databricks_workspace.token)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "databricks")
    monkeypatch.setattr(utils, "_tracking_uri", None)  # the environment decides


def test_databricks_artifact_repository_lists_and_downloads(
    databricks_workspace: DatabricksWorkspace,
    databricks_run: tuple[str, str],
    databricks_env: None,
    tmp_path: Path,
) -> None:
    from mlflow.store.artifact.databricks_artifact_repo import DatabricksArtifactRepository

    experiment_id, run_id = databricks_run
    root = f"dbfs:/databricks/mlflow-tracking/{experiment_id}/{run_id}/artifacts"
    repo = DatabricksArtifactRepository(root)

    def listing(path: str) -> list[tuple[str, bool, int | None]]:
        return [(f.path, f.is_dir, f.file_size) for f in repo.list_artifacts(path)]

    assert listing("") == [("metrics.json", False, 2), ("tb", True, None)]
    databricks_workspace.requests.clear()
    tb = [(p, False, len(d)) for p, d in DATABRICKS_ARTIFACTS.items() if p.count("/") == 1]
    assert listing("tb") == [*tb, ("tb/plugins", True, None)]
    pages = [p for _, p in databricks_workspace.requests if p.endswith("/artifacts/list")]
    assert len(pages) == 2  # 4 entries, page_size 2
    assert listing("tb/events.out.tfevents.3.host") == []  # a file: mlflow's client says []
    assert listing("none") == []

    path = "tb/events.out.tfevents.2.host"
    local = repo.download_artifacts(path, str(tmp_path))
    assert Path(local).read_bytes() == DATABRICKS_ARTIFACTS[path]

    sub = DatabricksArtifactRepository(f"{root}/tb")  # paths relative to the repository's root
    assert [f.path for f in sub.list_artifacts("plugins")] == ["plugins/profile"]

    assert (
        "POST",
        "/api/2.0/mlflow/artifacts/credentials-for-read",
    ) in databricks_workspace.requests


def test_databricks_answers_parse_into_mlflow_protos(
    databricks_workspace: DatabricksWorkspace, databricks_run: tuple[str, str]
) -> None:
    from mlflow.protos.databricks_artifacts_pb2 import ArtifactCredentialType, GetCredentialsForRead
    from mlflow.protos.service_pb2 import GetRun, ListArtifacts

    experiment_id, run_id = databricks_run
    api = f"{databricks_workspace.host}/api/2.0/mlflow"
    with bearer(databricks_workspace.token) as http:
        run = ParseDict(
            http.get(f"{api}/runs/get", params={"run_id": run_id}).json(), GetRun.Response()
        )
        root = f"dbfs:/databricks/mlflow-tracking/{experiment_id}/{run_id}/artifacts"
        assert run.run.info.artifact_uri == root

        answer = http.get(f"{api}/artifacts/list", params={"run_id": run_id, "path": "tb"})
        listed = ParseDict(answer.json(), ListArtifacts.Response())  # unknown keys would fail
        assert listed.root_uri == root and len(listed.files) == 2 and listed.next_page_token
        assert answer.json()["files"][0]["file_size"] == 10  # a JSON number, like mlflow's

        paths = ["metrics.json", "tb/events.out.tfevents.1.host", "tb/none"]
        body: dict[str, Any] = {"run_id": run_id, "path": paths}
        infos = []
        for _ in range(len(paths) + 1):  # a page per path at most
            answer = http.post(f"{api}/artifacts/credentials-for-read", json=body)
            page = ParseDict(answer.json(), GetCredentialsForRead.Response())
            infos += page.credential_infos
            if not page.next_page_token:
                break
            body["page_token"] = page.next_page_token
        else:
            raise AssertionError(f"the page token never ended after {len(paths) + 1} pages")
        assert [i.path for i in infos] == paths
        assert {i.type for i in infos} == {ArtifactCredentialType.AZURE_SAS_URI}
        assert httpx.get(infos[0].signed_uri).content == b"{}"
        assert httpx.get(infos[2].signed_uri).status_code == 404  # signed, but no such blob

        databricks_workspace.bad_signature = True
        answer = http.post(
            f"{api}/artifacts/credentials-for-read", json={"run_id": run_id, "path": paths[:1]}
        )
        assert httpx.get(answer.json()["credential_infos"][0]["signed_uri"]).status_code == 403

        unknown = http.get(f"{api}/artifacts/list", params={"run_id": "0" * 32})
        assert unknown.status_code == 404
        assert unknown.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
        assert http.get(f"{databricks_workspace.host}/api/2.0/other").status_code == 404
    denied = httpx.get(f"{api}/runs/get", params={"run_id": run_id})
    assert denied.status_code == 401 and denied.json()["error_code"] == "UNAUTHENTICATED"
