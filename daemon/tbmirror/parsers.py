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
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
import yaml

from tbmirror.errors import ParseError

MAX_JSON_DEPTH = 64  # arrays and objects inside each other; MLflow's answers use 5
MAX_TEXT_BYTES = 64 * 1024**2  # of one JSON text, unless the caller says otherwise
MAX_YAML_NODES = 100_000  # values of a YAML document with its aliases expanded

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


def yaml_document(
    text: str,
    what: str,
    loader: type[yaml.SafeLoader],
    describe: Callable[[yaml.YAMLError], str],
    *,
    max_nodes: int = MAX_YAML_NODES,
) -> Any:
    """The one YAML document in `text`, read with `loader` (a SafeLoader), at most `max_nodes`
    values once its aliases are expanded (a "billion laughs" file of a few lines would otherwise
    take hours to walk) and without an alias inside itself. `describe` words pyyaml's errors
    (where, what; never the line, which may hold a password)."""
    try:
        reader = loader(text)  # (checks the characters: a ReaderError)
        try:
            node = reader.get_single_node()
            if node is None:
                return None
            _check_expanded_size(node, what, max_nodes)
            return reader.construct_document(node)
        finally:
            reader.dispose()
    except yaml.YAMLError as error:
        raise ParseError(f"{what}: {describe(error)}") from None
    except RecursionError:
        raise ParseError(f"{what}: not valid YAML: nested too deeply") from None


def _check_expanded_size(root: yaml.Node, what: str, max_nodes: int) -> None:
    """ParseError if `root` holds more than `max_nodes` values with its aliases expanded, or an
    alias to a node that contains it (depth first, each distinct node's size computed once)."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        children = _children(node)
        if children_done:
            open_nodes.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in children)
            if sizes[key] > max_nodes:
                raise ParseError(f"{what}: more than {max_nodes:,} values with aliases expanded")
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            raise ParseError(f"{what}: an alias (*name) to a value that contains it")
        open_nodes.add(key)
        stack.append((node, True))
        for child in children:
            if id(child) in open_nodes:
                raise ParseError(f"{what}: an alias (*name) to a value that contains it")
            if id(child) not in sizes:
                stack.append((child, False))


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []
