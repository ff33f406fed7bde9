"""The MLflow source: run listings and metric histories over MLflow's REST API (no mlflow package).

`MlflowSource.list_runs` returns every run of the configured experiments (child runs logged into
other experiments included) with each metric key's latest point; `MlflowSource.fetch` returns the
points of each requested series past its cursor; `MlflowSource.artifacts_of` lists runs' artifact
files through the source's artifact store (stores.py: MLflow's own `MlflowArtifacts` here, Azure
ML's or Databricks'), whose readers tailing.py and media.py read.

History cursors: MLflow orders a key's history by (timestamp, step, value) and pages it by offset,
and a late point with an older timestamp lands in the middle. For a cursor of `count` points whose
last is `last`, we read from offset count-1: if the first point returned is `last`, everything after
it is new. Otherwise points were inserted before the cursor and the whole series is returned for
the caller to diff (`History.full`). Servers whose page tokens are opaque (Databricks, Azure ML)
get the whole series and the same check is made locally.
"""

from __future__ import annotations

import base64
import fnmatch
import json
import re
import sys
import threading
from collections import defaultdict
from collections.abc import Callable, Collection, Generator, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import structlog

from tbmirror.config import (
    ArtifactSettings,
    MlflowSourceSettings,
    azureml_workspace,
    without_userinfo,
)
from tbmirror.errors import SourceError
from tbmirror.model import Cursor, Experiment, MetricPoint, RunSnapshot
from tbmirror.sources.auth import build_auth
from tbmirror.sources.azureml import HISTORY_API, AzureMlArtifacts
from tbmirror.sources.databricks import DatabricksArtifacts
from tbmirror.sources.http import BadAnswerError, HttpStatusError, RestClient
from tbmirror.sources.responses import (
    MAX_PAGES,
    ExperimentAnswer,
    ExperimentJson,
    ExperimentsPage,
    FilesPage,
    HistoryPage,
    MetricJson,
    RunAnswer,
    RunJson,
    RunsPage,
    metrics_of,
    pages,
    parse,
)
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

API = "/api/2.0/mlflow"
AJAX_API = "/ajax-api/2.0/mlflow"
SEARCH_PAGE_SIZE = 1000
HISTORY_PAGE_SIZE = 25000
MAX_HISTORY_PAGES = 4000  # 100 M points of one series in one pass
BULK_MAX_RUNS = 100
BULK_MAX_RESULTS = 25000
PARENT_TAG = "mlflow.parentRunId"
TOP_LEVEL = f"tags.`{PARENT_TAG}` IS NULL"
CHILD = f"tags.`{PARENT_TAG}` IS NOT NULL"
_RUN_ID = re.compile(r"^[A-Za-z0-9][\w-]{0,255}$")
RUN_NAME_TAG = "mlflow.runName"
NOTE_TAG = "mlflow.note.content"


class SeriesChangedError(SourceError):
    """A series changed while it was read page by page: the rest is read at the next pass."""


class SelectionError(SourceError):
    """The server refused the configured `filter`."""


@dataclass
class RunListing:
    """One listing of a source: its experiments, and its runs read page by page as they are
    iterated (each once, oldest first: a parent mostly before its children; a child in another
    experiment after its parent). `listed` and `deleted` hold the ids of the runs iterated so
    far; a listing is complete only once its runs have been iterated to the end without an
    error."""

    experiments: dict[str, Experiment]
    runs: Iterator[RunSnapshot]
    missing_experiments: list[str] = field(default_factory=list)
    listed: set[str] = field(default_factory=set)
    deleted: set[str] = field(default_factory=set)

    def note(self, run: RunSnapshot) -> None:
        """Count `run` as iterated."""
        self.listed.add(run.run_id)
        if run.deleted:
            self.deleted.add(run.run_id)


@dataclass(frozen=True)
class HistoryRequest:
    run_id: str
    key: str
    cursor: Cursor


Pages = Iterator[list[MetricPoint]]


