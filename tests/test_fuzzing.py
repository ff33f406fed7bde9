"""Property tests (Hypothesis) of every parser of outside input (issue 28 defect 1): whatever
bytes come, each returns a value or raises tbmirror's own error for that unit, never another
exception (RecursionError, UnicodeDecodeError, msgspec's, yaml's).

Inputs mix random bytes, random JSON built from the real field names (so that most of it gets
deep into the shapes), JSON nested thousands deep alone and inside otherwise valid answers, and
mutated tfevents records. Profiles (fixed seed in CI, a long campaign by hand):
tests/helpers/fuzzing.py and docs/development/fuzzing.md.
"""

from __future__ import annotations

import contextlib
import json
import math
import struct
from typing import Any

import httpx
import msgspec
import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st
from tensorboard.compat.proto.event_pb2 import Event

import helpers.fuzzing  # noqa: F401 (loads the Hypothesis profile)
from tbmirror import parsers
from tbmirror.config import Settings, parse_settings
from tbmirror.engine.mlflow.media import LoggedMedia, markdown_table
from tbmirror.errors import ConfigError, ParseError
from tbmirror.mirror import events, records, summaries
from tbmirror.mirror.convert import LineConverter
from tbmirror.model import RunSnapshot
from tbmirror.sources import responses
from tbmirror.sources.http import Answer, BadAnswerError, HttpStatusError, _status_error
from tbmirror.sources.mlflow.client import run_from_json

ANSWERS = [
    responses.RunsPage,
    responses.HistoryPage,
    responses.ExperimentsPage,
    responses.FilesPage,
    responses.CredentialsPage,
    responses.AzureArtifactsPage,
    responses.AzureContentInfo,
    responses.ExperimentAnswer,
    responses.RunAnswer,
]


def field_names(*models: type) -> list[str]:
    """Every JSON field name of `models` and the structs they hold (as sent on the wire)."""
    names: set[str] = set()
    todo: list[Any] = [msgspec.inspect.type_info(model) for model in models]
    while todo:
        info = todo.pop()
        if isinstance(info, msgspec.inspect.StructType):
            names.update(field.encode_name for field in info.fields)
            todo.extend(field.type for field in info.fields)
        elif isinstance(info, (msgspec.inspect.UnionType,)):
            todo.extend(info.types)
        elif isinstance(info, (msgspec.inspect.VarTupleType, msgspec.inspect.ListType)):
            todo.append(info.item_type)
    return sorted(names)


NAMES = [*field_names(*ANSWERS), "columns", "data", "path", "type"]
KEYS = st.sampled_from(NAMES) | st.text(max_size=6)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["NaN", "Infinity", "-Infinity", "table", "RUNNING", "1700000000000"])
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=6),
    max_leaves=30,
)


@st.composite
def deep(draw: st.DrawFn, max_depth: int = 5000) -> str:
    """JSON nested `n` deep (up to `max_depth`), as lists or objects, closed or not."""
    n = draw(st.integers(1, max_depth))
    text = "[" * n + "]" * n if draw(st.booleans()) else '{"a":' * n + "1" + "}" * n
    return text if draw(st.booleans()) else text[: draw(st.integers(0, len(text)))]


@st.composite
def json_texts(draw: st.DrawFn) -> str:
    """Random JSON, sometimes with one value replaced by `deep` nesting."""
    text = json.dumps(draw(JSON))
    if "null" in text and draw(st.booleans()):
        text = text.replace("null", draw(deep()), 1)
    return text


TEXTS = json_texts() | deep() | st.text(max_size=200)
BODIES = TEXTS.map(str.encode) | st.binary(max_size=300)


# -- JSON: the bounded parser and the answers read through it -------------------------------


@given(BODIES | TEXTS)
@example(b"[" * 100_000)
@example("[" * 65 + "]" * 65)
def test_json_value_returns_bounded_values_or_a_parse_error(data: bytes | str) -> None:
    try:
        value = parsers.json_value(data, "input")
    except ParseError as error:
        assert str(error).startswith("input: ")
        return
    json.dumps(value)  # bounded depth: anything returned can be walked and written again


@pytest.mark.parametrize("model", ANSWERS, ids=lambda model: model.__name__)
@given(body=BODIES)
@example(body=b'{"runs": [{"info": {"run_id": "r", "experiment_id": "0"}, "data": {"metrics": '
         + b"[" * 5000 + b"]" * 5000 + b"}}]}")  # fmt: skip
def test_every_answer_is_read_or_refused_as_a_bad_answer(model: type, body: bytes) -> None:
    """And what a listing holds (its runs, their latest metrics) reads, or refuses, too."""
    try:
        answer = responses.parse(model, body, "GET /endpoint")
        runs = getattr(answer, "runs", ()) or [getattr(answer, "run", None)]
        for run in filter(None, runs):
            snapshot = run_from_json(run)
            dict(snapshot.latest)
            LoggedMedia.of(snapshot)
    except BadAnswerError as error:
        assert str(error).startswith("GET /endpoint: ") or "a metric" in str(error)


@given(st.none() | TEXTS)
@example("[" * 1500)  # issue 28: RecursionError ended the whole pass
def test_a_logged_artifacts_tag_names_tables_or_none(tag: str | None) -> None:
    tags = {} if tag is None else {"mlflow.loggedArtifacts": tag}
    snapshot = RunSnapshot("r", "0", "r", "FINISHED", "active", 0, 0, None, tags=tags)
    logged = LoggedMedia.of(snapshot)
    assert logged is None or all(isinstance(path, str) for path in logged.tables)


