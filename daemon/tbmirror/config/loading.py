"""Loading the file: read, parse the YAML safely, interpolate `${ENV_VAR}`, and build the settings
(msgspec, each section and each source apart so the first problem of each is named; a string
given for a number or a boolean is read as one, as `${PORT}` gives a string)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import msgspec
import yaml

from tbmirror import parsers
from tbmirror.config.rendering import describe, key_path, line, unknown_key
from tbmirror.config.schema import Location, Settings, SourceSettings, relations
from tbmirror.config.values import convert_value
from tbmirror.errors import ConfigError, ParseError

_ENV_REFERENCE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def load_settings(path: Path, offline: bool = False) -> Settings:
    """Read, interpolate `${ENV_VAR}` references in, and validate the YAML file at `path`;
    `offline`: looking nothing else up on this machine's disk (see parse_settings)."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the config file: {error.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ConfigError(f"{path}: line {line}: not UTF-8 text") from None
    return parse_settings(text, origin=str(path), offline=offline)


def parse_settings(text: str, origin: str = "<config>", offline: bool = False) -> Settings:
    """Validate YAML `text`; `origin` names it in errors. `offline`: paths are compared as
    written (no symbolic link resolved, no file system looked at), for checking a file made
    for another machine."""
    try:
        document = parsers.yaml_document(text, origin, _Loader, lambda e: _yaml_error(e, text))
    except ParseError as error:
        raise ConfigError(str(error)) from None
    if not isinstance(document, dict):
        raise ConfigError(f"{origin}: expected a mapping with 'mirror' and 'sources' at the top")
    return settings_from(_interpolate(document, (), origin), origin, offline)


def settings_from(
    document: dict[str, Any], origin: str = "<config>", offline: bool = False
) -> Settings:
    """Settings from the file's parsed and interpolated `document` (or one a program built), or
    ConfigError with one line per problem: every section and every source is converted apart
    (so each one's first problem is named), then the sections are checked against each other."""
    fields = {field.name: field for field in msgspec.structs.fields(Settings)}
    problems: list[tuple[Location, str]] = [
        unknown_key((str(name),), document) for name in document if name not in fields
    ]
    parts: dict[str, Any] = {}
    for name, field in fields.items():
        if name not in document:
            if field.required:
                problems.append(((name,), "required key is missing"))
        elif name == "sources" and isinstance(document[name], list) and document[name]:
            parts[name] = [
                _convert(item, SourceSettings, (name, index), document, problems)
                for index, item in enumerate(document[name])
            ]
        else:
            parts[name] = _convert(document[name], field.type, (name,), document, problems)
    if not problems:
        settings = Settings(**parts)
        problems = list(relations(settings, offline))
    if problems:
        raise ConfigError("\n".join(line(origin, where, what) for where, what in problems))
    return settings


def _convert(
    value: Any,
    kind: Any,
    location: Location,
    document: dict[str, Any],
    problems: list[tuple[Location, str]],
) -> Any:
    """`value` (at `location` of `document`) as a `kind`, or None with its problem added to
    `problems`."""
    try:
        return msgspec.convert(value, kind, strict=False, dec_hook=convert_value)
    except msgspec.ValidationError as error:
        problems.append(describe(error, location, document))
        return None


class _Loader(yaml.SafeLoader):
    """pyyaml's safe loader, whose tagged values that cannot be read (`!!int abc`) are YAML errors
    with a position, rather than a ValueError that quotes the value."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, OverflowError):
            raise yaml.constructor.ConstructorError(
                None, None, "a value cannot be read as its tag says", node.start_mark
            ) from None


_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")


def _yaml_error(error: yaml.YAMLError, text: str) -> str:
    """Where the YAML is wrong and pyyaml's one-line problem, never the line itself (pyyaml's own
    message quotes it, and it may hold an inline password): quoted parts of the problem are kept
    only when they are one escaped or punctuation character."""
    where = ""
    problem: str | None = None
    if isinstance(error, yaml.MarkedYAMLError):
        problem = ": ".join(part for part in (error.context, error.problem) if part)
        if error.problem_mark is not None:
            mark = error.problem_mark
            where = f"line {mark.line + 1}, column {mark.column + 1}: "
    elif isinstance(error, yaml.reader.ReaderError):
        line = text.count("\n", 0, error.position) + 1
        column = error.position - (text.rfind("\n", 0, error.position) + 1) + 1
        where = f"line {line}, column {column}: "
        problem = f"character U+{error.character:04X} is not allowed"

    def keep(match: re.Match[str]) -> str:
        inner = match.group(0)[1:-1]
        plain = len(inner) == 1 and not inner.isalnum()
        return match.group(0) if plain or re.fullmatch(r"\\[a-z0-9]{1,5}", inner) else "'...'"

    problem = _QUOTED.sub(keep, problem or "").replace("\n", " ").strip()
    return f"{where}not valid YAML" + (f": {problem}" if problem else "")


def _interpolate(node: Any, where: tuple[str | int, ...], origin: str) -> Any:
    """Replace `${NAME}` in every string with the environment variable; `$$` is a literal `$`.
    A NUL in any string is refused (no path, argument or header can hold one)."""
    if isinstance(node, dict):
        return {key: _interpolate(value, (*where, key), origin) for key, value in node.items()}
    if isinstance(node, list):
        return [_interpolate(value, (*where, index), origin) for index, value in enumerate(node)]
    if not isinstance(node, str):
        return node

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return "$"
        if name not in os.environ:
            raise ConfigError(
                f"{origin}: {key_path(where)}: environment variable {name} is not set"
            )
        return os.environ[name]

    text = _ENV_REFERENCE.sub(substitute, node)
    if "\0" in text:
        raise ConfigError(f"{origin}: {key_path(where)}: contains a NUL character")
    return text