@dataclass
class History:
    """The points of one series past its cursor: `new` now, then the pages of `more` (fetched as
    they are read); or, when those cannot be told, `full`: the whole series again, page by page
    from its start (each call fetches it anew), for the caller to diff with what it wrote."""

    new: list[MetricPoint]
    more: Pages | None = None
    full: Callable[[], Pages] | None = None
    error: str | None = None  # the server refused this one series (its run fails, others go on)


def point_from_json(item: MetricJson) -> MetricPoint:
    """A metric point (values may be numbers or "NaN"/"Infinity" strings)."""
    try:
        value = float(item.value)
    except ValueError:
        raise BadAnswerError(f"a metric value that is not a number ({item.key})") from None
    return MetricPoint(item.timestamp, item.step, value)


class LatestPoints(Mapping[str, MetricPoint]):
    """A run's latest point of each key as a listing gave them (their JSON), decoded when first
    read: a full listing decodes only the runs it looks into. Reading one raises BadAnswerError
    if they are of the wrong shape or a value is not a number."""

    __slots__ = ("_metrics", "_points")

    def __init__(self, metrics: bytes) -> None:
        self._metrics = metrics
        self._points: dict[str, MetricPoint] | None = None

    def _converted(self) -> dict[str, MetricPoint]:
        if self._points is None:
            points = {metric.key: point_from_json(metric) for metric in metrics_of(self._metrics)}
            self._points, self._metrics = points, b""
        return self._points

    def __getitem__(self, key: str) -> MetricPoint:
        return self._converted()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._converted())

    def __len__(self) -> int:
        return len(self._converted())


def run_from_json(item: RunJson) -> RunSnapshot:
    """The run `item` shows; its fingerprint hashes all it says (within a process)."""
    info, data = item.info, item.data
    tags = {tag.key: tag.value for tag in data.tags}
    metrics = bytes(data.metrics)  # (a copy: a decoded Raw holds its whole page)
    return RunSnapshot(
        run_id=sys.intern(info.run_id),  # one string for the id in every set a pass keeps
        experiment_id=info.experiment_id,
        name=info.run_name or tags.get(RUN_NAME_TAG) or info.run_id,
        status=info.status,
        lifecycle_stage=info.lifecycle_stage,
        start_time=info.start_time,
        end_time=info.end_time,
        parent_run_id=tags.get(PARENT_TAG) or None,
        params={param.key: param.value for param in data.params},
        tags=tags,
        latest=LatestPoints(metrics),
        fingerprint=hash((info, data.params, data.tags, metrics)),
    )


def _offset_token(offset: int) -> str:
    return base64.b64encode(json.dumps({"offset": offset}).encode()).decode()


