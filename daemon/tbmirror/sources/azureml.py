"""Azure ML's artifact store: a run's files (its `logs/` and `outputs/` folders) through the
workspace's run history artifact service, read from Azure Blob Storage by signed URL.

The calls are those `azureml-mlflow` 1.62.0.post6 makes (its `_restclient/run_artifact`), below
`https://<region>.api.azureml.ms/history/v1.0/subscriptions/<id>/resourceGroups/<group>/providers/
Microsoft.MachineLearningServices/workspaces/<name>` (the tracking URI's host and workspace):

- `GET .../experimentids/<experiment>/runs/<run>/artifacts`: the whole run (as azureml-mlflow
  lists it, filtering by prefix itself), flat, paged by `nextLink` (followed as given, when it is
  below the workspace's address) or `continuationToken`, with each file's `etag` but no size;
- `GET .../artifacts/contentinfo?path=<path>`: the file's `contentUri`, a blob URL with a SAS token.

The token is the source's own (`azure` auth: the workspace's management scope). A file's size and
ETag come from a one-byte ranged GET on its blob, kept under the listed `etag` (a file listed with
the same `etag` again costs no request), its bytes from ranged GETs (206 answers); a SAS is kept
while it works and renewed once when the storage refuses it (stores.SignedFile).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator

from tbmirror.config import ArtifactSettings
from tbmirror.sources.http import BadAnswerError, RestClient
from tbmirror.sources.responses import (
    AzureArtifactJson,
    AzureArtifactsPage,
    AzureContentInfo,
    pages,
    parse,
)
from tbmirror.sources.stores import (
    Artifact,
    FileReader,
    ListingLimit,
    RunRef,
    SignedUrl,
    SignedUrls,
    listed,
)

HISTORY_API = "/history/v1.0"
MIN_PAGES = 1000  # pages of one run's listing at least (files outside `artifacts.paths` too)


class AzureMlArtifacts:
    """The artifact store of an Azure ML workspace (see the module docstring). Thread-safe."""

    sizes_listed = False

    def __init__(
        self, settings: ArtifactSettings, history: RestClient, storage: RestClient
    ) -> None:
        """`history`: the workspace's run history API; `storage`: for signed blob URLs."""
        self.settings, self._history, self._storage = settings, history, storage
        self._signed = SignedUrls(storage, self._content_uri)

    @property
    def requests_made(self) -> int:
        return self._history.requests_made + self._storage.requests_made

    def files(self, run: RunRef, images_folder: bool) -> list[Artifact]:
        """The run's files within `artifacts.paths` (`max_listed` counts those kept), from one
        listing of the whole run, as azureml-mlflow lists (a folder's listing is not known to
        hold its subfolders' files)."""
        limit = ListingLimit(self.settings, run)
        found: dict[str, Artifact] = {}
        for item in self._listing(run):
            if listed(self.settings, item.path, images_folder):
                limit.take()
                found[item.path] = Artifact(item.path, None, item.etag)
        return sorted(found.values(), key=lambda artifact: artifact.path)

    def _listing(self, run: RunRef) -> Iterator[AzureArtifactJson]:
        """Every artifact of the run, page by page, each next page from the `nextLink` the page
        before gave, as given (its `continuationToken` on our URL when it gives none)."""
        endpoint = _run_endpoint(run, "artifacts")
        next_link: str | None = None

        def fetch(extra: dict[str, str]) -> bytes:
            if not extra or next_link is None:
                return self._history.get(endpoint, extra)
            if not self._history.is_below_base(next_link):
                raise BadAnswerError(f"GET {endpoint}: a nextLink that leads elsewhere")
            return self._history.get(endpoint, url=next_link)

        for page in pages(
            fetch,
            AzureArtifactsPage,
            endpoint,
            token_param="continuationToken",
            max_pages=max(self.settings.max_listed, MIN_PAGES),  # (empty pages count too)
        ):
            next_link = page.next_link
            yield from page.value

    def reader(self, run: RunRef, artifact: Artifact) -> FileReader:
        return self._signed.reader(run, artifact)

    def _content_uri(self, run: RunRef, path: str) -> SignedUrl:
        endpoint = _run_endpoint(run, "artifacts/contentinfo")
        info = parse(AzureContentInfo, self._history.get(endpoint, {"path": path}), endpoint)
        return SignedUrl(info.content_uri)

    def close(self) -> None:
        self._history.close()
        self._storage.close()


def _run_endpoint(run: RunRef, call: str) -> str:
    """The path of a run's artifact call below the workspace (ids quoted: never a path escape)."""
    experiment = urllib.parse.quote(run.experiment_id, safe="")
    run_id = urllib.parse.quote(run.run_id, safe="")
    return f"/experimentids/{experiment}/runs/{run_id}/{call}"
