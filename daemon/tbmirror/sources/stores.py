"""Artifact stores: where a run's artifact files are listed and read, whichever service keeps them.

An `ArtifactStore` lists a run's files (`Artifact`: path below the run's artifact root, size if the
listing gives one) and hands out a reader per file: `size`, `identity` and `read(start, end)`,
what engine/tailing.py tails and media.py downloads. Three stores exist:

- MLflow's own endpoints (sources/mlflow/artifacts.py): `artifacts/list`, ranged
  `/get-artifact` reads;
- Databricks (sources/databricks.py): the same listing, reads through signed URLs;
- Azure ML (sources/azureml.py): the run history's artifact listing, reads through signed URLs.

A `SignedFile` reads one file through a signed URL (an Azure SAS, a presigned S3 or GCS URL) that
its store hands out and renews: the URL is kept while it works, and a 401 or 403 from the storage
gets one freshly signed URL, then the read goes on from where it was; a second refusal is an error
for that file's run only. Signed URLs are secrets: they are sent, never logged, never in an error.
"""

from __future__ import annotations

import threading
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from tbmirror.config import ArtifactSettings
from tbmirror.errors import AuthError, SourceError
from tbmirror.sources.http import BadAnswerError, HttpStatusError, RestClient

KEPT_URLS = 4096
KEPT_PROBES = 65536  # files whose probed size is kept under their listed ETag
IMAGES_FOLDER = "images"  # where log_image(key=, step=) puts its series
TABLE_IMAGES_FOLDER = "table_images"  # images inside logged tables: never listed

Result = TypeVar("Result")


@dataclass(frozen=True)
class Artifact:
    """A file among a run's artifacts: its path below the run's artifact root, and its size
    (None when the store's listing does not give sizes: its reader tells)."""

    path: str
    size: int | None
    etag: str | None = None  # from a listing that gives one: changes whenever the file does


@dataclass(frozen=True)
class RunRef:
    """What a store needs to find a run's artifacts: `artifact_uri` is the run's artifact root as
    its source listed it (None: not known; a store that needs it asks otherwise)."""

    run_id: str
    experiment_id: str
    artifact_uri: str | None = field(default=None, compare=False)


class FileReader(Protocol):
    """One artifact as it is now (the shape engine/tailing.py reads)."""

    @property
    def size(self) -> int: ...

    @property
    def identity(self) -> str | None: ...

    def read(self, start: int, end: int) -> bytes: ...


class ArtifactStore(Protocol):
    """Lists and reads runs' artifacts; thread-safe (runs are listed concurrently)."""

    @property
    def sizes_listed(self) -> bool:
        """Whether `files` gives every file's size (media change detection needs them)."""
        ...

    @property
    def requests_made(self) -> int:
        """Requests it sent with clients of its own."""
        ...

    def files(self, run: RunRef, images_folder: bool) -> list[Artifact]:
        """The run's files by path, within `artifacts.paths`, `max_depth` and `max_listed`;
        `images/` only if `images_folder`, `table_images/` never. Raises SourceError."""
        ...

    def reader(self, run: RunRef, artifact: Artifact) -> FileReader: ...

    def close(self) -> None: ...


def listed(settings: ArtifactSettings, path: str, images_folder: bool) -> bool:
    """Whether a listed file is among those `files` returns: within `max_depth` and
    `artifacts.paths`, and not in a skipped top-level folder (see `skipped_folder`)."""
    parts = path.split("/")
    if len(parts) - 1 > settings.max_depth or not all(parts):
        return False
    if settings.paths and not any(path.startswith(f"{folder}/") for folder in settings.paths):
        return False
    return len(parts) == 1 or not skipped_folder(parts[0], images_folder)


def skipped_folder(folder: str, images_folder: bool) -> bool:
    """Whether a top-level folder is left out: `table_images/` always, `images/` (log_image
    series, hundreds of files) unless the run logged image series and they are wanted."""
    return folder == TABLE_IMAGES_FOLDER or (folder == IMAGES_FOLDER and not images_folder)


class ListingTooLargeError(SourceError):
    """A run has more artifacts than `artifacts.max_listed` (an error for that run only)."""


class ListingLimit:
    """Counts a run's listed entries against `artifacts.max_listed`."""

    def __init__(self, settings: ArtifactSettings, run: RunRef) -> None:
        self._left, self._run, self._limit = settings.max_listed, run, settings.max_listed

    def take(self) -> None:
        """Count one entry; raises SourceError once the limit is passed."""
        self._left -= 1
        if self._left < 0:
            raise ListingTooLargeError(
                f"run {self._run.run_id}: more than artifacts.max_listed ({self._limit}) "
                "artifacts listed: narrow artifacts.paths or raise the limit"
            )


