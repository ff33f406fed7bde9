"""What the MLflow engine needs of a source (`RunSource`), and nothing of how it is read.

`sources.mlflow.MlflowSource` is the one over MLflow's REST API; tests may hand in their own.
Every call may raise SourceError (StoppedError once the daemon stops); what one run's failure
looks like is said per call.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Protocol

from tbmirror.config import MlflowSourceSettings
from tbmirror.errors import SourceError
from tbmirror.model import RunSnapshot
from tbmirror.sources.mlflow import History, HistoryRequest, RunListing, RunState
from tbmirror.sources.stores import Artifact, FileReader, RunRef


class RunSource(Protocol):
    """One configured MLflow source, as an engine reads it. One caller at a time."""

    @property
    def settings(self) -> MlflowSourceSettings: ...

    @property
    def name(self) -> str: ...

    @property
    def requests_made(self) -> int:
        """Requests sent so far (a pass reports the difference)."""
        ...

    @property
    def answered_at(self) -> float | None:
        """Wall time of the server's last answer (None: none yet); may be read from any thread."""
        ...

    @property
    def artifact_sizes_listed(self) -> bool:
        """Whether artifact listings give every file's size (media change detection needs it)."""
        ...

    def list_runs(
        self,
        since_ms: int | None = None,
        watch_ids: Iterable[str] = (),
        mirrored_ids: Collection[str] = (),
    ) -> RunListing:
        """A full listing (`since_ms` None) or a quick one: runs running, started at or after
        `since_ms`, or in `watch_ids`; children in other experiments of `mirrored_ids` too."""
        ...

    def fetch(self, requests: list[HistoryRequest]) -> dict[tuple[str, str], History]:
        """Each requested series past its cursor; a series the server refused carries its
        `failure` (its run fails, not the pass)."""
        ...

    def run(self, run_id: str) -> RunSnapshot:
        """The run as the server shows it now."""
        ...

    def run_state(self, run_id: str) -> RunState:
        """Whether the server shows the run active or deleted, or says it does not exist;
        anything less clear raises (it proves nothing)."""
        ...

    def matches_filter(self, run_id: str, experiment_id: str) -> bool:
        """Whether the server says the run matches the configured `filter`; False only with a
        control (the same search without the filter finds the run), else it raises."""
        ...

    def artifacts_of(self, runs: dict[RunRef, bool]) -> dict[str, list[Artifact] | SourceError]:
        """Each run's artifact files (-> whether to list its `images/` folder), by run id; the
        error for a run whose listing was refused (that run fails, not the pass)."""
        ...

    def artifact_file(self, run: RunRef, artifact: Artifact) -> FileReader: ...

    def artifact_bytes(self, run: RunRef, artifact: Artifact) -> bytes:
        """The whole artifact, exactly the size listed."""
        ...

    def close(self) -> None: ...
