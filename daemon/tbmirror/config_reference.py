"""The configuration reference (docs/reference/configuration.md), generated from the schema.

Every key of `tbmirror.config.Settings` with its type, default, limits and description (the
models' `Field(description=...)`; a key without one is an error here, so the reference cannot
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

import annotated_types
from pydantic import BaseModel, BeforeValidator, ByteSize, SecretStr
from pydantic.fields import FieldInfo

from tbmirror import config

COMMAND = "python -m tbmirror.config_reference docs/reference/configuration.md"
_UNITS = (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0), ("ms", 0.001))
_SIZES = (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024))

# The sections of the file, in the order a reader meets them: (heading, key prefix, model).
SECTIONS: list[tuple[str, str, type[BaseModel]]] = [
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
- **size**: `512MiB`, `2GiB`, `10GB` or a number of bytes.
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


def _rows(model: type[BaseModel], prefix: str) -> Iterator[tuple[str, str, str, str]]:
    for name, field in model.model_fields.items():
        if not field.description:
            raise ValueError(f"{model.__name__}.{name} has no Field(description=...)")
        limits = _limits(field)
        description = field.description + (f" Limits: {limits}." if limits else "")
        yield (
            f"`{prefix}{name}`",
            _type(field.annotation, field.metadata),
            _default(field),
            description.replace("|", "\\|"),
        )


def _type(annotation: Any, metadata: list[Any]) -> str:
    """A reader's name for a field's type."""
    if any(isinstance(m, BeforeValidator) and m.func is config.parse_duration for m in metadata):
        return "duration"
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type(arguments[0], list(arguments[1:]))
    if origin in (typing.Union, types.UnionType):
        kept = [argument for argument in arguments if argument is not type(None)]
        kinds = dict.fromkeys(_type(argument, metadata) for argument in kept)
        return " or ".join(kinds)  # a union of sections is one "mapping"
    if origin is Literal:
        return " \\| ".join(f"`{value}`" for value in arguments)
    if origin is list:
        return f"list of {_type(arguments[0], [])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping"
    names: dict[Any, str] = {
        str: "string",
        bool: "boolean",
        int: "integer",
        float: "number",
        Path: "path",
        ByteSize: "size",
        SecretStr: "secret",
    }
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, BaseModel):
        return "(below)"
    metadata = field.metadata + [
        item
        for argument in typing.get_args(field.annotation)
        for item in getattr(argument, "__metadata__", ())
    ]
    if _type(field.annotation, metadata) == "duration":
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


def _limits(field: FieldInfo) -> str:
    """The field's constraints, in words."""
    found = []
    for item in field.metadata:
        if isinstance(item, annotated_types.Ge):
            found.append(f">= {_number(item.ge)}")
        elif isinstance(item, annotated_types.Le):
            found.append(f"<= {_number(item.le)}")
        elif isinstance(item, annotated_types.MinLen):
            found.append(f"at least {item.min_length} item" + "s" * (item.min_length != 1))
        elif getattr(item, "pattern", None):
            found.append(f"matches `{item.pattern}`")
    return ", ".join(found)


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
