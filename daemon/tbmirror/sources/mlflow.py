"""The MLflow source: run listings and metric histories over MLflow's REST API (no mlflow package).

`MlflowSource.list_runs` returns every run of the configured experiments (child runs logged into
other experiments included) with each metric key's latest point; `MlflowSource.fetch` returns the
points of each requested series past its cursor; `MlflowSource.artifacts` lists a run's artifact
files, which `ArtifactFile` reads with HTTP Range requests (tailing.py tails tfevents files).

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
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog

from tbmirror.config import MlflowSourceSettings, without_userinfo
from tbmirror.errors import SourceError
from tbmirror.model import Cursor, Experiment, MetricPoint, RunSnapshot
from tbmirror.sources.auth import build_auth
from tbmirror.sources.http import BadAnswerError, HttpStatusError, RestClient
from tbmirror.sources.responses import (
    ExperimentAnswer,
    ExperimentJson,
    ExperimentsPage,
    FilesPage,
    HistoryPage,
    MetricJson,
    RunAnswer,
    RunJson,
    RunsPage,
    parse,
)

log = structlog.get_logger(__name__)

API = "/api/2.0/mlflow"
AJAX_API = "/ajax-api/2.0/mlflow"
SEARCH_PAGE_SIZE = 1000
HISTORY_PAGE_SIZE = 25000
BULK_MAX_RUNS = 100
BULK_MAX_RESULTS = 25000
PARENT_TAG = "mlflow.parentRunId"
TOP_LEVEL = f"tags.`{PARENT_TAG}` IS NULL"
CHILD = f"tags.`{PARENT_TAG}` IS NOT NULL"
_RUN_ID = re.compile(r"^[A-Za-z0-9][\w-]{0,255}$")
RUN_NAME_TAG = "mlflow.runName"
NOTE_TAG = "mlflow.note.content"
IMAGES_FOLDER = "images"  # where log_image(key=, step=) puts its series


class SelectionError(SourceError):
    """The server refused the configured `filter`."""


@dataclass
class RunListing:
    """One complete listing of a source: its experiments and runs, parents before children."""

    experiments: dict[str, Experiment]
    runs: list[RunSnapshot]
    missing_experiments: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Artifact:
    """A file among a run's artifacts: its path below the run's artifact root, and size."""

    path: str
    size: int


@dataclass(frozen=True)
class HistoryRequest:
    run_id: str
    key: str
    cursor: Cursor


@dataclass
class History:
    """The points of one series past its cursor, or the whole series if those cannot be told."""

    new: list[MetricPoint]
    full: list[MetricPoint] | None = None
    error: str | None = None  # the server refused this one series (its run fails, others go on)


def point_from_json(item: MetricJson) -> MetricPoint:
    """A metric point (values may be numbers or "NaN"/"Infinity" strings)."""
    try:
        value = float(item.value)
    except ValueError:
        raise BadAnswerError(f"a metric value that is not a number ({item.key})") from None
    return MetricPoint(item.timestamp, item.step, value)


def run_from_json(item: RunJson) -> RunSnapshot:
    info, data = item.info, item.data
    tags = {tag.key: tag.value for tag in data.tags}
    return RunSnapshot(
        run_id=info.run_id,
        experiment_id=info.experiment_id,
        name=info.run_name or tags.get(RUN_NAME_TAG) or info.run_id,
        status=info.status,
        lifecycle_stage=info.lifecycle_stage,
        start_time=info.start_time,
        end_time=info.end_time,
        parent_run_id=tags.get(PARENT_TAG) or None,
        params={param.key: param.value for param in data.params},
        tags=tags,
        latest={metric.key: point_from_json(metric) for metric in data.metrics},
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
            if error.error_code == "RESOURCE_DOES_NOT_EXIST" or error.status_code == 404:
                return None
            raise
        return _experiment(parse(ExperimentAnswer, body, endpoint).experiment)

    def experiments(self) -> list[Experiment]:
        """Every active experiment."""
        endpoint = f"{API}/experiments/search"
        body = {"max_results": 1000, "view_type": "ACTIVE_ONLY"}
        pages = _pages(
            lambda extra: self.rest.post(endpoint, body | extra), ExperimentsPage, endpoint
        )
        return [_experiment(item) for page in pages for item in page.experiments]

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
        for page in _pages(
            lambda extra: self.rest.post(endpoint, body | extra), RunsPage, endpoint
        ):
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

    def history(self, run_id: str, key: str, offset: int | None = None) -> list[MetricPoint]:
        """The key's history from `offset` (a constructed offset page token) to the end."""
        endpoint = f"{API}/metrics/get-history"
        params = {"run_id": run_id, "metric_key": key, "max_results": HISTORY_PAGE_SIZE}
        first = {"page_token": _offset_token(offset)} if offset else {}
        pages = _pages(
            lambda extra: self.rest.get(endpoint, params | (extra or first)), HistoryPage, endpoint
        )
        return [point_from_json(item) for page in pages for item in page.metrics]

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

    def artifacts(self, run_id: str, path: str = "") -> Iterator[tuple[str, bool, int]]:
        """(path, is_dir, size) of the entries of one artifact folder (one level)."""
        endpoint = f"{API}/artifacts/list"
        params = {"run_id": run_id} | ({"path": path} if path else {})
        pages = _pages(lambda extra: self.rest.get(endpoint, params | extra), FilesPage, endpoint)
        for page in pages:
            for item in page.files:
                yield item.path, item.is_dir, item.file_size or 0


