"""One configured MLflow source: its client, listing, histories and artifacts, built from its
settings (the RunSource an MlflowEngine reads, engine/mlflow/source.py)."""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterable

import httpx

from tbmirror.config import MlflowSourceSettings, azureml_workspace, without_userinfo
from tbmirror.errors import SourceError
from tbmirror.model import Experiment, RunSnapshot
from tbmirror.sources.auth import build_auth
from tbmirror.sources.azureml import HISTORY_API, AzureMlArtifacts
from tbmirror.sources.databricks import DatabricksArtifacts
from tbmirror.sources.http import RestClient
from tbmirror.sources.mlflow.artifacts import MlflowArtifacts, RunArtifacts
from tbmirror.sources.mlflow.client import MlflowClient, RunState
from tbmirror.sources.mlflow.history import Histories, History, HistoryRequest
from tbmirror.sources.mlflow.listing import RunLister, RunListing
from tbmirror.sources.stores import Artifact, ArtifactStore, FileReader, RunRef


class MlflowSource:
    """Reads one configured MLflow source: runs are listed (`list_runs`), the series that changed
    fetched past their cursors (`fetch`), artifacts listed and read through the source's artifact
    store (MLflow's own, Azure ML's or Databricks'). One caller at a time; `fetch` and
    `artifacts_of` run their requests on threads of their own."""

    def __init__(
        self,
        settings: MlflowSourceSettings,
        client: MlflowClient,
        store: ArtifactStore | None = None,
    ) -> None:
        """`store`: where runs' artifacts are read (default: the server's own endpoints)."""
        self.settings = settings
        self.client = client
        self.store = store or MlflowArtifacts(settings.artifacts, client)
        self.lister = RunLister(settings, client)
        self.histories = Histories(client, settings.name, settings.concurrency)
        self.artifacts = RunArtifacts(self.store, settings.concurrency)

    @classmethod
    def from_settings(
        cls,
        settings: MlflowSourceSettings,
        stop: threading.Event | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> MlflowSource:
        """The source `settings` describe, with the artifact store `settings.artifact_store`
        names; a set `stop` ends its waits and reads at once. `transport`: where every request
        goes (default: the network; tests pass an in-process one)."""
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
                rate_limit=settings.rate_limit,
                search_rate_limit=settings.search_rate_limit,
                transport=transport,
            )

        shown = without_userinfo(settings.tracking_uri)
        client = MlflowClient(rest_client(settings.tracking_uri, auth, shown))
        kind = settings.artifact_store
        if kind == "mlflow":
            return cls(settings, client)
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
        return cls(settings, client, store)

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def requests_made(self) -> int:
        return self.client.rest.requests_made + self.store.requests_made

    @property
    def answered_at(self) -> float | None:
        """Wall time of the tracking server's last answer (None: none yet)."""
        return self.client.rest.answered_at

    @property
    def artifact_sizes_listed(self) -> bool:
        """Whether the artifact store's listings give every file's size."""
        return self.store.sizes_listed

    def close(self) -> None:
        self.client.rest.close()
        self.store.close()

    def experiments(self) -> tuple[dict[str, Experiment], list[str]]:
        """The configured experiments that exist (by id), and the configured names that do not."""
        return self.lister.experiments()

    def list_runs(
        self,
        since_ms: int | None = None,
        watch_ids: Iterable[str] = (),
        mirrored_ids: Collection[str] = (),
    ) -> RunListing:
        """See RunLister.list_runs."""
        return self.lister.list_runs(since_ms, watch_ids, mirrored_ids)

    def matches_filter(self, run_id: str, experiment_id: str) -> bool:
        """See RunLister.matches_filter."""
        return self.lister.matches_filter(run_id, experiment_id)

    def run(self, run_id: str) -> RunSnapshot:
        """The run as runs/get shows it. Raises SourceError (HttpStatusError if unknown)."""
        return self.client.run(run_id)

    def run_state(self, run_id: str) -> RunState:
        """See MlflowClient.run_state."""
        return self.client.run_state(run_id)

    def fetch(self, requests: list[HistoryRequest]) -> dict[tuple[str, str], History]:
        """See Histories.fetch."""
        return self.histories.fetch(requests)

    def artifacts_of(self, runs: dict[RunRef, bool]) -> dict[str, list[Artifact] | SourceError]:
        """See RunArtifacts.listed."""
        return self.artifacts.listed(runs)

    def artifact_file(self, run: RunRef, artifact: Artifact) -> FileReader:
        return self.artifacts.file(run, artifact)

    def artifact_bytes(self, run: RunRef, artifact: Artifact) -> bytes:
        """See RunArtifacts.whole."""
        return self.artifacts.whole(run, artifact)
