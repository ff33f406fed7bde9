"""Metric histories past their cursors, and the cursor rule that makes them exact.

MLflow orders a key's history by (timestamp, step, value) and pages it by offset, and a late point
with an older timestamp lands in the middle. For a cursor of `count` points whose last is `last`,
we read from offset count-1: if the first point returned is `last`, everything after it is new.
Otherwise points were inserted before the cursor and the whole series is returned for the caller
to diff (`History.full`). Servers whose page tokens are opaque (Databricks, Azure ML) get the whole
series and the same check is made locally. Series never read before are fetched a hundred runs a
request (get-history-bulk) where the server offers it.
"""

from __future__ import annotations

import base64
import json
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import structlog

from tbmirror.errors import SourceError
from tbmirror.model import Cursor, MetricPoint
from tbmirror.sources.http import BadAnswerError, HttpStatusError
from tbmirror.sources.mlflow.client import (
    BULK_MAX_RUNS,
    MAX_HISTORY_PAGES,
    MlflowClient,
    chunks,
)

log = structlog.get_logger(__name__)

Pages = Iterator[list[MetricPoint]]


class SeriesChangedError(SourceError):
    """A series changed while it was read page by page: the rest is read at the next pass."""


@dataclass(frozen=True)
class HistoryRequest:
    run_id: str
    key: str
    cursor: Cursor


@dataclass
class History:
    """The points of one series past its cursor: `new` now, then the pages of `more` (fetched as
    they are read); or, when those cannot be told, `full`: the whole series again, page by page
    from its start (each call fetches it anew), for the caller to diff with what it wrote.
    `failure`: the server refused this one series (its run fails, the others go on)."""

    new: list[MetricPoint]
    more: Pages | None = None
    full: Callable[[], Pages] | None = None
    failure: SourceError | None = None


class Histories:
    """Fetches series past their cursors for one source. `fetch` is called by one thread at a
    time; it runs its requests on `concurrency` threads of its own."""

    def __init__(self, client: MlflowClient, source: str, concurrency: int) -> None:
        """`source`: the source's name, for logs."""
        self.client, self.source, self.concurrency = client, source, concurrency
        self._bulk_supported = True
        self._offset_tokens = True

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
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="fetch") as pool:
            bulk_jobs = [
                (key, chunk, pool.submit(self.client.history_bulk, chunk, key))
                for key, run_ids in fresh.items()
                for chunk in chunks(sorted(run_ids), BULK_MAX_RUNS)
            ]
            single_jobs = [(r, pool.submit(self._fetch_one, r)) for r in incremental]
            leftovers: list[HistoryRequest] = []
            for key, chunk, future in bulk_jobs:
                try:
                    histories = future.result()
                except (HttpStatusError, BadAnswerError) as error:  # one request per run instead
                    log.warning(
                        "bulk_history_failed", source=self.source, key=key, error=str(error)
                    )
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
                    results[(request.run_id, request.key)] = History([], failure=error)
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
                log.warning("offset_page_tokens_unsupported", source=self.source)
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
        series = self.client.history(run_id, key, offset_token(offset) if offset else None)
        page, token = next(series)
        series.close()
        if not page or page[0].identity() != last.identity():
            raise SeriesChangedError(f"{key}: the series changed while it was read")
        return page[1:], token is not None


def offset_token(offset: int) -> str:
    """The page token of MLflow's history pages that starts at `offset`."""
    return base64.b64encode(json.dumps({"offset": offset}).encode()).decode()


def _points(series: Iterator[tuple[list[MetricPoint], str | None]]) -> Pages:
    """The points of each page of a series."""
    for page, _ in series:
        yield page
