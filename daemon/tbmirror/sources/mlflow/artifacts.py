"""Runs' artifacts: MLflow's own artifact store, and listing and reading through any store.

`MlflowArtifacts` is the store of an MLflow server (`artifacts/list`, one folder a call, with
sizes; files read with ranged `/get-artifact` requests); Azure ML and Databricks have their own
(sources/azureml.py, sources/databricks.py). `RunArtifacts` lists many runs' files concurrently
through the source's store and reads them, whichever store it is.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from tbmirror.config import ArtifactSettings
from tbmirror.errors import SourceError
from tbmirror.sources.http import BadAnswerError, HttpStatusError, RestClient
from tbmirror.sources.mlflow.client import MlflowClient
from tbmirror.sources.stores import (
    Artifact,
    ArtifactStore,
    FileReader,
    ListingLimit,
    ListingTooLargeError,
    RunRef,
    listed,
    skipped_folder,
)


class ArtifactFile:
    """One artifact of a run, read over HTTP Range requests to `/get-artifact` (a `FileReader`).

    `size` is the size the listing gave; no identity (a server does not tell).
    """

    identity: str | None = None

    def __init__(self, rest: RestClient, run_id: str, path: str, size: int) -> None:
        self._rest, self._params, self.size = rest, {"run_id": run_id, "path": path}, size

    def read(self, start: int, end: int) -> bytes:
        return self._rest.get_range("/get-artifact", self._params, start, end, self.size)


class MlflowArtifacts:
    """The artifact store of an MLflow server: `artifacts/list` (one folder a call, with sizes),
    walked down to `artifacts.max_depth`; files read with `/get-artifact` Range requests."""

    sizes_listed = True
    requests_made = 0  # (counted by the source's client, which it shares)

    def __init__(self, settings: ArtifactSettings, client: MlflowClient) -> None:
        self.settings, self.client = settings, client

    def files(self, run: RunRef, images_folder: bool) -> list[Artifact]:
        settings = self.settings
        limit = ListingLimit(settings, run)
        found: dict[str, Artifact] = {}  # by path: a server listing one twice lists it once
        folders = [(folder, folder.count("/") + 1) for folder in settings.paths] or [("", 0)]
        while folders:
            folder, depth = folders.pop()
            listing = self.client.artifacts(run.run_id, folder, max_pages=settings.max_listed)
            for path, is_dir, size in listing:
                limit.take()
                if not is_dir:
                    if listed(settings, path, images_folder):
                        found[path] = Artifact(path, size)
                elif depth < settings.max_depth and not (
                    depth == 0 and skipped_folder(path, images_folder)
                ):
                    folders.append((path, depth + 1))
        return sorted(found.values(), key=lambda artifact: artifact.path)

    def reader(self, run: RunRef, artifact: Artifact) -> FileReader:
        return ArtifactFile(self.client.rest, run.run_id, artifact.path, artifact.size or 0)

    def close(self) -> None:
        """Nothing of its own: it shares the source's client."""


class RunArtifacts:
    """Lists and reads runs' artifacts through one artifact store. Thread-safe (as the store)."""

    def __init__(self, store: ArtifactStore, concurrency: int) -> None:
        self.store, self.concurrency = store, concurrency

    def listed(self, runs: dict[RunRef, bool]) -> dict[str, list[Artifact] | SourceError]:
        """The artifact files of each run (-> whether to list its `images/` folder), by run id,
        listed concurrently; the error for a run whose listing the server refused. Raises
        SourceError when the server cannot be reached."""

        def one(run: RunRef) -> list[Artifact] | SourceError:
            try:
                return self.store.files(run, runs[run])
            except (HttpStatusError, BadAnswerError, ListingTooLargeError) as error:
                return error  # this run's; not the source's

        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="artifacts") as pool:
            found = pool.map(one, runs)
            return {run.run_id: files for run, files in zip(runs, found, strict=True)}

    def file(self, run: RunRef, artifact: Artifact) -> FileReader:
        return self.store.reader(run, artifact)

    def whole(self, run: RunRef, artifact: Artifact) -> bytes:
        """The whole artifact, exactly the size listed. Raises SourceError (BadAnswerError if it
        changed since it was listed)."""
        reader = self.file(run, artifact)
        size = reader.size
        data = reader.read(0, size) if size else b""
        if len(data) != size:
            raise BadAnswerError(
                f"{artifact.path}: {len(data)} bytes read, {size} listed (it changed)"
            )
        return data