class MlflowClient:
    """Typed calls to the MLflow REST endpoints tbmirror uses; every answer validated
    (responses.py) and every paged listing checked to advance."""

    def __init__(self, rest: RestClient) -> None:
        self.rest = rest

    def experiment_by_name(self, name: str) -> Experiment | None:
        endpoint = f"{API}/experiments/get-by-name"
        try:
            body = self.rest.get(endpoint, {"experiment_name": name})
        except HttpStatusError as error:
            if error.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None  # a 404 without it is not MLflow's answer: an error
            raise
        return _experiment(parse(ExperimentAnswer, body, endpoint).experiment)

    def experiments(self) -> list[Experiment]:
        """Every active experiment."""
        endpoint = f"{API}/experiments/search"
        body = {"max_results": 1000, "view_type": "ACTIVE_ONLY"}
        found = pages(
            lambda extra: self.rest.post(endpoint, body | extra), ExperimentsPage, endpoint
        )
        return [_experiment(item) for page in found for item in page.experiments]

    def search_runs(
        self, experiment_ids: list[str], filter_string: str = ""
    ) -> Iterator[RunSnapshot]:
        """All runs (deleted ones too) of `experiment_ids`, oldest start time first."""
        endpoint = f"{API}/runs/search"
        body = {
            "experiment_ids": experiment_ids,
            "filter": filter_string,
            "run_view_type": "ALL",
            "max_results": SEARCH_PAGE_SIZE,
            "order_by": ["attributes.start_time ASC"],
        }
        for page in pages(lambda extra: self.rest.post(endpoint, body | extra), RunsPage, endpoint):
            yield from (run_from_json(item) for item in page.runs)

    def run(self, run_id: str) -> RunSnapshot:
        """The run as runs/get shows it. Raises SourceError (HttpStatusError if unknown)."""
        endpoint = f"{API}/runs/get"
        body = self.rest.get(endpoint, {"run_id": run_id})
        run = run_from_json(parse(RunAnswer, body, endpoint).run)
        if run.run_id != run_id:
            raise BadAnswerError(f"{endpoint}: asked for run {run_id}, got {run.run_id}")
        return run

    def run_state(self, run_id: str) -> str:
        """ "active", "deleted", or "gone" (the server says it does not exist: a JSON 404 with
        RESOURCE_DOES_NOT_EXIST). Anything else raises: it proves nothing."""
        try:
            run = self.run(run_id)
        except HttpStatusError as error:
            if error.status_code == 404 and error.error_code == "RESOURCE_DOES_NOT_EXIST":
                return "gone"
            raise
        return "deleted" if run.deleted else "active"

    def history(
        self, run_id: str, key: str, start: str | None = None
    ) -> Generator[tuple[list[MetricPoint], str | None], None, None]:
        """The key's history from the page token `start` (None: its first point) to its end, a
        page (HISTORY_PAGE_SIZE points) at a time, each fetched as the one before is taken; with
        each page, the token of the next (None: it is the last)."""
        endpoint = f"{API}/metrics/get-history"
        params = {"run_id": run_id, "metric_key": key, "max_results": HISTORY_PAGE_SIZE}
        found = pages(
            lambda extra: self.rest.get(endpoint, params | extra),
            HistoryPage,
            endpoint,
            start=start,
            max_pages=MAX_HISTORY_PAGES,
        )
        for page in found:
            yield [point_from_json(item) for item in page.metrics], page.next_page_token

    def history_bulk(self, run_ids: list[str], key: str) -> dict[str, list[MetricPoint]] | None:
        """Whole histories of `key` for up to 100 runs in one request.

        Returns only the runs whose history is certainly complete (the answer is capped at
        BULK_MAX_RESULTS points, cutting the last run short); None if the server lacks the endpoint.
        """
        endpoint = f"{AJAX_API}/metrics/get-history-bulk"
        try:
            body = self.rest.get(
                endpoint,
                {"run_id": sorted(run_ids), "metric_key": key, "max_results": BULK_MAX_RESULTS},
            )
        except HttpStatusError as error:
            if error.status_code in (404, 405, 501):
                return None
            raise
        items = parse(HistoryPage, body, endpoint).metrics
        by_run: dict[str, list[MetricPoint]] = defaultdict(list)
        for item in items:
            if item.run_id not in run_ids:
                raise BadAnswerError(f"{endpoint}: a point of a run that was not asked for")
            by_run[item.run_id].append(point_from_json(item))
        if len(items) < BULK_MAX_RESULTS:
            return {run_id: by_run.get(run_id, []) for run_id in run_ids}
        cut = items[-1].run_id or ""
        return {run_id: by_run.get(run_id, []) for run_id in run_ids if run_id < cut}

    def artifacts(
        self, run_id: str, path: str = "", max_pages: int = MAX_PAGES
    ) -> Iterator[tuple[str, bool, int]]:
        """(path, is_dir, size) of the entries of one artifact folder (one level)."""
        endpoint = f"{API}/artifacts/list"
        params = {"run_id": run_id} | ({"path": path} if path else {})
        found = pages(
            lambda extra: self.rest.get(endpoint, params | extra),
            FilesPage,
            endpoint,
            max_pages=max_pages,
        )
        for page in found:
            for item in page.files:
                yield item.path, item.is_dir, item.file_size or 0


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


def _experiment(item: ExperimentJson) -> Experiment:
    return Experiment(item.experiment_id, item.name, item.lifecycle_stage)