Page = TypeVar("Page", RunsPage, HistoryPage, ExperimentsPage, FilesPage)


def _pages(
    fetch: Callable[[dict[str, str]], dict[str, Any]], model: type[Page], endpoint: str
) -> Iterator[Page]:
    """Every page of a paged endpoint; `fetch` gets {} first, then {"page_token": ...}. A page
    token seen before, or a page identical to the one before, is an error (a server stuck on
    one page would otherwise hold a pass forever)."""
    extra: dict[str, str] = {}
    seen: set[str] = set()
    previous: dict[str, Any] | None = None
    while True:
        body = fetch(extra)
        page = parse(model, body, endpoint)
        token = page.next_page_token
        if token and (token in seen or token == extra.get("page_token")):
            raise BadAnswerError(
                f"{endpoint}: the page token {token[:64]} repeats: the listing does not advance"
            )
        if previous is not None and body == previous:
            raise BadAnswerError(
                f"{endpoint}: the same page again for page token {extra['page_token'][:64]}"
            )
        yield page
        if not token:
            return
        seen.add(token)
        extra, previous = {"page_token": token}, body


class ArtifactFile:
    """One artifact of a run, read over HTTP Range requests (a `tailing.FileReader`).

    `size` is the size the listing gave; no identity (a server does not tell).
    """

    identity: str | None = None

    def __init__(self, rest: RestClient, run_id: str, artifact: Artifact) -> None:
        self._rest, self._params, self.size = (
            rest,
            {"run_id": run_id, "path": artifact.path},
            artifact.size,
        )

    def read(self, start: int, end: int) -> bytes:
        return self._rest.get_range("/get-artifact", self._params, start, end, self.size)


def _experiment(item: ExperimentJson) -> Experiment:
    return Experiment(item.experiment_id, item.name, item.lifecycle_stage)


