"""The shapes of the MLflow REST answers tbmirror reads, validated before anything is believed.

An answer is data only if it has the expected shape. `{}` is MLflow's valid empty page (runs/search
of an empty experiment, get-history of a key with no points); a field of the wrong type, or a body
with none of the endpoint's fields (a gateway's `{"message": "upstream busy"}`), is a SourceError
naming the endpoint and what was wrong (field names only, never values). Unknown extra fields are
ignored: servers add fields over time.

The shapes are msgspec Structs (validated in C): a full listing converts every run of every
experiment, ~10 times faster than a pydantic model would (issue 14's 100,000 runs).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable, Iterator
from typing import Annotated, ClassVar, Self, TypeVar

import msgspec

from tbmirror import parsers
from tbmirror.errors import ParseError
from tbmirror.sources.http import BadAnswerError

MAX_PAGES = 10_000  # of any paged answer, unless the caller says otherwise
Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]  # what MLflow stores and TB holds


class _Answer(msgspec.Struct, frozen=True):
    def completed(self) -> Self:
        """The answer once read (an answer type may derive a field from another)."""
        return self


class _Page(_Answer, frozen=True):
    """An answer whose every field may be absent (`{}` is a valid empty page), but that must
    hold at least one of its fields (FIELDS, as sent) when it holds anything."""

    FIELDS: ClassVar[frozenset[str]]
    next_page_token: str | None = None


class MetricJson(_Answer, frozen=True):
    value: float | str  # MLflow sends NaN and infinities as strings
    key: str = ""
    timestamp: Int64 = 0
    step: Int64 = 0
    run_id: str | None = None


class KeyValueJson(_Answer, frozen=True):
    key: str
    value: str = ""


class RunInfoJson(_Answer, frozen=True):
    run_id: str
    experiment_id: str
    run_name: str | None = None
    status: str = "RUNNING"
    lifecycle_stage: str = "active"
    start_time: Int64 | None = None
    end_time: Int64 | None = None
    artifact_uri: str | None = None


class RunDataJson(_Answer, frozen=True):
    """`metrics` (the latest point of each key) as raw JSON, well-formed but not yet validated:
    a full listing of 100,000 unchanged runs looks into none of them (decoded by `metrics_of`,
    ~6 times faster a page)."""

    metrics: msgspec.Raw = msgspec.Raw(b"[]")
    params: tuple[KeyValueJson, ...] = ()
    tags: tuple[KeyValueJson, ...] = ()


class RunJson(_Answer, frozen=True):
    """One run as runs/search and runs/get show it."""

    info: RunInfoJson
    data: RunDataJson = RunDataJson()


class ExperimentJson(_Answer, frozen=True):
    experiment_id: str
    name: str = ""
    lifecycle_stage: str = "active"


class FileJson(_Answer, frozen=True):
    path: str
    is_dir: bool = False
    file_size: int | None = None


class RunsPage(_Page, frozen=True):
    FIELDS = frozenset({"runs", "next_page_token"})
    runs: tuple[RunJson, ...] = ()


class HistoryPage(_Page, frozen=True):
    FIELDS = frozenset({"metrics", "next_page_token"})
    metrics: tuple[MetricJson, ...] = ()


class ExperimentsPage(_Page, frozen=True):
    FIELDS = frozenset({"experiments", "next_page_token"})
    experiments: tuple[ExperimentJson, ...] = ()


class FilesPage(_Page, frozen=True):
    FIELDS = frozenset({"files", "next_page_token", "root_uri"})
    files: tuple[FileJson, ...] = ()


class CredentialHeaderJson(_Answer, frozen=True):
    name: str
    value: str = ""


class CredentialJson(_Answer, frozen=True):
    """Databricks: a signed URL for one artifact, and the headers to send with it."""

    signed_uri: str
    path: str | None = None
    headers: tuple[CredentialHeaderJson, ...] = ()


class CredentialsPage(_Page, frozen=True):
    FIELDS = frozenset({"credential_infos", "next_page_token"})
    credential_infos: tuple[CredentialJson, ...] = ()


class AzureArtifactJson(_Answer, frozen=True):
    path: str
    etag: str | None = None  # changes whenever the file does


class AzureArtifactsPage(_Page, frozen=True):
    """Azure ML's `PaginatedArtifactList`: the next page's `continuationToken`, also found in the
    query of `nextLink` (the URL built from it)."""

    FIELDS = frozenset({"value", "continuationToken", "nextLink"})
    value: tuple[AzureArtifactJson, ...] = ()
    next_page_token: str | None = msgspec.field(default=None, name="continuationToken")
    next_link: str | None = msgspec.field(default=None, name="nextLink")

    def completed(self) -> Self:
        if self.next_page_token or not self.next_link:
            return self
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.next_link).query)
        token = query.get("continuationToken", [None])[0]
        return msgspec.structs.replace(self, next_page_token=token)


class AzureContentInfo(_Answer, frozen=True):
    """Azure ML's `ArtifactContentInformation`: where one artifact's bytes are (a signed URL)."""

    content_uri: str = msgspec.field(name="contentUri")


class ExperimentAnswer(_Answer, frozen=True):
    experiment: ExperimentJson


class RunAnswer(_Answer, frozen=True):
    run: RunJson


Model = TypeVar("Model", bound=_Answer)


Shape = TypeVar("Shape")


def _decode(shape: type[Shape], body: bytes, endpoint: str) -> Shape:
    """JSON `body` as `shape`, or a SourceError naming `endpoint` and the field that was wrong."""
    try:
        return parsers.json_as(shape, body, endpoint)
    except ParseError as error:
        raise BadAnswerError(str(error)) from None


def metrics_of(metrics: bytes) -> tuple[MetricJson, ...]:
    """A run's metrics as a listing gave them (RunDataJson.metrics), validated."""
    return _decode(tuple[MetricJson, ...], metrics, "a run's metrics")