class MlflowSource:
    """Reads one configured MLflow source. Thread-safe for `fetch`'s own worker threads only."""

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
        self._bulk_supported = True
        self._offset_tokens = True
        self._experiments: dict[str, Experiment] | None = None
        self._missing: list[str] = []
        self._other_experiments: list[str] | None = None

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

    def close(self) -> None:
        self.client.rest.close()
        self.store.close()

    # -- listing ------------------------------------------------------------------------------

    def experiments(self) -> tuple[dict[str, Experiment], list[str]]:
        """The configured experiments that exist (by id), and the configured names that do not."""
        if self.settings.all_experiments:
            return {e.experiment_id: e for e in self.client.experiments()}, []
        found: dict[str, Experiment] = {}
        missing: list[str] = []
        globs = self.settings.experiment_globs
        if globs:
            every = self.client.experiments()
            found.update((e.experiment_id, e) for e in every if self.settings.covers(e.name))
            missing += [g for g in globs if not any(fnmatch.fnmatchcase(e.name, g) for e in every)]
        for name in self.settings.experiments:
            if name in globs:
                continue
            experiment = self.client.experiment_by_name(name)
            if experiment is None or experiment.lifecycle_stage == "deleted":
                missing.append(name)
            else:
                found[experiment.experiment_id] = experiment
        return found, missing

    def list_runs(
        self,
        since_ms: int | None = None,
        watch_ids: Iterable[str] = (),
        mirrored_ids: Collection[str] = (),
    ) -> RunListing:
        """Runs to mirror, read page by page as `RunListing.runs` is iterated. Raises SourceError
        (its iteration too).

        A full listing (`since_ms` None) holds every run of the configured experiments. A quick
        one reuses the experiments of the last full listing and holds only runs that are running,
        started at or after `since_ms`, or are in `watch_ids` (runs last seen running).
        `mirrored_ids` are runs already mirrored: children of those logged into other experiments
        are listed too.
        """
        if since_ms is None or self._experiments is None:
            self._experiments, self._missing = self.experiments()
            self._other_experiments = None
            filters = [""]
        else:
            filters = ["attributes.status = 'RUNNING'", f"attributes.start_time >= {since_ms}"]
        listing = RunListing(dict(self._experiments), iter(()), list(self._missing))
        listing.runs = self._listed_runs(listing, filters, list(watch_ids), mirrored_ids)
        return listing

    def _listed_runs(
        self,
        listing: RunListing,
        filters: list[str],
        watch_ids: list[str],
        mirrored_ids: Collection[str],
    ) -> Iterator[RunSnapshot]:
        """The runs of `listing`, each once, noted in its `listed` and `deleted` as yielded."""
        assert self._experiments is not None
        listed = listing.listed
        for run in self._search(sorted(self._experiments), filters, watch_ids):
            if run.run_id not in listed:
                listing.note(run)
                yield run
        if not self.settings.child_runs_in_other_experiments or self.settings.all_experiments:
            return
        if self._other_experiments is None:
            every = sorted(e.experiment_id for e in self.client.experiments())
            self._other_experiments = [e for e in every if e not in self._experiments]
        children = [_all_of(CHILD, f) for f in filters]
        candidates = {
            r.run_id: r for r in self._search(self._other_experiments, children, watch_ids, False)
        }
        added = True
        while added:  # children of children: until none is added
            added = False
            for run_id, run in list(candidates.items()):
                parent = run.parent_run_id
                if (parent in listed or parent in mirrored_ids) and run_id not in listed:
                    del candidates[run_id]
                    listing.note(run)
                    added = True
                    yield run

    def _search(
        self,
        experiment_ids: list[str],
        filters: list[str],
        run_ids: Iterable[str],
        selected: bool = True,
    ) -> Iterator[RunSnapshot]:
        """Runs of `experiment_ids` matching any of `filters`, or whose id is in `run_ids`; if
        `selected` and a `filter` is configured, top-level runs only if they match it (children
        are all listed: they follow their parent, engine/mlflow/selection.py)."""
        wanted = sorted({run_id for run_id in run_ids if _RUN_ID.match(run_id)})
        queries = list(filters) + [
            "attributes.run_id IN (" + ", ".join(f"'{run_id}'" for run_id in chunk) + ")"
            for chunk in _chunks(wanted, 100)
        ]
        if selected and self.settings.filter:
            queries = [
                _all_of(query, clause)
                for query in queries
                for clause in (f"{TOP_LEVEL} AND {self.settings.filter}", CHILD)
            ]
        for experiments in _chunks(experiment_ids, 100):
            for query in queries:
                yield from self._refused_filter_named(self.client.search_runs(experiments, query))

    def matches_filter(self, run_id: str, experiment_id: str) -> bool:
        """Whether the server says the run matches `filter`: an empty, well-formed page proves it
        does not. Raises SourceError."""
        if not _RUN_ID.match(run_id):
            raise BadAnswerError(f"not a run id: {run_id[:64]!r}")
        query = _all_of(f"attributes.run_id = '{run_id}'", self.settings.filter)
        found = self._refused_filter_named(self.client.search_runs([experiment_id], query))
        return any(run.run_id == run_id for run in found)

    def _refused_filter_named(self, runs: Iterator[RunSnapshot]) -> Iterator[RunSnapshot]:
        """`runs`, with a 400 from the server, when a `filter` is configured, as an error that
        names it."""
        try:
            yield from runs
        except HttpStatusError as error:
            if error.status_code != 400 or not self.settings.filter:
                raise
            raise SelectionError(
                f"filter: the server refused {self.settings.filter!r}: {error}"
            ) from None

    # -- artifacts ----------------------------------------------------------------------------

    def artifacts_of(self, runs: dict[RunRef, bool]) -> dict[str, list[Artifact] | str]:
        """The artifact files of each run (-> whether to list its `images/` folder), by run id,
        listed concurrently; an error message for a run whose listing the server refused.
        Raises SourceError when the server cannot be reached."""

        def one(run: RunRef) -> list[Artifact] | str:
            try:
                return self.store.files(run, runs[run])
            except (HttpStatusError, BadAnswerError, ListingTooLargeError) as error:
                return str(error)  # this run's; not the source's

        with ThreadPoolExecutor(self.settings.concurrency, thread_name_prefix="artifacts") as pool:
            found = pool.map(one, runs)
            return {run.run_id: files for run, files in zip(runs, found, strict=True)}

    def artifact_file(self, run: RunRef, artifact: Artifact) -> FileReader:
        return self.store.reader(run, artifact)

    def artifact_bytes(self, run: RunRef, artifact: Artifact) -> bytes:
        """The whole artifact, exactly the size listed. Raises SourceError (BadAnswerError if it
        changed since it was listed)."""
        reader = self.artifact_file(run, artifact)
        size = reader.size
        data = reader.read(0, size) if size else b""
        if len(data) != size:
            raise BadAnswerError(
                f"{artifact.path}: {len(data)} bytes read, {size} listed (it changed)"
            )
        return data

    # -- histories ----------------------------------------------------------------------------

    def fetch(self, requests: list[HistoryRequest]) -> dict[tuple[str, str], History]:
        """New points of every requested series, fetched concurrently. Raises SourceError."""
        fresh: dict[str, list[str]] = defaultdict(list)
        incremental: list[HistoryRequest] = []
        for request in requests:
            if request.cursor.count == 0 and self._bulk_supported:
                fresh[request.key].append(request.run_id)
            else:
                incremental.append(request)
        results: dict[tuple[str, str], History] = {}
        with ThreadPoolExecutor(self.settings.concurrency, thread_name_prefix="fetch") as pool:
            bulk_jobs = [
                (key, chunk, pool.submit(self.client.history_bulk, chunk, key))
                for key, run_ids in fresh.items()
                for chunk in _chunks(sorted(run_ids), BULK_MAX_RUNS)
            ]
            single_jobs = [(r, pool.submit(self._fetch_one, r)) for r in incremental]
            leftovers: list[HistoryRequest] = []
            for key, chunk, future in bulk_jobs:
                try:
                    histories = future.result()
                except (HttpStatusError, BadAnswerError) as error:  # one request per run instead
                    log.warning("bulk_history_failed", source=self.name, key=key, error=str(error))
                    histories = {}
                if histories is None:
                    self._bulk_supported = False
                for run_id in chunk:
                    if histories is not None and run_id in histories:
                        results[(run_id, key)] = History(histories[run_id])
                    else:
                        leftovers.append(HistoryRequest(run_id, key, Cursor()))
            late_jobs = [(r, pool.submit(self._fetch_one, r)) for r in leftovers]
            for request, single in single_jobs + late_jobs:
                try:
                    results[(request.run_id, request.key)] = single.result()
                except (HttpStatusError, BadAnswerError) as error:  # fails this run only
                    results[(request.run_id, request.key)] = History([], error=str(error))
        return results

    def _fetch_one(self, request: HistoryRequest) -> History:
        """The series past its cursor: its first page of new points now, the rest as read.

        The cursor's last point is looked for where it should be: first in the page asked from
        its offset, count-1 (offset page tokens), or at that index of the series read from its
        start (servers whose page tokens are opaque; those pages are read, not kept). Not there:
        points were inserted before it (or the server ignored the offset), and the whole series
        is diffed (`History.full`). With offset tokens, each further page is asked from the last
        point taken, which must come first again (else SeriesChangedError, as it is read)."""
        run_id, key, cursor = request.run_id, request.key, request.cursor
        if cursor.count == 0 or cursor.last is None:
            page, token = next(self.client.history(run_id, key))
            if token is None or not page:
                return History(page)
            if self._offset_tokens:
                return History(page, self._pages_after(run_id, key, len(page) - 1, page[-1]))
            return History(page, _points(self.client.history(run_id, key, token)))
        if self._offset_tokens:
            try:
                return self._history_after(run_id, key, cursor.count - 1, cursor.last)
            except SeriesChangedError:
                return History([], full=lambda: _points(self.client.history(run_id, key)))
            except HttpStatusError as error:
                if error.status_code != 400:
                    raise
                log.warning("offset_page_tokens_unsupported", source=self.name)
                self._offset_tokens = False
        series, before = self.client.history(run_id, key), 0
        for page, token in series:
            if before + len(page) >= cursor.count:
                at = cursor.count - 1 - before
                if page[at].identity() == cursor.last.identity():
                    return History(page[at + 1 :], _points(series) if token else None)
                break
            before += len(page)
        series.close()
        return History([], full=lambda: _points(self.client.history(run_id, key)))

    def _history_after(self, run_id: str, key: str, offset: int, last: MetricPoint) -> History:
        """The points after `last`, which must be the point at `offset` (else SeriesChangedError):
        the first page now, the others as read."""
        page, more = self._page_after(run_id, key, offset, last)
        if not more:
            return History(page)
        if not page:
            raise BadAnswerError(f"get-history of {key}: an empty page before more pages")
        return History(page, self._pages_after(run_id, key, offset + len(page), page[-1]))

    def _pages_after(self, run_id: str, key: str, offset: int, last: MetricPoint) -> Pages:
        """Pages of the points after `last` (the point at `offset`), each asked from the last
        point taken, which must still be there (SeriesChangedError: a point was inserted before
        it since, and this page would repeat one and miss it)."""
        for _ in range(MAX_HISTORY_PAGES):
            page, more = self._page_after(run_id, key, offset, last)
            if more and not page:
                raise BadAnswerError(f"get-history of {key}: an empty page before more pages")
            yield page
            if not more:
                return
            offset, last = offset + len(page), page[-1]
        raise BadAnswerError(f"get-history of {key}: more than {MAX_HISTORY_PAGES:,} pages")

    def _page_after(
        self, run_id: str, key: str, offset: int, last: MetricPoint
    ) -> tuple[list[MetricPoint], bool]:
        """The page from `offset`, which must start with `last`, without it; whether more follow."""
        series = self.client.history(run_id, key, _offset_token(offset) if offset else None)
        page, token = next(series)
        series.close()
        if not page or page[0].identity() != last.identity():
            raise SeriesChangedError(f"{key}: the series changed while it was read")
        return page[1:], token is not None


def _points(series: Iterator[tuple[list[MetricPoint], str | None]]) -> Pages:
    """The points of each page of a series."""
    for page, _ in series:
        yield page


def _all_of(*clauses: str) -> str:
    return " AND ".join(clause for clause in clauses if clause)


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