class MlflowSource:
    """Reads one configured MLflow source. Thread-safe for `fetch`'s own worker threads only."""

    def __init__(self, settings: MlflowSourceSettings, client: MlflowClient) -> None:
        self.settings = settings
        self.client = client
        self._bulk_supported = True
        self._offset_tokens = True
        self._experiments: dict[str, Experiment] | None = None
        self._missing: list[str] = []
        self._other_experiments: list[str] | None = None

    @classmethod
    def from_settings(
        cls, settings: MlflowSourceSettings, stop: threading.Event | None = None
    ) -> MlflowSource:
        """The source `settings` describe; a set `stop` ends its waits and reads at once."""
        rest = RestClient(
            settings.tracking_uri,
            timeout=settings.timeout,
            max_retries=settings.max_retries,
            max_response_bytes=settings.max_response_bytes,
            stall_timeout=settings.stall_timeout,
            stop=stop,
            display_url=without_userinfo(settings.tracking_uri),
            max_connections=settings.concurrency + 1,
            auth=build_auth(settings),
            auth_name=settings.auth.type if settings.auth else None,
            rate_limit=settings.rate_limit,
            search_rate_limit=settings.search_rate_limit,
        )
        return cls(settings, MlflowClient(rest))

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def requests_made(self) -> int:
        return self.client.rest.requests_made

    def close(self) -> None:
        self.client.rest.close()

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
        mirrored_ids: Iterable[str] = (),
    ) -> RunListing:
        """Runs to mirror, parents ordered before their children. Raises SourceError.

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
        configured = sorted(self._experiments)
        runs: dict[str, RunSnapshot] = {}
        for run in self._search(configured, filters, watch_ids):
            runs[run.run_id] = run
        if self.settings.child_runs_in_other_experiments and not self.settings.all_experiments:
            if self._other_experiments is None:
                every = sorted(e.experiment_id for e in self.client.experiments())
                self._other_experiments = [e for e in every if e not in self._experiments]
            children = [_all_of(CHILD, f) for f in filters]
            candidates = {
                r.run_id: r
                for r in self._search(self._other_experiments, children, watch_ids, False)
            }
            parents = set(runs) | set(mirrored_ids)
            added = True
            while added:
                added = False
                for run_id, run in list(candidates.items()):
                    if run.parent_run_id in parents:
                        runs[run_id] = candidates.pop(run_id)
                        parents.add(run_id)
                        added = True
        return RunListing(dict(self._experiments), _parents_first(runs), list(self._missing))

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

    def artifacts(self, run_id: str, images_folder: bool) -> list[Artifact]:
        """The run's artifact files down to `artifacts.max_depth` folders, by path. The top-level
        `images/` folder (log_image series, hundreds of files) is listed only if `images_folder`;
        `table_images/` (images inside logged tables) never. Raises SourceError."""
        settings = self.settings.artifacts
        skipped = {"table_images"} | (set() if images_folder else {IMAGES_FOLDER})
        found: list[Artifact] = []
        folders = [("", 0)]
        while folders:
            folder, depth = folders.pop()
            for path, is_dir, size in self.client.artifacts(run_id, folder):
                if not is_dir:
                    found.append(Artifact(path, size))
                elif depth < settings.max_depth and (folder or path not in skipped):
                    folders.append((path, depth + 1))
        return sorted(found, key=lambda artifact: artifact.path)

    def artifacts_of(self, runs: dict[str, bool]) -> dict[str, list[Artifact] | str]:
        """`artifacts` of each run (run id -> `images_folder`), listed concurrently; an error
        message for a run whose listing the server refused. Raises SourceError when the server
        cannot be reached."""

        def one(run_id: str) -> list[Artifact] | str:
            try:
                return self.artifacts(run_id, runs[run_id])
            except (HttpStatusError, BadAnswerError) as error:  # this run's; not the source's
                return str(error)

        with ThreadPoolExecutor(self.settings.concurrency, thread_name_prefix="artifacts") as pool:
            return dict(zip(runs, pool.map(one, runs), strict=True))

    def artifact_file(self, run_id: str, artifact: Artifact) -> ArtifactFile:
        return ArtifactFile(self.client.rest, run_id, artifact)

    def artifact_bytes(self, run_id: str, artifact: Artifact) -> bytes:
        """The whole artifact, exactly the size listed. Raises SourceError (BadAnswerError if it
        changed since it was listed)."""
        data = self.artifact_file(run_id, artifact).read(0, artifact.size) if artifact.size else b""
        if len(data) != artifact.size:
            raise BadAnswerError(
                f"{artifact.path}: {len(data)} bytes read, {artifact.size} listed (it changed)"
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
        cursor = request.cursor
        if cursor.count == 0 or cursor.last is None:
            return History(self.client.history(request.run_id, request.key))
        if self._offset_tokens:
            try:
                tail = self.client.history(request.run_id, request.key, offset=cursor.count - 1)
            except HttpStatusError as error:
                if error.status_code != 400:
                    raise
                log.warning("offset_page_tokens_unsupported", source=self.name)
                self._offset_tokens = False
            else:
                if tail and tail[0].identity() == cursor.last.identity():
                    return History(tail[1:])
        full = self.client.history(request.run_id, request.key)
        if (
            len(full) >= cursor.count
            and full[cursor.count - 1].identity() == cursor.last.identity()
        ):
            return History(full[cursor.count :])
        return History([], full)


def _all_of(*clauses: str) -> str:
    return " AND ".join(clause for clause in clauses if clause)


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _parents_first(runs: dict[str, RunSnapshot]) -> list[RunSnapshot]:
    """Runs ordered so that each parent (when listed) comes before its children."""
    ordered: list[RunSnapshot] = []
    placed: set[str] = set()

    def place(run: RunSnapshot, trail: set[str]) -> None:
        if run.run_id in placed:
            return
        parent = run.parent_run_id
        if parent in runs and parent not in trail:
            place(runs[parent], trail | {run.run_id})
        placed.add(run.run_id)
        ordered.append(run)

    for run in runs.values():
        place(run, {run.run_id})
    return ordered