def parse(model: type[Model], body: bytes, endpoint: str) -> Model:
    """The JSON object `body` as `model`, or a SourceError naming `endpoint` and the field that
    was wrong."""
    answer = _decode(model, body, endpoint).completed()
    if isinstance(answer, _Page) and answer == model():  # as `{}`: but has it other fields?
        fields = _decode(dict[str, msgspec.Raw], body, endpoint)  # (values not parsed)
        if fields and not answer.FIELDS & fields.keys():
            keys = ", ".join(sorted(fields)[:5])
            raise BadAnswerError(
                f"{endpoint}: an answer without {' or '.join(sorted(answer.FIELDS))} "
                f"(it has {keys}): not MLflow's, perhaps a gateway's"
            )
    return answer


Page = TypeVar("Page", bound=_Page)


def pages(
    fetch: Callable[[dict[str, str]], bytes],
    model: type[Page],
    endpoint: str,
    token_param: str = "page_token",
    start: str | None = None,
    max_pages: int = MAX_PAGES,
) -> Iterator[Page]:
    """Every page of a paged endpoint from the page token `start` (None: the first page); `fetch`
    gets {} (or {token_param: start}), then {token_param: token}. A page token seen before (the
    same page again included: it carries the same token), or more than `max_pages` pages is an
    error (a server stuck on one page, or paging without end, would otherwise hold a pass
    forever). A page is not held here while the next one is fetched (a listing's page of 1,000
    runs is MBs): a caller that lets go of it too holds one page at a time."""
    extra: dict[str, str] = {token_param: start} if start else {}
    seen: set[str] = set()
    for _ in range(max_pages):
        page = parse(model, fetch(extra), endpoint)
        token = page.next_page_token
        if token and (token in seen or token == extra.get(token_param)):
            raise BadAnswerError(
                f"{endpoint}: the page token {token[:64]} repeats: the listing does not advance"
            )
        yield page
        del page
        if not token:
            return
        seen.add(token)
        extra = {token_param: token}
    raise BadAnswerError(f"{endpoint}: more than {max_pages:,} pages: the listing does not end")