TABLES = st.builds(
    lambda columns, rows: json.dumps({"columns": columns, "data": rows}),
    st.lists(SCALARS, max_size=4),
    st.lists(st.lists(JSON, max_size=4), max_size=4),
)


@given((TABLES | TEXTS).map(str.encode) | st.binary(max_size=200), st.integers(1, 50))
def test_a_table_file_is_markdown_or_a_parse_error(data: bytes, max_rows: int) -> None:
    with contextlib.suppress(ParseError):
        assert isinstance(markdown_table(data, max_rows), str)


@given(BODIES, st.sampled_from(["application/json", "text/html", ""]), st.integers(400, 599))
@example(b"[" * 5000, "application/json", 404)  # issue 28: a RecursionError failed the pass
def test_an_error_body_becomes_a_status_error(body: bytes, content_type: str, code: int) -> None:
    headers = httpx.Headers({"Content-Type": content_type} if content_type else {})
    answer = Answer(code, headers, body)
    error = _status_error(answer, "GET", "/api/2.0/mlflow/runs/get")
    assert isinstance(error, HttpStatusError) and error.status_code == code
    assert str(error).startswith(f"GET /api/2.0/mlflow/runs/get: HTTP {code}")


# -- lines of uploaded logs -----------------------------------------------------------------

CSV_LINES = st.lists(
    st.lists(
        st.sampled_from(["step", "wall_time", "loss", "", "nan", "1e400", '"a,b"', '"'])
        | st.text(max_size=8),
        max_size=5,
    ).map(",".join),
    max_size=8,
).map(lambda lines: "\n".join(lines).encode())
JSON_LINES = st.lists(json_texts(), max_size=6).map(lambda lines: "\n".join(lines).encode())


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
@given(data=CSV_LINES | JSON_LINES | st.binary(max_size=300), cut=st.integers(0, 300))
def test_log_lines_convert_or_are_skipped(kind: str, data: bytes, cut: int) -> None:
    """Fed in two parts (the rest of the first again with the second), as tailing does."""
    converter = LineConverter(kind)  # type: ignore[arg-type]
    payloads, consumed = converter.feed(data[:cut], 1.7e9)
    assert 0 <= consumed <= min(cut, len(data))
    more, rest = converter.feed(data[consumed:], 1.7e9)
    assert 0 <= rest <= len(data) - consumed
    for payload in payloads + more:
        assert math.isfinite(Event.FromString(payload).wall_time)
    json.dumps(converter.state())


# -- tfevents: the compiled and the Python scan -----------------------------------------------

PAYLOADS = [
    summaries.file_version(1.0),
    *(summaries.ScalarEncoder(tag).encode(1.7e9, 5, 0.5) for tag in ("loss", "a/b")),
    summaries.text("t", "| a |", 1.7e9, 3),
]


@st.composite
def tfevents_bytes(draw: st.DrawFn) -> bytes:
    """Valid records, then mutated: bytes flipped, cut, inserted, or a header with any length
    (its length CRC right) spliced in."""
    data = bytearray(events.frame_all(draw(st.lists(st.sampled_from(PAYLOADS), max_size=6))))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(data)))
        change = draw(st.sampled_from(["flip", "cut", "insert", "header"]))
        if change == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif change == "cut":
            del data[at:]
        elif change == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            length = struct.pack("<Q", draw(st.integers(0, 2**64 - 1)))
            data[at:at] = length + struct.pack("<I", events.masked_crc(length))
    return bytes(data)


@given(tfevents_bytes() | st.binary(max_size=200))
def test_both_scans_agree_on_any_bytes(data: bytes) -> None:
    python = records._scan_python(data)
    assert 0 <= python.end <= len(data)
    if events.compiled is not None:
        assert records._scan_compiled(data, events.compiled) == python
    assert len(list(events.iter_records(data[: python.end]))) == python.count


# -- the YAML config ----------------------------------------------------------------------------

LAUGHS = "\n".join(
    ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    + ["mirror: {root: /tmp/m}", "sources: *a8"]
)
CONFIG_KEYS = st.sampled_from(("mirror", "root", "sources", "name", "type", "mlflow",
                               "tracking_uri", "experiments", "uploads", "path", "poll_interval",
                               "tensorboard", "health", "port", "auth"))  # fmt: skip
CONFIGS = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(CONFIG_KEYS, inner, max_size=4),
    max_leaves=20,
).map(lambda document: yaml.safe_dump(document, allow_unicode=True))


@given(CONFIGS | st.text(max_size=300) | deep(max_depth=300))
@example(LAUGHS)  # a few lines, 10^9 values once its aliases are expanded
@example("a: &a [*a]")  # an alias inside itself
@example("[" * 600)
def test_a_config_text_is_settings_or_a_config_error(text: str) -> None:
    """(Nesting is fuzzed up to 300 deep, and once 600: pyyaml's scanner takes time quadratic in
    the depth of flow nesting, ~7 s at 2,000, before its parser ends it as nested too deeply.)"""
    try:
        assert isinstance(parse_settings(text, offline=True), Settings)
    except ConfigError as error:
        assert str(error).startswith("<config>")
