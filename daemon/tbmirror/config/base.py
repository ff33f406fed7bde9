"""The base of every section of the file, of sections told apart by `type`, and of sections
holding a secret."""

from __future__ import annotations

from pathlib import Path

import msgspec

from tbmirror.config.values import MAX_SECRET_FILE_BYTES, is_one_line, read_small_file
from tbmirror.errors import ConfigError


class Section(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """A section of the file: unknown keys refused, read-only once built (every subclass says
    `frozen=True` again: msgspec inherits it, type checkers do not).

    Every field is `Annotated[<type>, msgspec.Meta(description=..., <limits>)]`, the reference
    (config_reference.py) is generated from these. Its type or its limits check every value in
    the range the code that uses it can take (an unbounded integer: `le=INT64_MAX`); a check of
    one value is its type (values.py), a check across the section's values is `__post_init__`
    raising ValueError."""


class TaggedSection(Section, tag_field="type", frozen=True):
    """A member of a union of sections told apart by their `type` key (`tag=` of the class)."""

    @property
    def type(self) -> str:
        """The `type:` that selects this section."""
        return str(self.__struct_config__.tag)


class SecretSource(TaggedSection, frozen=True):
    """A section with secrets given inline (`Secret`; use ${ENV_VAR}) or as a file
    (`<field>_file`, an `AbsolutePath`, e.g. systemd LoadCredential=).

    A secret is one line: an inline one with a CR, LF or NUL is refused at validation, a file is
    checked when it is read (on first use) and may end with a newline. Errors name the key or the
    file, never the content."""

    def secret(self, field: str) -> str:
        """The secret `field`, or the content of `<field>_file` when that is set (trimmed)."""
        value = getattr(self, field)
        if value is not None:
            return str(value.get_secret_value())
        path: Path = getattr(self, f"{field}_file")
        name = f"{field}_file {path}"
        try:
            data = read_small_file(path, MAX_SECRET_FILE_BYTES)
        except OSError as error:
            raise ConfigError(f"cannot read {name}: {error.strerror or error}") from None
        if data is None:
            raise ConfigError(f"{name}: expected a secret of at most {MAX_SECRET_FILE_BYTES} bytes")
        try:
            text = data.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise ConfigError(f"{name}: expected UTF-8 text") from None
        if not text:
            raise ConfigError(f"{name}: expected a secret, the file is empty")
        if not is_one_line(text):
            raise ConfigError(
                f"{name}: expected the secret on one line (found a second line, a CR or a NUL)"
            )
        return text

    def _one_of(self, field: str, required: bool = True) -> None:
        given = [getattr(self, field) is not None, getattr(self, f"{field}_file") is not None]
        if all(given):
            raise ValueError(f"give either {field} or {field}_file, not both")
        if required and not any(given):
            raise ValueError(f"{field} or {field}_file is required")
