"""The base of every section of the file, and of sections holding a secret."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ByteSize, ConfigDict, SecretStr, field_validator

from tbmirror.config.values import INT64, MAX_SECRET_FILE_BYTES, read_small_file
from tbmirror.errors import ConfigError


class Section(BaseModel):
    """A section of the file: unknown keys refused, floats finite, and every value in the range
    the code that uses it can take (checked for every field of every section; `_lax_inputs`
    refuses what pydantic's lax mode would quietly take)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _in_range(cls, value: Any) -> Any:
        if isinstance(value, ByteSize) and not 0 < value <= INT64[1]:
            raise ValueError("expected a size greater than 0 (and below 8 EiB)")
        if isinstance(value, int) and not isinstance(value, bool):
            if value > INT64[1]:
                raise ValueError(f"expected at most {INT64[1]}")
            if value < INT64[0]:
                raise ValueError(f"expected at least {INT64[0]}")
        return value


class SecretSource(Section):
    """A secret given inline (use ${ENV_VAR}) or as a file (e.g. systemd LoadCredential=).

    A secret is one line: an inline one with a CR, LF or NUL is refused at validation, a file is
    checked when it is read (on first use) and may end with a newline. Errors name the key or the
    file, never the content."""

    @field_validator("*", mode="after")
    @classmethod
    def _one_line(cls, value: Any) -> Any:
        if isinstance(value, SecretStr):
            secret = value.get_secret_value()
            if not secret.strip():
                raise ValueError("expected a secret, not an empty value")
            if any(character in secret for character in "\r\n\0"):
                raise ValueError("expected one line (no CR, LF or NUL)")
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _absolute_file(cls, value: Any) -> Any:
        """A secret file is named by an absolute path: the daemon's working directory is not
        the operator's."""
        if isinstance(value, Path) and not value.is_absolute():
            raise ValueError("expected an absolute path")
        return value

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
        if any(character in text for character in "\r\n\0"):
            raise ConfigError(
                f"{name}: expected the secret on one line (found a second line, a CR or a NUL)"
            )
        return text

    @staticmethod
    def _one_of(settings: Section, field: str, required: bool = True) -> None:
        given = [
            getattr(settings, field) is not None,
            getattr(settings, f"{field}_file") is not None,
        ]
        if all(given):
            raise ValueError(f"give either {field} or {field}_file, not both")
        if required and not any(given):
            raise ValueError(f"{field} or {field}_file is required")
