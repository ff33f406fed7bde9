"""One configured MLflow source: its client, listing, histories and artifacts, built from its
settings (the RunSource an MlflowEngine reads, engine/mlflow/source.py)."""

from __future__ import annotations

from collections.abc import Collection, Iterable

from tbmirror.config import MlflowSourceSettings
from tbmirror.errors import SourceError
from tbmirror.model import Experiment, RunSnapshot
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
