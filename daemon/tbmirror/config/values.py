"""The config file's values that msgspec cannot check alone (durations, sizes, URLs, hosts,
secrets, absolute paths), their parsers, and the file-system helpers of the checks.

A value type builds itself from what YAML gave with `from_config`, which raises ValueError saying
what was expected, never quoting the value (it may be a secret); `convert_value` is the hook
msgspec calls for them, and turns that ValueError into an error naming the key."""

from __future__ import annotations

import errno
import ipaddress
import math
import os
import re
import stat
import urllib.parse
from fractions import Fraction
from pathlib import Path, PosixPath
from typing import Annotated, Any, Literal, Self

import httpx
from msgspec import Meta

from tbmirror.mirror.steps import INT64_MAX  # (what SQLite and a count can hold too)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_HOST_NAME = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*\.?$")
MAX_DURATION_SECONDS = 366 * 86400.0  # longer is a mistake (and overflows timers)
MAX_SECRET_FILE_BYTES = 64 * 1024
DEFAULT_MAX_FILE_SIZE = 2 * 1024**3  # of a file mirrored (tfevents, CSV, ...)


def parse_duration(value: object) -> float:
    """'500ms', '10s', '5m', '1h', '1d' or a plain number of seconds -> seconds (float), from 0 to
    MAX_DURATION_SECONDS."""
    seconds: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:  # an int too large for a float
            seconds = math.inf
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds is None:
        raise ValueError("expected a duration like '10s', '5m' or a number of seconds")
    if not (math.isfinite(seconds) and 0 <= seconds <= MAX_DURATION_SECONDS):
        raise ValueError("expected a duration from 0 to 366 days")
    return seconds


_AZUREML_WORKSPACE = re.compile(
    r"^(?P<prefix>.*)/mlflow/v1\.0(?P<workspace>/subscriptions/[^/]+/resourceGroups/[^/]+"
    r"/providers/Microsoft\.MachineLearningServices/workspaces/[^/]+)/?$",
    re.IGNORECASE,
)


def azureml_workspace(tracking_uri: str) -> tuple[str, str] | None:
    """(the address before `/mlflow/v1.0`, the `/subscriptions/.../workspaces/<name>` path) of an
    Azure ML workspace's MLflow tracking URI, or None if it is not one."""
    parts = urllib.parse.urlsplit(tracking_uri)
    matched = _AZUREML_WORKSPACE.match(parts.path)
    if matched is None:
        return None
    return f"{parts.scheme}://{parts.netloc}{matched['prefix']}", matched["workspace"]


def http_url(value: str) -> str:
    """`value` as an http(s) base URL requests can be sent to (`azureml://` as `https://`, no
    trailing "/"), or ValueError saying what is wrong (never quoting the value)."""
    if value.startswith("azureml://"):
        value = "https://" + value.removeprefix("azureml://")  # as Azure prints it
    if not value.isprintable() or any(character.isspace() for character in value):
        raise ValueError("expected a URL without spaces or control characters")
    try:
        parts = urllib.parse.urlsplit(value)
    except ValueError:  # an unclosed or invalid [IPv6] host
        raise ValueError("expected a valid host name or address") from None
    if parts.scheme.lower() not in ("http", "https") or not value.lower().startswith(
        f"{parts.scheme.lower()}://"
    ):
        raise ValueError("expected an http:// or https:// (or azureml://) URL")
    if not parts.hostname:
        raise ValueError("expected a host after http(s)://")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise ValueError("expected a port from 1 to 65535 after the host")
    if parts.query or parts.fragment or "?" in value or "#" in value:
        raise ValueError("expected a URL without a query (?...) or fragment (#...)")
    try:
        url = httpx.URL(value)
        host = url.raw_host.decode("ascii")
        url.host  # noqa: B018 (decodes an IDNA name, which can fail)
    except Exception:  # httpx.InvalidURL, IDNA errors
        raise ValueError("expected a valid host name or address") from None
    if not (host and _valid_host(host, ipv6=parts.netloc.rpartition("@")[2].startswith("["))):
        raise ValueError("expected a valid host name or address")
    return value.rstrip("/")


def _valid_host(host: str, ipv6: bool = False) -> bool:
    """Whether `host` (ASCII, as sent) is an IPv4 address, a DNS name or, with `ipv6`, an IPv6
    address."""
    try:
        ipaddress.ip_address(host) if ipv6 else ipaddress.IPv4Address(host)
        return True
    except ValueError:
        if ipv6 or re.fullmatch(r"[0-9.]+", host):  # a bad address is not a name
            return False
    return len(host) <= 253 and _HOST_NAME.match(host) is not None


def listen_host(value: str) -> str:
    """A host to listen on (IPv4: TensorBoard's port check and the health endpoint use IPv4)."""
    if not _valid_host(value):
        raise ValueError("expected an IPv4 address or a host name (IPv6 is not supported here)")
    return value


