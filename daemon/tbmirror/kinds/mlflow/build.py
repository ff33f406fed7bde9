"""Building an MLflow source and its engine from its settings: the clouds' defaults (Azure ML,
Databricks) filled in, the credentials, one REST client per address (the tracking server, Azure
ML's run history, the artifact storage behind signed URLs) and the artifact store."""

from __future__ import annotations

import threading

import httpx
import msgspec

from tbmirror.config import MlflowSourceSettings, azureml_workspace, without_userinfo
from tbmirror.config.auth import DatabricksAuth
from tbmirror.engine.mlflow.engine import MlflowEngine
from tbmirror.journal import Journal
from tbmirror.sources.auth import build_auth
from tbmirror.sources.azureml import HISTORY_API, AzureMlArtifacts
from tbmirror.sources.databricks import DatabricksArtifacts
from tbmirror.sources.http import RestClient
from tbmirror.sources.mlflow.artifacts import MlflowArtifacts
from tbmirror.sources.mlflow.client import MlflowClient
from tbmirror.sources.mlflow.source import MlflowSource
from tbmirror.sources.stores import ArtifactStore

DATABRICKS_SEARCH_RATE = 7.0  # requests per second Databricks allows for search/experiment calls
DATABRICKS_RATE = 127.0  # and for every other call


def with_cloud_defaults(settings: MlflowSourceSettings) -> MlflowSourceSettings:
    """`settings` with what the file left to the clouds made explicit: `artifacts.store` "auto"
    resolved (Azure ML for a workspace's tracking URI, Databricks for databricks auth, else
    MLflow's own endpoints), and unset rate limits at Databricks' own with databricks auth
    (the search limit defaults to the general one elsewhere)."""
    databricks = isinstance(settings.auth, DatabricksAuth)
    store = settings.artifacts.store
    if store == "auto":
        if azureml_workspace(settings.tracking_uri):
            store = "azureml"
        else:
            store = "databricks" if databricks else "mlflow"
    rate = settings.max_requests_per_second
    search_rate = settings.max_search_requests_per_second
    if search_rate is None:
        search_rate = DATABRICKS_SEARCH_RATE if databricks else rate
    if rate is None and databricks:
        rate = DATABRICKS_RATE
    return msgspec.structs.replace(
        settings,
        artifacts=msgspec.structs.replace(settings.artifacts, store=store),
        max_requests_per_second=rate,
        max_search_requests_per_second=search_rate,
    )


def build_source(
    settings: MlflowSourceSettings,
    stop: threading.Event | None = None,
    *,
    transport: httpx.BaseTransport | None = None,
) -> MlflowSource:
    """The source `settings` describe (with the clouds' defaults); a set `stop` ends its waits
    and reads at once. `transport`: where every request goes (default: the network; tests pass
    an in-process one)."""
    settings = with_cloud_defaults(settings)
    auth = build_auth(settings)

    def rest_client(url: str, auth: httpx.Auth | None, display_url: str) -> RestClient:
        return RestClient(
            url,
            timeout=settings.timeout,
            max_retries=settings.max_retries,
            max_response_bytes=settings.max_response_bytes,
            stall_timeout=settings.stall_timeout,
            stop=stop,
            display_url=display_url,
            max_connections=settings.concurrency + 1,
            auth=auth,
            auth_name=settings.auth.type if settings.auth and auth else None,
            rate_limit=settings.max_requests_per_second,
            search_rate_limit=settings.max_search_requests_per_second,
            transport=transport,
        )

    shown = without_userinfo(settings.tracking_uri)
    client = MlflowClient(rest_client(settings.tracking_uri, auth, shown))
    kind = settings.artifacts.store
    if kind == "mlflow":
        return MlflowSource(settings, client)
    storage = rest_client("", None, "artifact storage")  # signed URLs: no credentials of ours
    store: ArtifactStore
    if kind == "azureml":
        address, workspace = azureml_workspace(settings.tracking_uri) or ("", "")
        history_url = f"{address}{HISTORY_API}{workspace}"
        history = rest_client(history_url, auth, without_userinfo(history_url))
        store = AzureMlArtifacts(settings.artifacts, history, storage)
    else:
        listing = MlflowArtifacts(settings.artifacts, client)
        store = DatabricksArtifacts(listing, client.rest, storage)
    return MlflowSource(settings, client, store)


def build_engine(
    settings: MlflowSourceSettings,
    journal: Journal,
    stop: threading.Event | None = None,
    *,
    transport: httpx.BaseTransport | None = None,
) -> MlflowEngine:
    """The engine mirroring the source (close it when done). In the daemon (which passes its
    `stop` event: it ends waits and reads at once), a pass lists the artifacts of at most
    `artifacts.batch` runs never looked at; `tbmirror sync` (no `stop`) looks at all."""
    batch = settings.artifacts.batch if stop is not None else None
    source = build_source(settings, stop, transport=transport)
    return MlflowEngine(source, journal, artifact_batch=batch)
