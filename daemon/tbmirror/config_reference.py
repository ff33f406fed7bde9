"""The configuration reference (docs/reference/configuration.md), generated from the schema.

Every key of `tbmirror.config.Settings` with its type, default, limits and description (the
sections' `Meta(description=...)`; a key without one is an error here, so the reference cannot
fall behind the schema). Regenerate with:

    python -m tbmirror.config_reference docs/reference/configuration.md
"""

from __future__ import annotations

import sys
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import msgspec

from tbmirror import config
from tbmirror.config.base import Section
from tbmirror.config.values import INT64_MAX, ByteSize, Duration, HttpUrl, PositiveDuration, Secret

COMMAND = "python -m tbmirror.config_reference docs/reference/configuration.md"
_UNITS = (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0), ("ms", 0.001))
_SIZES = (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024))

# The sections of the file, in the order a reader meets them: (heading, key prefix, model).
SECTIONS: list[tuple[str, str, type[Section]]] = [
    ("The top level", "", config.Settings),
    ("mirror", "mirror.", config.MirrorSettings),
    ("An mlflow source", "sources[].", config.MlflowSourceSettings),
    ("Its artifacts", "sources[].artifacts.", config.ArtifactSettings),
    ("auth: basic", "sources[].auth.", config.BasicAuth),
    ("auth: bearer", "sources[].auth.", config.BearerAuth),
    ("auth: databricks", "sources[].auth.", config.DatabricksAuth),
    ("auth: azure", "sources[].auth.", config.AzureAuth),
    ("An uploads source", "sources[].", config.UploadsSourceSettings),
    ("tensorboard", "tensorboard.", config.TensorBoardSettings),
    ("health", "health.", config.HealthSettings),
    ("logging", "logging.", config.LoggingSettings),
]

HEADER = f"""# Configuration reference

<!-- Generated from daemon/tbmirror/config/ by `{COMMAND}`: do not edit by hand. -->

One YAML file: `/etc/tbmirror/config.yaml` unless `--config` or `$TBMIRROR_CONFIG` names
another. `mirror` and `sources` are required; every other key has a default. Unknown keys are
errors, and every error names the file, the key path and what was expected, e.g.
`config.yaml: sources[0].poll_interval: expected a duration like '10s', '5m' or a number of
seconds (got 'soon')`.

Value formats:

- **duration**: `500ms`, `10s`, `5m`, `1h`, `1d`, or a bare number of seconds (at most 366 days).
- **size**: `512MiB`, `2GiB` (powers of 1024), `10GB` or `10G` (powers of 1000), or a number of
  bytes.
- **numbers and booleans** may be written as strings, as `${{NAME}}` gives them: `"6006"`,
  `"true"`, `"false"`, `"1"`, `"0"` (and `"null"` is null).
- **`${{NAME}}`** in any string is replaced by the environment variable `NAME` (an unset one is
  an error naming the key); `$$` is a literal `$`.
- **secret**: one line; write `${{ENV_VAR}}` or use the matching `*_file` key rather than the
  secret itself. Secrets never appear in logs, errors or `check` output.

See `config/tbmirror.example.yaml` in the repository for a commented example.
"""


def render() -> str:
    """The whole reference, as Markdown."""
    parts = [HEADER]
    for heading, prefix, model in SECTIONS:
        parts.append(f"\n## {heading}\n")
        intro = " ".join((model.__doc__ or "").split())
        if intro:
            parts.append(f"\n{intro}\n")
        parts.append("\n| key | type | default | description |\n| --- | --- | --- | --- |\n")
        parts.extend(f"| {' | '.join(row)} |\n" for row in _rows(model, prefix))
    return "".join(parts)