@dataclass(frozen=True)
class SignedUrl:
    """A signed URL for one file, and headers the storage wants with it (both secret)."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            parts = urllib.parse.urlsplit(self.url)
            parts.port  # noqa: B018 (raises ValueError for a port that is not one)
        except ValueError:
            parts = urllib.parse.urlsplit("")
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise BadAnswerError("a signed URL that is not an http(s) URL")

    @property
    def shown(self) -> str:
        """How the URL is named in errors and logs: scheme, host, port and path (never a query,
        nor a user:password@)."""
        parts = urllib.parse.urlsplit(self.url)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"


class SignedUrls:
    """The readers of a store whose files are read through signed URLs, and the URLs handed out,
    kept while they work (the last KEPT_URLS used: a live run's files are read pass after pass).
    Thread-safe."""

    def __init__(self, storage: RestClient, sign: Callable[[RunRef, str], SignedUrl]) -> None:
        """`storage`: a client without credentials of ours; `sign`: a new URL for a file."""
        self._storage, self._sign = storage, sign
        self._lock = threading.Lock()
        self._urls: OrderedDict[tuple[str, str], SignedUrl] = OrderedDict()
        # (run, path) -> (the listing's ETag, the size and identity a probe found under it)
        self._probed: OrderedDict[tuple[str, str], tuple[str, int, str | None]] = OrderedDict()

    def reader(self, run: RunRef, artifact: Artifact) -> SignedFile:
        """A reader of the file. Its size and identity: the listing's size, or those a probe
        found for the ETag the listing gives now (no request: an unchanged file costs nothing
        but its listing), or a probe."""
        key = (run.run_id, artifact.path)
        with self._lock:
            probed = self._probed.get(key)
        known = probed[1:] if probed and artifact.etag and probed[0] == artifact.etag else None

        def remember(size: int, identity: str | None) -> None:
            if artifact.etag:
                with self._lock:
                    self._probed[key] = (artifact.etag, size, identity)
                    self._probed.move_to_end(key)
                    while len(self._probed) > KEPT_PROBES:
                        self._probed.popitem(last=False)

        return SignedFile(
            self._storage,
            artifact.path,
            lambda fresh: self.get(run, artifact.path, fresh),
            artifact.size,
            known=known,
            probed=remember,
        )

    def get(self, run: RunRef, path: str, fresh: bool = False) -> SignedUrl:
        """The kept URL of (run, path), or (when none is kept, or `fresh`) a newly signed one."""
        key = (run.run_id, path)
        with self._lock:
            kept = None if fresh else self._urls.get(key)
            if kept is not None:
                self._urls.move_to_end(key)
                return kept
        signed = self._sign(run, path)
        with self._lock:
            self._urls[key] = signed
            self._urls.move_to_end(key)
            while len(self._urls) > KEPT_URLS:
                self._urls.popitem(last=False)
        return signed


class SignedFile:
    """One artifact read through a signed URL (a `FileReader`): `size` from the listing, or from a
    one-byte read (with the ETag as `identity`) when the listing has none."""

    def __init__(
        self,
        storage: RestClient,
        name: str,
        sign: Callable[[bool], SignedUrl],
        size: int | None,
        *,
        known: tuple[int, str | None] | None = None,
        probed: Callable[[int, str | None], None] | None = None,
    ) -> None:
        """`sign(fresh)`: the file's URL (kept, or freshly signed); `name` names the file;
        `known`: its (size, identity) as known without a probe; `probed` hears a probe's."""
        self._storage, self._name, self._sign = storage, name, sign
        self._size: int | None = known[0] if known is not None else size
        self._identity: str | None = known[1] if known is not None else None
        self._probed = probed

    @property
    def size(self) -> int:
        if self._size is None:
            self._size, self._identity = self._signed(
                lambda signed: self._storage.probe(
                    signed.shown, url=signed.url, headers=signed.headers
                )
            )
            if self._probed is not None:
                self._probed(self._size, self._identity)
        return self._size

    @property
    def identity(self) -> str | None:
        self.size  # noqa: B018 (probes, if the listing gave no size)
        return self._identity

    def read(self, start: int, end: int) -> bytes:
        size = self.size
        return self._signed(
            lambda signed: self._storage.get_range(
                signed.shown, None, start, end, size, url=signed.url, headers=signed.headers
            )
        )

    def _signed(self, call: Callable[[SignedUrl], Result]) -> Result:
        """`call` with the kept URL; refused (401/403, or 400 as GCS answers an expired one),
        once more with a fresh one; refused again, an error for this file's run."""
        kept = self._sign(False)  # (the signing service refusing us is the source's error)
        try:
            return call(kept)
        except (AuthError, HttpStatusError) as error:
            if not _refused(error):
                raise
        fresh = self._sign(True)
        try:
            return call(fresh)
        except (AuthError, HttpStatusError) as error:
            if not _refused(error):
                raise
            raise BadAnswerError(
                f"{self._name}: the storage refused a freshly signed URL too (HTTP 400/401/403): "
                "the URL's signature or permissions are wrong, or the storage denies access"
            ) from None


def _refused(error: SourceError) -> bool:
    """Whether the storage refused a signed URL (rather than failing otherwise)."""
    return isinstance(error, AuthError) or (
        isinstance(error, HttpStatusError) and error.status_code == 400
    )
