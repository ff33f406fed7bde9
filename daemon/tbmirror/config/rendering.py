"""Validation errors as the operator reads them: one line per problem naming the file and the
key path (`sources[0].poll_interval`), with a did-you-mean for an unknown key and the choices for
a value that is not one of them, never a secret or a URL's user:password@."""

from __future__ import annotations

import re
import types
import typing
from typing import Any, Literal

import msgspec

from tbmirror.config.base import Section
from tbmirror.config.schema import Location, Settings
from tbmirror.config.values import without_userinfo

_SECRET_FIELD = re.compile(r"password|token|secret|key", re.IGNORECASE)
_WHERE = re.compile(r"(.*) - at `(key` in `)?\$(.*)`", re.DOTALL)
_PATH_PART = re.compile(r"\.([^.\[]+)|\[(\d+)\]")
_KINDS = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "true or false",
    "array": "a list",
    "object": "a mapping",
    "null": "null",
    "NoneType": "null",
    "date": "a date",
    "datetime": "a date and time",
    "time": "a time",
    "bytes": "binary data",
}
_BOUNDS = {">=": "at least", "<=": "at most", ">": "greater than", "<": "less than"}


def key_path(location: Location) -> str:
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(top level)"


def line(origin: str, location: Location, message: str) -> str:
    """One problem as printed: `<file>: <key path>: <message>` (no key path for the file)."""
    return f"{origin}: {key_path(location)}: {message}" if location else f"{origin}: {message}"


def describe(error: msgspec.ValidationError, base: Location, document: Any) -> tuple[Location, str]:
    """Where in the file and what is wrong, for msgspec's `error` converting the value at `base`
    of the `document` (read to name the choices, the known keys and the value given)."""
    text, path, of_key = str(error), "", False
    if where := _WHERE.fullmatch(text):
        text, of_key, path = where.group(1), bool(where.group(2)), where.group(3)
    location = base + tuple(
        int(index) if index else name for name, index in _PATH_PART.findall(path)
    )
    if of_key:  # a mapping's key that is not a string (`1: x`)
        return location, "expected every key to be a string"
    if match := re.fullmatch(r"Object (missing required|contains unknown) field `(.*)`", text):
        location += (match.group(2),)
        if match.group(1) == "missing required":
            return location, "required key is missing"
        return unknown_key(location, document)
    message = _expected(text, location, document)
    given = _value_at(document, location)
    if isinstance(given, str):
        given = without_userinfo(given)
    if (
        isinstance(given, (str, int, float))
        and len(str(given)) <= 80
        and not _SECRET_FIELD.search(" ".join(str(part) for part in location))
        and "@" not in str(given)  # a user:password@ that without_userinfo could not find
    ):
        message += f" (got {given!r})"
    return location, message


def _expected(text: str, location: Location, document: Any) -> str:
    """msgspec's `Expected ...` in words; our own checks' messages as they are."""
    if location and location[-1] == "type" and (tags := _choices(location, document)):
        return f"expected one of {', '.join(map(repr, tags))}"  # whatever was wrong with it
    if text in ("Number out of range", "Integer value out of range"):
        return "expected a number within the key's limits (see the configuration reference)"
    if match := re.fullmatch(r"Expected `(.+?)`, got `(.+?)`", text):
        return f"expected {_kinds(match.group(1))}, not {_kinds(match.group(2))}"
    if match := re.fullmatch(r"Expected `(.+?)` of length (>=|<=) (\d+)", text):
        unit = "item" if match.group(1) == "array" else "character"
        count = int(match.group(3))
        return f"expected {_BOUNDS[match.group(2)]} {count} {unit}" + "s" * (count != 1)
    if match := re.fullmatch(r"Expected `(.+?)` (>=|<=|>|<) (\S+)", text):
        bound = match.group(3)
        number = int(bound) if bound.lstrip("-").isdigit() else float(bound)
        shown = f"{int(number):,}" if float(number).is_integer() else f"{number:g}"
        return f"expected {_kinds(match.group(1))} {_BOUNDS[match.group(2)]} {shown}"
    if match := re.fullmatch(r"Expected `str` matching regex '(.*)'", text):
        return f"expected a string matching `{match.group(1)}`"
    if re.fullmatch(r"Invalid (enum )?value .*", text):
        choices = _choices(location, document)
        return f"expected one of {', '.join(map(repr, choices))}" if choices else "invalid value"
    return text


def _kinds(names: str) -> str:
    return " or ".join(_KINDS.get(name, f"`{name}`") for name in names.split(" | "))


def _value_at(document: Any, location: Location) -> Any:
    """The value the file gives at `location`, or None."""
    for part in location:
        listed = isinstance(part, int) and isinstance(document, list) and part < len(document)
        if not (listed or (isinstance(document, dict) and part in document)):
            return None
        document = document[part]
    return document


def _inner_types(annotation: Any) -> list[Any]:
    """The types an annotation may hold, through Annotated, unions, lists and None."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _inner_types(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType, list):
        return [inner for arg in typing.get_args(annotation) for inner in _inner_types(arg)]
    return [annotation]


def _sections_at(location: Location, document: Any) -> list[type[Section]]:
    """The sections the mapping at `location` may be (a union's member picked by its `type`)."""
    sections: list[type[Section]] = [Settings]
    for depth, part in enumerate(location):
        if isinstance(part, str):
            sections = [
                inner
                for section in sections
                for field in msgspec.structs.fields(section)
                if field.name == part
                for inner in _inner_types(field.type)
                if isinstance(inner, type) and issubclass(inner, Section)
            ]
        given = _value_at(document, location[: depth + 1])
        tag = given.get("type") if isinstance(given, dict) else None
        sections = [s for s in sections if s.__struct_config__.tag == tag] or sections
    return sections


def _choices(location: Location, document: Any) -> list[Any]:
    """The values allowed at `location`: a Literal's, or the `type` tags of a union."""
    while location and isinstance(location[-1], int):  # an item of a list: the list's key
        location = location[:-1]
    *parent, name = location
    sections = _sections_at(tuple(parent), document)
    if name == "type":
        *outer, key = parent
        while isinstance(key, int) and outer:  # a list item: its list's key
            *outer, key = outer
        owners = _sections_at(tuple(outer), document)
        return [
            inner.__struct_config__.tag
            for owner in owners
            for field in msgspec.structs.fields(owner)
            if field.name == key
            for inner in _inner_types(field.type)
            if isinstance(inner, type) and issubclass(inner, Section)
        ]
    return [
        value
        for section in sections
        for field in msgspec.structs.fields(section)
        if field.name == name
        for inner in _inner_types(field.type)
        if typing.get_origin(inner) is Literal
        for value in typing.get_args(inner)
    ]


def unknown_key(location: Location, document: Any) -> tuple[Location, str]:
    """The problem of an unknown key at `location`, with " (did you mean 'x'?)" naming the
    known key of that section most like it, if one is."""
    sections = _sections_at(location[:-1], document)
    known = sorted(
        {field.name for section in sections for field in msgspec.structs.fields(section)}
    )
    known += ["type"] * any(section.__struct_config__.tag_field for section in sections)
    import difflib  # (here: a valid file, every command's case, does without it)

    close = difflib.get_close_matches(str(location[-1]), known, n=1, cutoff=0.6)
    return location, "unknown key" + (f" (did you mean {close[0]!r}?)" if close else "")