SourceName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
RunStatus = Literal["RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED"]
_SIZE = re.compile(r"^\s*([0-9]{0,40}\.?[0-9]{1,40})\s*([A-Za-z]{0,3})\s*$")
_DECIMAL_UNITS = {"k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "p": 10**15, "e": 10**18}
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    **_DECIMAL_UNITS,  # `512M` is 512 MB, as pydantic read it
    **{f"{prefix}b": size for prefix, size in _DECIMAL_UNITS.items()},
    **{f"{prefix}ib": 2 ** (10 * power) for power, prefix in enumerate("kmgtpe", start=1)},
}


def convert_value(kind: type, value: Any) -> Any:
    """msgspec's hook for the types it cannot build alone: a value of `kind` from what the file
    gave, or ValueError saying what was expected."""
    if kind is Path:
        return Path(_path_text(value))
    from_config = getattr(kind, "from_config", None)
    if from_config is None:
        raise NotImplementedError(kind)  # a schema bug: msgspec reports "unsupported type"
    return from_config(value)


class Duration(float):
    """Seconds, written `500ms`, `10s`, `5m`, `1h`, `1d` or as a number of seconds."""

    @classmethod
    def from_config(cls, value: object) -> Self:
        return cls(parse_duration(value))


class PositiveDuration(Duration):
    """A duration greater than 0."""

    @classmethod
    def from_config(cls, value: object) -> Self:
        seconds = super().from_config(value)
        if seconds <= 0:
            raise ValueError("expected a duration greater than 0")
        return seconds


class ByteSize(int):
    """A number of bytes, written `512MiB`, `2GiB`, `10GB` or as a number, from 1 to `maximum`."""

    maximum = INT64_MAX

    @classmethod
    def from_config(cls, value: object) -> Self:
        count: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            count = value
        elif isinstance(value, float) and value.is_integer():
            count = int(value)
        elif isinstance(value, str) and (match := _SIZE.match(value)):
            unit = _SIZE_UNITS.get(match.group(2).lower())
            if unit is not None:
                count = int(Fraction(match.group(1)) * unit)  # exact: no float rounding
        if count is None:
            raise ValueError("expected a size like '512MiB', '2GiB', '10GB' or a number of bytes")
        if not 0 < count <= cls.maximum:
            raise ValueError(f"expected a size greater than 0 and at most {cls.maximum:,} bytes")
        return cls(count)


class HttpUrl(str):
    """An http(s) base URL requests can be sent to (see `http_url`)."""

    @classmethod
    def from_config(cls, value: object) -> Self:
        if not isinstance(value, str):
            raise ValueError("expected an http:// or https:// (or azureml://) URL")
        return cls(http_url(value))


class ListenHost(str):
    """A host to listen on (see `listen_host`)."""

    @classmethod
    def from_config(cls, value: object) -> Self:
        return cls(listen_host(value if isinstance(value, str) else ""))


class OneLine(str):
    """Text on one line (no CR, LF or NUL), without the spaces around it."""

    @classmethod
    def from_config(cls, value: object) -> Self:
        if not isinstance(value, str):
            raise ValueError("expected a string")
        if not is_one_line(value):
            raise ValueError("expected one line (no CR, LF or NUL)")
        return cls(value.strip())


class AbsolutePath(PosixPath):
    """A path from the root (the daemon's working directory is not the operator's)."""

    @classmethod
    def from_config(cls, value: object) -> Self:
        path = cls(_path_text(value))
        if not path.is_absolute():
            raise ValueError("expected an absolute path")
        return path


class Secret:
    """A secret given inline: one line, never shown (`repr` and `str` hide it)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    @classmethod
    def from_config(cls, value: object) -> Self:
        if not isinstance(value, str):
            raise ValueError("expected a string (a secret of digits only is written in quotes)")
        if not value.strip():
            raise ValueError("expected a secret, not an empty value")
        if not is_one_line(value):
            raise ValueError("expected one line (no CR, LF or NUL)")
        return cls(value)

    def get_secret_value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def is_one_line(text: str) -> bool:
    """Whether `text` has no CR, LF or NUL (a header, a path, a search filter)."""
    return not any(character in text for character in "\r\n\0")


def _path_text(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a path")
    return value


def absolute_path(path: Path | str, offline: bool) -> str:
    """`path` made absolute, with symbolic links resolved unless `offline` (then as written)."""
    return os.path.abspath(path) if offline else os.path.realpath(path)


def device_of(path: Path) -> int | None:
    """The device of `path`, or of its nearest existing ancestor (None if none can be read)."""
    for candidate in (path, *path.parents):
        try:
            return os.stat(candidate).st_dev
        except OSError:
            continue
    return None


def is_glob(name: str) -> bool:
    return any(character in name for character in "*?[")


def without_userinfo(url: str) -> str:
    """`url` without any user:password@ part: never show credentials."""
    return re.sub(r"//[^/@]*@", "//", url)


def read_small_file(path: Path, limit: int) -> bytes | None:
    """The content of the regular file at `path`, or None if it holds more than `limit` bytes.
    Never blocks (a FIFO is refused); OSError if it cannot be read."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        data = os.read(fd, limit + 1)
    finally:
        os.close(fd)
    return data if len(data) <= limit else None