def _rows(section: type[Section], prefix: str) -> Iterator[tuple[str, str, str, str]]:
    tag = section.__struct_config__.tag
    if tag is not None:  # the key that selects this section in a union
        yield (
            f"`{prefix}{section.__struct_config__.tag_field}`",
            f"`{tag}`",
            "required",
            f"`{tag}`.",
        )
    for field in msgspec.structs.fields(section):
        metadata = _metadata(field.type)
        descriptions = [m.description for m in metadata if m.description]
        if not descriptions:
            raise ValueError(f"{section.__name__}.{field.name} has no Meta(description=...)")
        limits = _limits(field.type, metadata)
        description = descriptions[0] + (f" Limits: {limits}." if limits else "")
        yield (
            f"`{prefix}{field.name}`",
            _type(field.type),
            _default(field),
            description.replace("|", "\\|"),
        )


def _metadata(annotation: Any) -> list[msgspec.Meta]:
    """Every `Meta` of an annotation, through nested Annotated and unions."""
    found = []
    if typing.get_origin(annotation) is typing.Annotated:
        found = [m for m in annotation.__metadata__ if isinstance(m, msgspec.Meta)]
    for argument in typing.get_args(annotation):
        if typing.get_origin(annotation) in (typing.Annotated, typing.Union, types.UnionType):
            found += _metadata(argument)
    return found


def _type(annotation: Any) -> str:
    """A reader's name for a field's type."""
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type(arguments[0])
    if origin in (typing.Union, types.UnionType):
        kept = [argument for argument in arguments if argument is not type(None)]
        kinds = dict.fromkeys(_type(argument) for argument in kept)
        return " or ".join(kinds)  # a union of sections is one "mapping"
    if origin is Literal:
        return " \\| ".join(f"`{value}`" for value in arguments)
    if origin is list:
        return f"list of {_type(arguments[0])}"
    names: list[tuple[type, str]] = [
        (Section, "mapping"),
        (Duration, "duration"),
        (ByteSize, "size"),
        (Secret, "secret"),
        (Path, "path"),
        (HttpUrl, "URL"),
        (list, "list of string"),
        (str, "string"),
        (bool, "boolean"),
        (int, "integer"),
        (float, "number"),
    ]
    return next(name for kind, name in names if issubclass(annotation, kind))


def _default(field: msgspec.structs.FieldInfo) -> str:
    if field.required:
        return "required"
    value = field.default if field.default_factory is msgspec.NODEFAULT else field.default_factory()
    if value is None:
        return "unset"
    if isinstance(value, Section):
        return "(below)"
    if isinstance(value, Duration):
        return f"`{_duration(float(value))}`"
    if isinstance(value, ByteSize):
        return f"`{_size(int(value))}`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, list):
        return "`[" + ", ".join(f'"{item}"' for item in value) + "]`"
    if isinstance(value, int):
        return f"`{value:_}`".replace("_", ",") if value >= 10_000 else f"`{value}`"
    return f"`{value}`"


def _duration(seconds: float) -> str:
    for unit, size in _UNITS:
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    return f"{seconds}s"


def _size(count: int) -> str:
    for unit, size in _SIZES:
        if count >= size and count % size == 0:
            return f"{count // size}{unit}"
    return f"{count} bytes"


def _limits(annotation: Any, metadata: list[msgspec.Meta]) -> str:
    """The field's constraints, in words (an integer's int64 ceiling goes without saying)."""
    found = []
    for item in metadata:
        if item.ge is not None:
            found.append(f">= {_number(item.ge)}")
        if item.le is not None and item.le != INT64_MAX:
            found.append(f"<= {_number(item.le)}")
        if item.min_length is not None:
            found.append(f"at least {item.min_length} item" + "s" * (item.min_length != 1))
        if item.pattern is not None:
            found.append(f"matches `{item.pattern}`")
    for kind in _custom_types(annotation):
        if kind is PositiveDuration:
            found.append("> 0")
        elif isinstance(kind, type) and issubclass(kind, ByteSize) and kind.maximum != INT64_MAX:
            found.append(f"<= {_size(kind.maximum)}")
    return ", ".join(found)


def _custom_types(annotation: Any) -> list[Any]:
    arguments = typing.get_args(annotation)
    return [annotation] if not arguments else [t for a in arguments for t in _custom_types(a)]


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


def main(arguments: list[str]) -> int:
    """Write the reference to the path given, or print it."""
    text = render()
    if arguments:
        Path(arguments[0]).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
