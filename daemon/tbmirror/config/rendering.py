"""Validation errors as the operator reads them: one line per problem naming the file and the
key path (`sources[0].poll_interval`), with a did-you-mean for an unknown key, never a secret
or a URL's user:password@."""

from __future__ import annotations

import re
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from tbmirror.config.auth import Auth
from tbmirror.config.schema import Settings, SourceSettings
from tbmirror.config.values import without_userinfo

_SECRET_FIELD = re.compile(r"password|token|secret|key", re.IGNORECASE)


def key_path(location: tuple[str | int, ...]) -> str:
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(top level)"


def _union_tags(union: Any) -> frozenset[str]:
    """The `type` values that select a member of a discriminated union of sections."""
    members = get_args(get_args(union)[0])
    return frozenset(
        tag for member in members for tag in get_args(member.model_fields["type"].annotation)
    )


_UNION_TAGS = {"sources": _union_tags(SourceSettings), "auth": _union_tags(Auth)}


def _without_union_tags(location: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """A pydantic error location without the union member names (`sources[0].mlflow.x` ->
    `sources[0].x`): the file has no such key."""
    kept: list[str | int] = []
    for part in location:
        owner = kept[-1] if kept else None
        if isinstance(owner, int) and len(kept) > 1:
            owner = kept[-2]  # the list a union member is in: sources[0] -> sources
        if isinstance(part, str) and isinstance(owner, str) and part in _UNION_TAGS.get(owner, ()):
            continue
        kept.append(part)
    return tuple(kept)


def _sections_in(annotation: Any) -> list[type[BaseModel]]:
    """The sections an annotation may hold (through Annotated, unions, lists and None)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [section for inner in get_args(annotation) for section in _sections_in(inner)]


def _union_tags_of(section: type[BaseModel]) -> tuple[Any, ...]:
    return get_args(section.model_fields["type"].annotation)


def _did_you_mean(location: tuple[str | int, ...]) -> str:
    """For an unknown key at pydantic's `location`: " (did you mean 'x'?)" naming the known key
    of that section most like it, or "" if none is."""
    sections: list[type[BaseModel]] = [Settings]
    for part in location[:-1]:
        if isinstance(part, int):
            continue
        tagged = [s for s in sections if "type" in s.model_fields and part in _union_tags_of(s)]
        if tagged:  # a union member named by its tag (sources[0].mlflow)
            sections = tagged
            continue
        sections = [
            inner
            for section in sections
            if part in section.model_fields
            for inner in _sections_in(section.model_fields[part].annotation)
        ]
    known = sorted({name for section in sections for name in section.model_fields})
    import difflib  # (here: a valid file, every command's case, does without it)

    close = difflib.get_close_matches(str(location[-1]), known, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def describe(error: ValidationError, origin: str) -> str:
    lines = []
    for item in error.errors():
        location = _without_union_tags(tuple(item["loc"]))
        message = item["msg"].removeprefix("Value error, ")
        context = item.get("ctx") or {}
        if item["type"] == "extra_forbidden":
            message = "unknown key" + _did_you_mean(item["loc"])
        elif item["type"] in ("missing", "union_tag_not_found"):
            message = "required key is missing"
        if item["type"] in ("union_tag_invalid", "union_tag_not_found"):
            location += (context.get("discriminator", "type").strip("'"),)
        if item["type"] == "union_tag_invalid":
            message = f"expected one of {context['expected_tags']} (got {context['tag']!r})"
        got = item.get("input")
        if isinstance(got, str):
            got = without_userinfo(got)
        named = " ".join(str(part) for part in location)
        if (
            item["type"] not in ("missing", "extra_forbidden")
            and isinstance(got, (str, int, float))
            and len(str(got)) <= 80
            and not _SECRET_FIELD.search(named)
            and "@" not in str(got)  # a user:password@ that without_userinfo could not find
        ):
            message += f" (got {got!r})"
        where = f"{key_path(location)}: " if location else ""  # whole-file checks name the keys
        lines.append(f"{origin}: {where}{message}")
    return "\n".join(lines)
