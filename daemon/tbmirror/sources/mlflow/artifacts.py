"""Runs' artifacts: MLflow's own artifact store, and listing and reading through any store.

`MlflowArtifacts` is the store of an MLflow server (`mlflow-artifacts/artifacts` or
`artifacts/list`, one folder a call, with sizes; files read with ranged `/get-artifact`
requests); Azure ML and Databricks have their own (sources/azureml.py, sources/databricks.py).
`RunArtifacts` lists many runs' files concurrently through the source's store and reads them,
whichever store it is.
"""

from __future__ import annotations

import threading
import urllib.parse
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

import httpx
import structlog

from tbmirror.config import ArtifactSettings
from tbmirror.errors import SourceError
from tbmirror.sources.http import BadAnswerError, HttpStatusError, RestClient
from tbmirror.sources.mlflow.client import MlflowClient, NotServedError
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

log = structlog.get_logger(__name__)
DEFAULT_PORTS = {"http": 80, "https": 443}


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
    """The artifact store of an MLflow server, walked one folder a call (with sizes) down to
    `artifacts.max_depth`; files read with `/get-artifact` Range requests.

    A run whose artifact root is in the server's own store (`mlflow-artifacts:/<path>`, what
    `mlflow server` gives runs by default) is listed through `mlflow-artifacts/artifacts`, for
    which the server reads no run; any other through `artifacts/list`, for which it reads the
    run (its latest metrics, params and tags) for every folder. A server, or a gateway before
    it, that does not serve the former makes the store use the latter from then on (logged
    once). Either way the same files: paths from the run's artifact root; an entry that is not
    one name inside the folder listed (empty, `.`, `..`, a `/` or NUL in it) is refused.
    """

    sizes_listed = True
    requests_made = 0  # (counted by the source's client, which it shares)

    def __init__(self, settings: ArtifactSettings, client: MlflowClient) -> None:
        self.settings, self.client = settings, client
        url = httpx.URL(client.rest.display_url)
        self._authority = (url.host, url.port or DEFAULT_PORTS.get(url.scheme))
        self._lock = threading.Lock()
        self.served = True  # False once the server refused its store's endpoint

    def files(self, run: RunRef, images_folder: bool) -> list[Artifact]:
        root = self.served_root(run.artifact_uri) if self.served else None
        if root is not None:
            try:
                return self._walk(run, images_folder, lambda folder: (
                    (_joined(folder, name), is_dir, size)
                    for name, is_dir, size in self.client.served_artifacts(
                        _joined(root, folder), max_pages=self.settings.max_listed)
                ))  # fmt: skip
            except NotServedError as error:
                self._not_served(error)
        return self._walk(run, images_folder, lambda folder: self.client.artifacts(
            run.run_id, folder, max_pages=self.settings.max_listed))  # fmt: skip

    def served_root(self, artifact_uri: str | None) -> str | None:
        """The path in the server's own store of a run artifact root `mlflow-artifacts:/<path>`
        (or `mlflow-artifacts://<host>:<port>/<path>` naming this server); None for any other."""
        parts = urllib.parse.urlsplit(artifact_uri or "")
        if parts.scheme != "mlflow-artifacts":
            return None
        try:
            authority = (parts.hostname, parts.port or self._authority[1])
        except ValueError:  # a port that is not one
            return None
        if parts.netloc and authority != self._authority:
            return None  # another server's store
        path = parts.path.strip("/")
        return path if path and all(map(_one_name, path.split("/"))) else None

    def _walk(
        self,
        run: RunRef,
        images_folder: bool,
        listing: Callable[[str], Iterable[tuple[str, bool, int]]],
    ) -> list[Artifact]:
        """The run's files, `listing(folder)` giving (path, is_dir, size) of a folder's entries."""
        settings = self.settings
        limit = ListingLimit(settings, run)
        found: dict[str, Artifact] = {}  # by path: a server listing one twice lists it once
        folders = [(folder, folder.count("/") + 1) for folder in settings.paths] or [("", 0)]
        while folders:
            folder, depth = folders.pop()
            for path, is_dir, size in listing(folder):
                limit.take()
                name = path.rpartition("/")[2]
                if not _one_name(name) or _joined(folder, name) != path:
                    log.warning("artifact_entry_refused", run_id=run.run_id, folder=folder,
                                entry=path[:200])  # fmt: skip
                elif not is_dir:
                    if listed(settings, path, images_folder):
                        found[path] = Artifact(path, size)
                elif depth < settings.max_depth and not (
                    depth == 0 and skipped_folder(path, images_folder)
                ):
                    folders.append((path, depth + 1))
        return sorted(found.values(), key=lambda artifact: artifact.path)

    def _not_served(self, error: NotServedError) -> None:
        """From now on, list every run with `artifacts/list` (said once)."""
        with self._lock:
            if not self.served:
                return
            self.served = False
        log.warning("served_artifacts_unavailable", server=self.client.rest.display_url,
                    error=str(error), listing_with="artifacts/list")  # fmt: skip

    def reader(self, run: RunRef, artifact: Artifact) -> FileReader:
        return ArtifactFile(self.client.rest, run.run_id, artifact.path, artifact.size or 0)

    def close(self) -> None:
        """Nothing of its own: it shares the source's client."""


def _one_name(name: str) -> bool:
    """Whether `name` is one file or folder name: not empty, `.` or `..`; no `/` or NUL."""
    return name not in ("", ".", "..") and "/" not in name and "\x00" not in name


def _joined(folder: str, name: str) -> str:
    return f"{folder}/{name}" if folder else name


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
