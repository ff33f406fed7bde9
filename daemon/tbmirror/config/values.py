"""Value parsers and checks of the config file's values: durations, URLs, hosts, paths, small
files. Each raises ValueError saying what was expected, never quoting the value (it may be a
secret); pydantic turns that into an error naming the key."""

from __future__ import annotations

import errno
import ipaddress
import math
import os
import re
import stat
import urllib.parse
from pathlib import Path
from typing import Annotated, Literal

import httpx
from pydantic import BeforeValidator, Field, ValidationInfo

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_HOST_NAME = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*\.?$")
INT64 = (-(2**63), 2**63 - 1)
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


Duration = Annotated[float, BeforeValidator(parse_duration)]
SourceName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
RunStatus = Literal["RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED"]


def is_offline(info: ValidationInfo) -> bool:
    """Whether the file is checked alone (`check --offline`): paths compared as written, never
    looked up on this machine's disk."""
    return bool(info.context and info.context.get("offline"))


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
