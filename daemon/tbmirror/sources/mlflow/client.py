"""Typed calls to the MLflow REST endpoints tbmirror uses (no mlflow package), and the runs and
points their answers describe.

Every answer is validated (sources/responses.py) and every paged listing checked to advance; an
answer of the wrong shape raises BadAnswerError, never becomes data.
"""

from __future__ import annotations

import hashlib
import re
import sys
import threading
from collections import defaultdict
from collections.abc import Generator, Iterator, Mapping
from typing import Literal

import msgspec
import structlog

from tbmirror.errors import SourceError
from tbmirror.model import Experiment, MetricPoint, RunSnapshot
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
    RunInfoJson,
    RunJson,
    RunsPage,
    metrics_of,
    pages,
    parse,
)

API = "/api/2.0/mlflow"
AJAX_API = "/ajax-api/2.0/mlflow"
SERVED_ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts"  # the server's own artifact store
# Answers of a server (or a gateway before it) that does not serve SERVED_ARTIFACTS; MLflow's
# `--no-serve-artifacts` answers 503 with this in its text.
NOT_SERVED_STATUS = (401, 403, 404, 405, 501, 503)  # 401/403: a gateway guarding all else
NOT_SERVED_503 = b"--no-serve-artifacts"
SEARCH_PAGE_SIZE = 1000
HISTORY_PAGE_SIZE = 25000
HISTORY_PAGE_FALLBACKS = (1000, 500, 100)  # for a server that refuses larger pages
_PAGE_SIZE_REFUSED = re.compile(r"max_?results", re.IGNORECASE)
MAX_HISTORY_PAGES = 4000  # 100 M points of one series in one pass
BULK_MAX_RUNS = 100
BULK_MAX_RESULTS = 25000
IDS_PER_REQUEST = 100  # experiment or run ids named in one search
PARENT_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
NOTE_TAG = "mlflow.note.content"

log = structlog.get_logger(__name__)

RunState = Literal["active", "deleted", "gone"]  # what runs/get proves of a run


class NotServedError(SourceError):
    """The server, or a gateway before it, does not serve an endpoint."""


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
    """The run `item` shows; its fingerprint digests all it says (the same in every process)."""
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
        fingerprint=_fingerprint(item, metrics),
        artifact_uri=info.artifact_uri,
    )


# What a fingerprint digests of a run's info: all but where its artifacts are, which is fixed for
# a run's life (and left out, fingerprints stay those of mirrors made before it was read).
_FINGERPRINTED = tuple(name for name in RunInfoJson.__struct_fields__ if name != "artifact_uri")


def _fingerprint(item: RunJson, metrics: bytes) -> int:
    """A digest of all a listed run says, the same in every process (a signed 64-bit int, as
    the state store keeps it)."""
    info = {name: getattr(item.info, name) for name in _FINGERPRINTED}  # (encoded as the struct)
    digest = hashlib.blake2b(msgspec.msgpack.encode((info, item.data.params, item.data.tags)))
    digest.update(metrics)
    return int.from_bytes(digest.digest()[:8], "big", signed=True) or 1


class MlflowClient:
    """Typed calls to the MLflow REST endpoints tbmirror uses. Thread-safe (as its RestClient)."""

    def __init__(self, rest: RestClient) -> None:
        self.rest = rest
        self.history_page_size = HISTORY_PAGE_SIZE  # lowered for good by a server refusing it
        self._lock = threading.Lock()

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
            del page  # (not held while the next page is fetched)

    def run(self, run_id: str) -> RunSnapshot:
        """The run as runs/get shows it. Raises SourceError (HttpStatusError if unknown)."""
        endpoint = f"{API}/runs/get"
        body = self.rest.get(endpoint, {"run_id": run_id})
        run = run_from_json(parse(RunAnswer, body, endpoint).run)
        if run.run_id != run_id:
            raise BadAnswerError(f"{endpoint}: asked for run {run_id}, got {run.run_id}")
        return run

    def run_state(self, run_id: str) -> RunState:
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
        page (`history_page_size` points) at a time, each fetched as the one before is taken; with
        each page, the token of the next (None: it is the last)."""
        endpoint = f"{API}/metrics/get-history"
        params = {"run_id": run_id, "metric_key": key}

        def fetch_page(extra: dict[str, str]) -> bytes:
            while True:
                size = self.history_page_size
                try:
                    return self.rest.get(endpoint, params | {"max_results": size} | extra)
                except HttpStatusError as error:
                    if not (error.status_code == 400 and _PAGE_SIZE_REFUSED.search(str(error))):
                        raise
                    self._refused_history_page_size(size, error)

        found = pages(
            fetch_page,
            HistoryPage,
            endpoint,
            start=start,
            max_pages=MAX_HISTORY_PAGES,
        )
        for page in found:
            yield [point_from_json(item) for item in page.metrics], page.next_page_token

    def _refused_history_page_size(self, size: int, error: HttpStatusError) -> None:
        """Lower the history page size below `size`, which the server refused with a 400 that
        names max_results (Azure ML once refused 25000: mlflow/mlflow#10694), said once; raise
        `error` if no smaller size is left. Another thread may have lowered it already."""
        with self._lock:
            if self.history_page_size < size:
                return
            smaller = [fallback for fallback in HISTORY_PAGE_FALLBACKS if fallback < size]
            if not smaller:
                raise error
            self.history_page_size = smaller[0]
        log.warning("history_page_size_refused", server=self.rest.display_url, refused=size,
                    page_size=smaller[0], error=str(error))  # fmt: skip

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

    def served_artifacts(
        self, path: str, max_pages: int = MAX_PAGES
    ) -> Iterator[tuple[str, bool, int]]:
        """(name, is_dir, size) of the entries of one folder (one level; names without their
        folder) of the server's own artifact store (`mlflow server --serve-artifacts`, its
        default), `path` from the store's root: unlike `artifacts`, the server reads no run.
        Raises NotServedError if the server does not serve the endpoint: a status among
        NOT_SERVED_STATUS (a 503 only as `--no-serve-artifacts` answers it), a redirect or an
        HTML page (a gateway's)."""
        endpoint = SERVED_ARTIFACTS

        def fetch(extra: dict[str, str]) -> bytes:
            params = {"path": path} | extra
            try:
                answer = self.rest.get_answer(endpoint, params, NOT_SERVED_STATUS)
            except BadAnswerError as error:
                raise NotServedError(str(error)) from None
            status = answer.status_code
            if status == 503 and NOT_SERVED_503 not in answer.content:
                return self.rest.get(endpoint, params)  # busy, not refusing: retried as any
            if status in NOT_SERVED_STATUS:
                raise NotServedError(f"GET {endpoint}: HTTP {status}: not served")
            return answer.content

        for page in pages(fetch, FilesPage, endpoint, max_pages=max_pages):
            for item in page.files:
                yield item.path, item.is_dir, item.file_size or 0


def _experiment(item: ExperimentJson) -> Experiment:
    return Experiment(item.experiment_id, item.name, item.lifecycle_stage)


def chunks(items: list[str], size: int = IDS_PER_REQUEST) -> Iterator[list[str]]:
    """`items` in lists of `size` (the last one shorter), as many as one request may name."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
