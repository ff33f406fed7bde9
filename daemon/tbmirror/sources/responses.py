"""The shapes of the MLflow REST answers tbmirror reads, validated before anything is believed.

An answer is data only if it has the expected shape. `{}` is MLflow's valid empty page (runs/search
of an empty experiment, get-history of a key with no points); a field of the wrong type, or a body
with none of the endpoint's fields (a gateway's `{"message": "upstream busy"}`), is a SourceError
naming the endpoint and what was wrong (field names only, never values). Unknown extra fields are
allowed: servers add fields over time.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable, Iterator
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tbmirror.sources.http import BadAnswerError

MAX_PAGES = 10_000  # of any paged answer, unless the caller says otherwise
Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]  # what MLflow stores and TensorBoard holds


class _Answer(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class _Page(_Answer):
    """An answer whose every field may be absent (`{}` is a valid empty page), but that must
    hold at least one of its fields when it holds anything."""

    FIELDS: ClassVar[frozenset[str]]
    next_page_token: str | None = None


class MetricJson(_Answer):
    key: str = ""
    value: float | str  # MLflow sends NaN and infinities as strings
    timestamp: Int64 = 0
    step: Int64 = 0
    run_id: str | None = None


class KeyValueJson(_Answer):
    key: str
    value: str = ""


class RunInfoJson(_Answer):
    run_id: str
    experiment_id: str
    run_name: str | None = None
    status: str = "RUNNING"
    lifecycle_stage: str = "active"
    start_time: Int64 | None = None
    end_time: Int64 | None = None


class RunDataJson(_Answer):
    metrics: list[MetricJson] = []
    params: list[KeyValueJson] = []
    tags: list[KeyValueJson] = []


class RunJson(_Answer):
    info: RunInfoJson
    data: RunDataJson = RunDataJson()


class ExperimentJson(_Answer):
    experiment_id: str
    name: str = ""
    lifecycle_stage: str = "active"


class FileJson(_Answer):
    path: str
    is_dir: bool = False
    file_size: int | None = None


class RunsPage(_Page):
    FIELDS = frozenset({"runs", "next_page_token"})
    runs: list[RunJson] = []


class HistoryPage(_Page):
    FIELDS = frozenset({"metrics", "next_page_token"})
    metrics: list[MetricJson] = []


class ExperimentsPage(_Page):
    FIELDS = frozenset({"experiments", "next_page_token"})
    experiments: list[ExperimentJson] = []


class FilesPage(_Page):
    FIELDS = frozenset({"files", "next_page_token", "root_uri"})
    files: list[FileJson] = []


class CredentialHeaderJson(_Answer):
    name: str
    value: str = ""


class CredentialJson(_Answer):
    """Databricks: a signed URL for one artifact, and the headers to send with it."""

    signed_uri: str
    path: str | None = None
    headers: list[CredentialHeaderJson] = []


class CredentialsPage(_Page):
    FIELDS = frozenset({"credential_infos", "next_page_token"})
    credential_infos: list[CredentialJson] = []


class AzureArtifactJson(_Answer):
    path: str


class AzureArtifactsPage(_Page):
    """Azure ML's `PaginatedArtifactList`: the next page's `continuationToken`, also found in the
    query of `nextLink` (the URL built from it)."""

    FIELDS = frozenset({"value", "continuationToken", "nextLink"})
    model_config = ConfigDict(populate_by_name=True)
    value: list[AzureArtifactJson] = []
    next_page_token: str | None = Field(default=None, alias="continuationToken")

    @model_validator(mode="before")
    @classmethod
    def _token_from_next_link(cls, body: Any) -> Any:
        if isinstance(body, dict) and not body.get("continuationToken") and body.get("nextLink"):
            link = body["nextLink"]
            query = urllib.parse.urlsplit(link).query if isinstance(link, str) else ""
            token = urllib.parse.parse_qs(query).get("continuationToken", [None])[0]
            return body | {"continuationToken": token}
        return body


class AzureContentInfo(_Answer):
    """Azure ML's `ArtifactContentInformation`: where one artifact's bytes are (a signed URL)."""

    content_uri: str = Field(alias="contentUri")


class ExperimentAnswer(_Answer):
    experiment: ExperimentJson


class RunAnswer(_Answer):
    run: RunJson


Model = TypeVar("Model", bound=_Answer)


def parse(model: type[Model], body: dict[str, Any], endpoint: str) -> Model:
    """`body` as `model`, or a SourceError naming `endpoint` and the fields that were wrong."""
    if issubclass(model, _Page) and body and not model.FIELDS & body.keys():
        keys = ", ".join(sorted(body)[:5])
        raise BadAnswerError(
            f"{endpoint}: an answer without {' or '.join(sorted(model.FIELDS))} "
            f"(it has {keys}): not MLflow's, perhaps a gateway's"
        )
    try:
        return model.model_validate(body)
    except ValidationError as error:
        where = "; ".join(
            f"{'.'.join(str(part) for part in item['loc']) or 'body'}: {item['msg']}"
            for item in error.errors(include_input=False, include_url=False)[:3]
        )
        raise BadAnswerError(f"{endpoint}: an answer of the wrong shape ({where})") from None


Page = TypeVar("Page", bound=_Page)


def pages(
    fetch: Callable[[dict[str, str]], dict[str, Any]],
    model: type[Page],
    endpoint: str,
    token_param: str = "page_token",
    start: str | None = None,
    max_pages: int = MAX_PAGES,
) -> Iterator[Page]:
    """Every page of a paged endpoint from the page token `start` (None: the first page); `fetch`
    gets {} (or {token_param: start}), then {token_param: token}. A page token seen before, a page
    identical to the one before, or more than `max_pages` pages is an error (a server stuck on
    one page, or paging without end, would otherwise hold a pass forever)."""
    extra: dict[str, str] = {token_param: start} if start else {}
    seen: set[str] = set()
    previous: dict[str, Any] | None = None
    for _ in range(max_pages):
        body = fetch(extra)
        page = parse(model, body, endpoint)
        token = page.next_page_token
        if token and (token in seen or token == extra.get(token_param)):
            raise BadAnswerError(
                f"{endpoint}: the page token {token[:64]} repeats: the listing does not advance"
            )
        if previous is not None and body == previous:
            raise BadAnswerError(
                f"{endpoint}: the same page again for page token {extra[token_param][:64]}"
            )
        yield page
        if not token:
            return
        seen.add(token)
        extra, previous = {token_param: token}, body
    raise BadAnswerError(f"{endpoint}: more than {max_pages:,} pages: the listing does not end")
