"""Bounded parsers for every text that comes from outside (answers, tags, files, lines).

Each takes the input and a name for it (`what`: "table images/t.json", "tag
mlflow.loggedArtifacts") and returns the value or raises ParseError naming `what` and what was
wrong, never the input itself (it may carry secrets). Nothing else escapes: not RecursionError
from deep nesting, not a UnicodeDecodeError, not msgspec's or json's own errors. Sizes and
nesting depths are bounded, so a value returned is safe to walk, print or encode again.

Callers decide what one failure costs: the unit the input belongs to (a run, a file, a tag,
a line), never more.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

import msgspec

from tbmirror.errors import ParseError

MAX_JSON_DEPTH = 64  # arrays and objects inside each other; MLflow's answers use 5
MAX_TEXT_BYTES = 64 * 1024**2  # of one JSON text, unless the caller says otherwise

Shape = TypeVar("Shape")


def json_value(
    data: str | bytes,
    what: str,
    *,
    max_bytes: int = MAX_TEXT_BYTES,
    max_depth: int = MAX_JSON_DEPTH,
) -> Any:
    """Any JSON value (NaN and infinities allowed, as Python's json writes them), at most
    `max_bytes` long and `max_depth` deep."""
    if len(data) > max_bytes:
        raise ParseError(f"{what}: longer than {max_bytes:,} bytes")
    try:
        value = json.loads(data)
    except RecursionError:
        raise ParseError(f"{what}: not JSON: nested too deeply") from None
    except json.JSONDecodeError as error:
        raise ParseError(f"{what}: not JSON: {error.msg} at character {error.pos}") from None
    except ValueError as error:  # bytes in no Unicode encoding; a number of 4,300+ digits
        raise ParseError(f"{what}: not JSON: {type(error).__name__}") from None
    _check_depth(value, what, max_depth)
    return value


def json_as(
    shape: type[Shape], data: bytes, what: str, *, max_bytes: int = MAX_TEXT_BYTES
) -> Shape:
    """JSON `data` as `shape` (a msgspec type, validated laxly as MLflow's JSON needs: an int64
    as a string, an integral float as an int). `what: the field that was wrong` otherwise."""
    if len(data) > max_bytes:
        raise ParseError(f"{what}: longer than {max_bytes:,} bytes")
    try:
        return msgspec.json.decode(data, type=shape, strict=False)
    except msgspec.ValidationError as error:  # "Expected `str`, got `int` - at `$.runs[0]...`"
        raise ParseError(f"{what}: an answer of the wrong shape ({error})") from None
    except msgspec.DecodeError:
        raise ParseError(f"{what}: the answer is not JSON") from None
    except RecursionError:
        raise ParseError(f"{what}: the answer is not JSON: nested too deeply") from None


def _check_depth(value: Any, what: str, max_depth: int) -> None:
    """ParseError if lists and dicts nest more than `max_depth` deep in `value` (no recursion)."""
    level: list[Any] = [value]
    for _ in range(max_depth):
        level = [
            child
            for item in level
            if isinstance(item, (list, dict))
            for child in (item.values() if isinstance(item, dict) else item)
            if isinstance(child, (list, dict))
        ]
        if not level:
            return
    raise ParseError(f"{what}: nested more than {max_depth} deep")
