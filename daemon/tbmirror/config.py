"""The configuration file: YAML -> validated `Settings`.

The shape of the file lives here and only here. `load_settings` either returns settings that the
rest of tbmirror can trust or raises `ConfigError` whose message names the file, the key path
(`sources[0].poll_interval`) and what was expected.

Settings that validate also build: every value is checked here (URLs parsed down to the host and
port, ports, durations, sizes and counts in range, no NUL anywhere, secrets on one line), so a
source's engine, the scheduler, TensorBoard and the health endpoint never meet a value they
cannot use. No error message shows a secret, a line of the file or a URL's user:password@.
"""

from __future__ import annotations

import difflib
import errno
import fnmatch
import ipaddress
import math
import os
import re
import stat
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import httpx
import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from tbmirror.errors import ConfigError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_ENV_REFERENCE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SECRET_FIELD = re.compile(r"password|token|secret|key", re.IGNORECASE)
_HOST_NAME = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*\.?$")
_INT64 = (-(2**63), 2**63 - 1)
MAX_DURATION_SECONDS = 366 * 86400.0  # longer is a mistake (and overflows timers)
MAX_SECRET_FILE_BYTES = 64 * 1024


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


def _offline(info: ValidationInfo) -> bool:
    """Whether the file is checked alone (`check --offline`): paths compared as written, never
    looked up on this machine's disk."""
    return bool(info.context and info.context.get("offline"))


def _absolute(path: Path | str, offline: bool) -> str:
    """`path` made absolute, with symbolic links resolved unless `offline` (then as written)."""
    return os.path.abspath(path) if offline else os.path.realpath(path)


def _device_of(path: Path) -> int | None:
    """The device of `path`, or of its nearest existing ancestor (None if none can be read)."""
    for candidate in (path, *path.parents):
        try:
            return os.stat(candidate).st_dev
        except OSError:
            continue
    return None


def _is_glob(name: str) -> bool:
    return any(character in name for character in "*?[")


class _Section(BaseModel):
    """A section of the file: unknown keys refused, floats finite, and every value in the range
    the code that uses it can take (checked for every field of every section; `_lax_inputs`
    refuses what pydantic's lax mode would quietly take)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _in_range(cls, value: Any) -> Any:
        if isinstance(value, ByteSize) and not 0 < value <= _INT64[1]:
            raise ValueError("expected a size greater than 0 (and below 8 EiB)")
        if isinstance(value, int) and not isinstance(value, bool):
            if value > _INT64[1]:
                raise ValueError(f"expected at most {_INT64[1]}")
            if value < _INT64[0]:
                raise ValueError(f"expected at least {_INT64[0]}")
        return value


class MirrorSettings(_Section):
    """Where the mirror lives: the TensorBoard logdir we own, and our SQLite state."""

    root: Path = Field(
        description="The TensorBoard logdir tbmirror writes (TensorBoard reads it). Everything "
        "under `<root>/<source name>/` is tbmirror's: events files there that its state does "
        "not know are removed at start-up."
    )
    state: Path = Field(
        description="The SQLite state store (cursors, committed file lengths). Keep it beside "
        "the root: the two together are the mirror. One process at a time uses it. Several "
        "processes may share one root, each with its own state and sources."
    )
    archive: Path | None = Field(
        default=None,
        description="Where runs that leave a source's selection go, to come back without being "
        "fetched again. Outside the root, on its file system. Unset: such runs are removed.",
    )

    @field_validator("archive")
    @classmethod
    def _archive_beside_root(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        """The archive must be outside the root (TensorBoard would read it) and on the root's
        file system (runs move in and out by rename)."""
        if value is None or "root" not in info.data:
            return value
        offline = _offline(info)
        root, archive = _absolute(info.data["root"], offline), _absolute(value, offline)
        if os.path.commonpath([root, archive]) in (root, archive):
            raise ValueError(f"{archive} and mirror.root {root} must not contain each other")
        if offline:  # the file systems are the machine's, not the file's
            return value
        devices = {_device_of(Path(root)), _device_of(Path(archive))}
        if None not in devices and len(devices) > 1:
            raise ValueError(f"{archive} must be on the file system of mirror.root {root}")
        return value


class _SecretSource(_Section):
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
            data = _read_small_file(path, MAX_SECRET_FILE_BYTES)
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
    def _one_of(settings: _Section, field: str, required: bool = True) -> None:
        given = [
            getattr(settings, field) is not None,
            getattr(settings, f"{field}_file") is not None,
        ]
        if all(given):
            raise ValueError(f"give either {field} or {field}_file, not both")
        if required and not any(given):
            raise ValueError(f"{field} or {field}_file is required")


class BasicAuth(_SecretSource):
    """MLflow's own basic authentication (`mlflow server --app-name basic-auth`)."""

    type: Literal["basic"] = Field(description="`basic`.")
    username: str = Field(description="The MLflow user name.")
    password: SecretStr | None = Field(
        default=None, description="The password (write `${ENV_VAR}`, not the secret itself)."
    )
    password_file: Path | None = Field(
        default=None,
        description="A file holding the password, e.g. a systemd credential "
        "(`${CREDENTIALS_DIRECTORY}/mlflow-password`). Give `password` or this.",
    )

    @model_validator(mode="after")
    def _password(self) -> BasicAuth:
        self._one_of(self, "password")
        return self


class BearerAuth(_SecretSource):
    """A static bearer token."""

    type: Literal["bearer"] = Field(description="`bearer`.")
    token: SecretStr | None = Field(
        default=None, description="The token, sent as `Authorization: Bearer <token>`."
    )
    token_file: Path | None = Field(
        default=None, description="A file holding the token. Give `token` or this."
    )

    @model_validator(mode="after")
    def _token(self) -> BearerAuth:
        self._one_of(self, "token")
        return self


class DatabricksAuth(_SecretSource):
    """A Databricks workspace: a personal access token, or OAuth machine-to-machine."""

    type: Literal["databricks"] = Field(description="`databricks`.")
    host: str | None = Field(
        default=None, description="The workspace URL. Unset: the source's `tracking_uri`."
    )
    token: SecretStr | None = Field(default=None, description="A personal access token.")
    token_file: Path | None = Field(
        default=None, description="A file holding a personal access token."
    )
    client_id: str | None = Field(
        default=None,
        description="A service principal's client id, for OAuth machine-to-machine (the "
        "secret is exchanged at `<host>/oidc/v1/token`, the token refreshed before it expires).",
    )
    client_secret: SecretStr | None = Field(
        default=None, description="The service principal's OAuth secret (with `client_id`)."
    )
    client_secret_file: Path | None = Field(
        default=None, description="A file holding the OAuth secret."
    )

    @field_validator("host")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return None if value is None else http_url(value)

    @model_validator(mode="after")
    def _credentials(self) -> DatabricksAuth:
        if self.client_id is None:
            self._one_of(self, "token")
            self._one_of(self, "client_secret", required=False)
            if self.client_secret or self.client_secret_file:
                raise ValueError("client_secret needs client_id")
        else:
            self._one_of(self, "client_secret")
            if self.token or self.token_file:
                raise ValueError("give either token or client_id/client_secret, not both")
        return self


class AzureAuth(_SecretSource):
    """An Azure ML workspace, with a token from azure-identity (the `azure` extra)."""

    type: Literal["azure"] = Field(description="`azure`.")
    credential: Literal["default", "managed_identity", "environment", "cli"] = Field(
        default="default",
        description="Which azure-identity credential: `default` (DefaultAzureCredential), "
        "`managed_identity`, `environment` (a service principal from `AZURE_CLIENT_ID`, "
        "`AZURE_TENANT_ID`, `AZURE_CLIENT_SECRET`) or `cli` (`az login`).",
    )
    client_id: str | None = Field(
        default=None, description="The client id of a user-assigned managed identity."
    )
    scope: str = Field(
        default="https://management.azure.com/.default",
        description="The scope tokens are requested for.",
    )


Auth = Annotated[BasicAuth | BearerAuth | DatabricksAuth | AzureAuth, Field(discriminator="type")]


DEFAULT_MAX_FILE_SIZE = 2 * 1024**3


class ArtifactSettings(_Section):
    """What of MLflow runs' artifacts is mirrored into the run's directory: tfevents files
    (tailed), images and figures (the images dashboard), tables (the text dashboard)."""

    enabled: bool = Field(
        default=True,
        description="Look at the runs' artifacts at all (tfevents files, images, tables).",
    )
    store: Literal["auto", "mlflow", "azureml", "databricks"] = Field(
        default="auto",
        description="Where artifacts are read: `mlflow` (the server's `/get-artifact`), "
        "`azureml` or `databricks`. `auto` picks `azureml` for an Azure ML workspace's "
        "tracking URI or `azure` auth, `databricks` for `databricks` auth, else `mlflow`.",
    )
    paths: list[str] = Field(
        default=[],
        description="Folders listed below a run's root (e.g. `[logs]`); empty: the whole run. "
        "Bounds the listing cost of runs with many artifacts.",
    )
    pattern: str = Field(
        default="*tfevents*",
        description="fnmatch pattern on an artifact's file name: what is tailed as tfevents.",
    )
    max_depth: int = Field(
        default=3, ge=0, le=16, description="Folder levels listed below a run's root."
    )
    max_listed: int = Field(
        default=10_000,
        ge=1,
        le=10_000_000,
        description="Entries listed per run; a run with more fails with an error naming this "
        "limit (the other runs go on).",
    )
    max_file_size: ByteSize = Field(
        default=ByteSize(DEFAULT_MAX_FILE_SIZE),
        description="Larger tfevents artifacts are skipped with a warning.",
    )
    batch: int = Field(
        default=100,
        ge=0,
        description="The daemon lists the artifacts of at most this many finished runs never "
        "looked at per pass (`tbmirror sync` looks at all).",
    )
    images: bool = Field(
        default=True,
        description="Show `log_image` series, figures and other PNG/JPEG/GIF artifacts.",
    )
    tables: bool = Field(default=True, description="Show `log_table` JSON tables as Markdown text.")
    max_images: int = Field(
        default=50,
        ge=0,
        le=100_000,
        description="Figures (images outside `images/`) shown per run; the rest are left out "
        "with one warning.",
    )
    max_media_size: ByteSize = Field(
        default=ByteSize(16 * 1024**2),
        description="A larger image or table is skipped with one warning.",
    )
    table_rows: int = Field(
        default=100,
        ge=1,
        le=100_000,
        description="A table shows its last this many rows, with a note counting the rest.",
    )

    @field_validator("paths")
    @classmethod
    def _relative_folders(cls, value: list[str]) -> list[str]:
        folders = []
        for path in value:
            folder = path.strip("/")
            parts = folder.split("/")
            if not folder or any(part in ("", ".", "..") or part != part.strip() for part in parts):
                raise ValueError("expected folders below the run's root, like 'logs' or 'tb/train'")
            if not folder.isprintable():
                raise ValueError("expected folders without control characters")
            folders.append(folder)
        for folder in folders:
            if any(other != folder and folder.startswith(f"{other}/") for other in folders):
                raise ValueError(f"{folder!r} is inside another folder listed: list it once")
        if len(set(folders)) != len(folders):
            raise ValueError("a folder is listed twice")
        return folders

    @model_validator(mode="after")
    def _folders_within_depth(self) -> ArtifactSettings:
        for folder in self.paths:
            if folder.count("/") + 1 > self.max_depth:
                raise ValueError(
                    f"paths: {folder!r} is deeper than max_depth ({self.max_depth}): "
                    "nothing in it would be listed"
                )
        return self


class MlflowSourceSettings(_Section):
    """An MLflow tracking server (or anything speaking its REST API) to poll."""

    name: SourceName = Field(
        description="The source's name: the first path component under the root."
    )
    type: Literal["mlflow"] = Field(description="`mlflow`.")
    tracking_uri: str = Field(
        description="http(s) base URL of the tracking server (`azureml://` as Azure prints it "
        "is read as `https://`)."
    )
    experiments: list[str] = Field(
        min_length=1,
        description='Experiment names, fnmatch globs (`"team-*"`, resolved at each full '
        'listing) or `"*"` for all.',
    )
    poll_interval: Duration = Field(default=10.0, description="How often the daemon polls.")
    full_listing_interval: Duration = Field(
        default=600.0,
        description="How often the daemon lists every run, which sees deletions, renames and "
        "finished runs; between full listings it lists only running, new and just-finished runs.",
    )
    reconcile_interval: Duration = Field(
        default=600.0,
        description="Re-check every series of a running run this often, and of a finished run "
        "once, this long after it ended (catches points MLflow's latest value cannot reveal).",
    )
    reconcile_batch: int = Field(
        default=20, ge=0, description="At most this many due runs re-checked per pass."
    )
    on_delete: Literal["remove", "keep"] = Field(
        default="remove", description="What happens to the mirror of a run deleted in MLflow."
    )
    child_runs_in_other_experiments: bool = Field(
        default=True,
        description="Follow child runs logged into another experiment than their parent's.",
    )
    ui_url: str | None = Field(
        default=None,
        description="Base URL of the MLflow UI for the links back to runs. Unset: `tracking_uri`.",
    )
    timeout: Duration = Field(
        default=30.0,
        description="Total per HTTP request: connecting, waiting and every byte of the answer.",
    )
    max_response_bytes: ByteSize = Field(
        default=ByteSize(64 * 1024**2),
        description="A larger answer is an error (nothing past it is read).",
    )
    stall_timeout: Duration = Field(
        default=300.0,
        description="Once no request has been answered for this long, retries stop and the "
        "pass ends.",
    )
    max_retries: int = Field(
        default=5,
        ge=0,
        le=20,
        description="Retries of 429, 5xx and connection errors (jittered backoff, "
        "`Retry-After` honoured).",
    )
    concurrency: int = Field(
        default=4, ge=1, le=32, description="Metric history requests in flight."
    )
    auth: Auth | None = Field(
        default=None,
        description="How to authenticate: one of the `auth` sections below (`type: basic`, "
        "`bearer`, `databricks` or `azure`). Unset: no authentication.",
    )
    max_requests_per_second: float | None = Field(
        default=None,
        ge=0.001,
        le=1e6,
        description="Client-side rate limit. Unset: none (127 with `databricks` auth).",
    )
    max_search_requests_per_second: float | None = Field(
        default=None,
        ge=0.001,
        le=1e6,
        description="The same, for search and experiment calls. Unset: "
        "`max_requests_per_second` (7 with `databricks` auth).",
    )
    artifacts: ArtifactSettings = Field(
        default=ArtifactSettings(),
        description="What of the runs' artifacts is mirrored (the `artifacts` keys below).",
    )
    filter: str = Field(
        default="",
        description="An MLflow search filter for top-level runs, evaluated by the server "
        "(`tags.team = 'vision' and metrics.val_acc > 0.8`); child runs follow their parent.",
    )
    run_statuses: list[RunStatus] | None = Field(
        default=None,
        description="Only top-level runs with one of these statuses. Unset: all.",
    )
    max_age: Duration | None = Field(
        default=None,
        description="Finished top-level runs that ended longer ago than this leave (`30d`).",
    )
    max_runs: int | None = Field(
        default=None,
        ge=1,
        description="Per experiment, only the most recent top-level runs by start time.",
    )

    @field_validator("filter")
    @classmethod
    def _one_line_filter(cls, value: str) -> str:
        if any(character in value for character in "\r\n\0"):
            raise ValueError("expected one line (no CR, LF or NUL)")
        return value.strip()

    @field_validator("max_age")
    @classmethod
    def _positive_age(cls, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise ValueError("expected a duration greater than 0")
        return value

    @field_validator("tracking_uri", "ui_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return None if value is None else http_url(value)

    @property
    def search_rate_limit(self) -> float | None:
        """Requests per second for search and experiment calls (Databricks allows 7)."""
        if self.max_search_requests_per_second is not None:
            return self.max_search_requests_per_second
        if isinstance(self.auth, DatabricksAuth):
            return 7.0
        return self.max_requests_per_second

    @property
    def rate_limit(self) -> float | None:
        """Requests per second for every other call (Databricks allows 127)."""
        if self.max_requests_per_second is None and isinstance(self.auth, DatabricksAuth):
            return 127.0
        return self.max_requests_per_second

    @field_validator("poll_interval", "timeout", "stall_timeout")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("expected a duration greater than 0")
        return value

    @property
    def all_experiments(self) -> bool:
        """True when the source mirrors every experiment ("*")."""
        return "*" in self.experiments

    @property
    def experiment_globs(self) -> list[str]:
        """Experiment names given as fnmatch patterns (`team-*`; "*" is `all_experiments`)."""
        return [name for name in self.experiments if name != "*" and _is_glob(name)]

    def covers(self, experiment_name: str) -> bool:
        """Whether the experiment of that name is configured (by name, glob or "*")."""
        return (
            self.all_experiments
            or experiment_name in self.experiments
            or any(fnmatch.fnmatchcase(experiment_name, g) for g in self.experiment_globs)
        )

    @property
    def selective(self) -> bool:
        """Whether anything narrows the runs of the configured experiments."""
        return bool(self.filter) or any(
            value is not None for value in (self.run_statuses, self.max_age, self.max_runs)
        )

    @property
    def artifact_store(self) -> Literal["mlflow", "azureml", "databricks"]:
        """Where runs' artifacts are read: `artifacts.store`, or what "auto" picks for this
        source (Azure ML for a workspace's tracking URI, Databricks for databricks auth, else
        MLflow's own artifact endpoints)."""
        if self.artifacts.store != "auto":
            return self.artifacts.store
        if azureml_workspace(self.tracking_uri):
            return "azureml"
        if isinstance(self.auth, DatabricksAuth):
            return "databricks"
        return "mlflow"

    @model_validator(mode="after")
    def _azureml_workspace(self) -> MlflowSourceSettings:
        artifacts = self.artifacts
        if (
            artifacts.enabled
            and artifacts.store == "azureml"
            and not azureml_workspace(self.tracking_uri)
        ):
            raise ValueError(
                "artifacts.store: azureml needs the workspace's tracking_uri (azureml://<region>"
                ".api.azureml.ms/mlflow/v1.0/subscriptions/<id>/resourceGroups/<group>/providers"
                "/Microsoft.MachineLearningServices/workspaces/<name>)"
            )
        return self

    @property
    def run_link_base(self) -> str:
        """Base URL of the MLflow UI, for links back to runs (never with user:password@)."""
        return without_userinfo(self.ui_url or self.tracking_uri)


class UploadsSourceSettings(_Section):
    """A directory tree training jobs write TensorBoard logs or CSV/JSON-lines metric logs into.

    Patterns are fnmatch globs on the path relative to `path` (`*` also matches `/`).
    """

    name: SourceName = Field(
        description="The source's name: the first path component under the root."
    )
    type: Literal["uploads"] = Field(description="`uploads`.")
    path: Path = Field(
        description="Absolute path of the directory tree jobs write into; it must not contain, "
        "nor be inside, `mirror.root`."
    )
    include: list[str] = Field(
        default=["*"], description="fnmatch globs on the relative path or the file name."
    )
    exclude: list[str] = Field(
        default=[".*", "*/.*"],
        description="Globs left out; the default leaves out hidden files (the temporary files "
        "of rsync and editors).",
    )
    observer: Literal["native", "polling"] = Field(
        default="native",
        description="`native` (inotify) or `polling`. inotify does not see changes other hosts "
        "make on a network share; polling does.",
    )
    polling_interval: Duration = Field(
        default=2.0, description="How often the polling observer looks."
    )
    rescan_interval: Duration = Field(
        default=60.0, description="How often a full rescan runs (the safety net for missed events)."
    )
    debounce: Duration = Field(
        default=0.2,
        description="Quiet time before the files of a burst of events are read (each once; at "
        "most 5 times this while events keep coming).",
    )
    tfevents_patterns: list[str] = Field(
        default=["*tfevents*"], description="File names copied as TensorBoard event files."
    )
    csv_patterns: list[str] = Field(
        default=["*.csv"], description="File names converted as CSV metric logs."
    )
    jsonl_patterns: list[str] = Field(
        default=["*.jsonl", "*.ndjson"], description="File names converted as JSON-lines logs."
    )
    step_columns: list[str] = Field(
        default=["step", "global_step", "epoch"],
        min_length=1,
        description="The CSV/JSON step field: the first one present wins; none: the row index.",
    )
    max_file_size: ByteSize = Field(
        default=ByteSize(DEFAULT_MAX_FILE_SIZE),
        description="Larger files are skipped with a warning.",
    )

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        if not value.is_absolute():
            raise ValueError("expected an absolute path")
        return value

    @field_validator("polling_interval", "rescan_interval")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("expected a duration greater than 0")
        return value

    @property
    def poll_interval(self) -> float:
        """The scheduler's interval for this source: its periodic rescan."""
        return self.rescan_interval


SourceSettings = Annotated[
    MlflowSourceSettings | UploadsSourceSettings, Field(discriminator="type")
]


class LoggingSettings(_Section):
    """The daemon's log (JSON lines on a non-terminal, such as journald)."""

    level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="The lowest level logged."
    )


class TensorBoardSettings(_Section):
    """The one TensorBoard the daemon runs on the mirror root."""

    enabled: bool = Field(default=True, description="Run the supervised TensorBoard.")
    host: str = Field(default="127.0.0.1", description="The address it listens on (IPv4).")
    port: int = Field(default=6006, ge=1, le=65535, description="The port it listens on.")
    path_prefix: str = Field(
        default="",
        pattern=r"^(/[A-Za-z0-9._~-]+)*$",
        description="URL path prefix, e.g. `/tensorboard` behind a reverse proxy.",
    )
    reload_interval: int = Field(
        default=5, ge=1, le=86_400, description="Seconds between TensorBoard's reloads."
    )
    scalars_samples: int = Field(
        default=100_000, ge=1, le=1_000_000_000, description="Points kept per scalar series."
    )
    memory_budget: ByteSize | None = Field(
        default=ByteSize(4 * 1024**3),
        description="What TensorBoard may hold in memory, e.g. `4GiB`: at each TensorBoard start "
        "the points it keeps per scalar series (`scalars_samples` at most; its own sampling "
        "beyond that, the mirror's files keep every point) are set so that the estimate for what "
        "the mirror holds stays within it; `status` and `check` show the estimate. `null`: no "
        "budget (`scalars_samples` per series, however much memory that takes).",
    )
    images_samples: int = Field(
        default=1000,
        ge=1,
        le=1_000_000,
        description="Images kept per run and tag (TensorBoard's own default is 10); each is "
        "held in memory.",
    )
    text_samples: int = Field(
        default=100,
        ge=1,
        le=1_000_000,
        description="Text records kept per run and tag: versions of the run info and of each "
        "table.",
    )
    extra_args: list[str] = Field(default=[], description="More `tensorboard` arguments.")
    public_url: str | None = Field(
        default=None,
        description="The address colleagues open behind a reverse proxy, e.g. "
        "`https://dash.example.org/tensorboard/`: its path must be `path_prefix`. Shown in the "
        "start-up log and `tbmirror status`.",
    )

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return listen_host(value)

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if "@" in urllib.parse.urlsplit(value).netloc:
            raise ValueError("expected a URL without user:password@ (sign-in is the proxy's job)")
        return http_url(value) + "/"

    @model_validator(mode="after")
    def _public_path_is_prefix(self) -> TensorBoardSettings:
        if self.public_url is not None:
            path = urllib.parse.urlsplit(self.public_url).path.rstrip("/")
            if path != self.path_prefix:
                raise ValueError(
                    "public_url: its path must be tensorboard.path_prefix (the proxy passes the "
                    "path through unchanged)"
                )
        return self

    @property
    def url(self) -> str:
        """Where the daemon reaches TensorBoard (probes)."""
        return f"http://{self.host}:{self.port}{self.path_prefix}/"

    @property
    def shown_url(self) -> str:
        """The URL tbmirror prints for people: `public_url` when set, else `url`."""
        return self.public_url or self.url


class HealthSettings(_Section):
    """The /healthz and /metrics endpoint."""

    enabled: bool = Field(default=True, description="Serve `/healthz` and `/metrics`.")
    host: str = Field(default="127.0.0.1", description="The address it listens on (IPv4).")
    port: int = Field(default=9464, ge=1, le=65535, description="The port it listens on.")
    failure_threshold: int = Field(
        default=3,
        ge=1,
        le=1_000_000,
        description="Consecutive failed passes before a source counts as unhealthy.",
    )
    stale_after: Duration | None = Field(
        default=None,
        description="A source is unhealthy once no pass of it succeeded for this long, while a "
        "pass has run longer than this, or when every run or file of its last pass failed. "
        "Unset: max(3 x `poll_interval`, 15 s), per source.",
    )

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return listen_host(value)

    def stale_after_for(self, poll_interval: float) -> float:
        return self.stale_after or max(3 * poll_interval, 15.0)


class Settings(_Section):
    """The whole configuration file."""

    mirror: MirrorSettings = Field(description="Where the mirror lives.")
    sources: list[SourceSettings] = Field(
        min_length=1, description="What is mirrored: `mlflow` and `uploads` sources."
    )
    tensorboard: TensorBoardSettings = Field(
        default=TensorBoardSettings(), description="The TensorBoard the daemon runs."
    )
    health: HealthSettings = Field(
        default=HealthSettings(), description="The health and metrics endpoint."
    )
    logging: LoggingSettings = Field(default=LoggingSettings(), description="The log.")

    @model_validator(mode="after")
    def _unique_source_names(self) -> Settings:
        seen: set[str] = set()
        for source in self.sources:
            if source.name in seen:
                raise ValueError(f"sources: the name {source.name!r} is used twice")
            seen.add(source.name)
        return self

    @model_validator(mode="after")
    def _uploads_apart_from_mirror(self, info: ValidationInfo) -> Settings:
        """An upload directory and the mirror root must not contain each other (a loop)."""
        root = _absolute(self.mirror.root, _offline(info))
        for index, source in enumerate(self.sources):
            if isinstance(source, UploadsSourceSettings):
                path = _absolute(source.path, _offline(info))
                if os.path.commonpath([root, path]) in (root, path):
                    raise ValueError(
                        f"sources[{index}].path: {path} and mirror.root {root} must not "
                        "contain each other"
                    )
        return self

    @model_validator(mode="after")
    def _state_outside_subtrees(self, info: ValidationInfo) -> Settings:
        """The state store must not be in a source's subtree `<root>/<name>` (pruning a source
        removes its subtree)."""
        root = Path(_absolute(self.mirror.root, _offline(info)))
        state = Path(_absolute(self.mirror.state, _offline(info)))
        for source in self.sources:
            subtree = root / source.name
            if state == subtree or subtree in state.parents:
                raise ValueError(
                    f"mirror.state: {state} is inside {subtree}, which tbmirror owns and may "
                    "remove: keep the state store beside the root, or directly in it"
                )
        return self


def without_userinfo(url: str) -> str:
    """`url` without any user:password@ part: never show credentials."""
    return re.sub(r"//[^/@]*@", "//", url)


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
        document = yaml.load(text, Loader=_Loader)  # a SafeLoader
    except yaml.YAMLError as error:
        raise ConfigError(f"{origin}: {_yaml_error(error, text)}") from None
    except RecursionError:
        raise ConfigError(f"{origin}: not valid YAML: nested too deeply") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{origin}: expected a mapping with 'mirror' and 'sources' at the top")
    document = _interpolate(document, (), origin)
    try:
        settings = Settings.model_validate(document, context={"offline": offline})
    except ValidationError as error:
        raise ConfigError(_describe(error, origin)) from None
    problems = [
        f"{origin}: {_key_path(where)}: {what}"
        for where, what in _lax_inputs(settings, document, ())
    ]
    if problems:
        raise ConfigError("\n".join(problems))
    return settings


def _lax_inputs(
    section: BaseModel, raw: Any, where: tuple[str | int, ...]
) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """Values of the file that validated only because pydantic is lax, and what was expected:
    true/false for a number (`port: true` would be port 1), an empty path (the working
    directory)."""
    if not isinstance(raw, dict):
        return
    for name, field in type(section).model_fields.items():
        if name not in raw:
            continue
        value, given = getattr(section, name), raw[name]
        kinds = get_args(field.annotation) or (field.annotation,)
        if isinstance(value, BaseModel):
            yield from _lax_inputs(value, given, (*where, name))
        elif isinstance(value, list) and isinstance(given, list):
            for index, (item, item_given) in enumerate(zip(value, given, strict=False)):
                if isinstance(item, BaseModel):
                    yield from _lax_inputs(item, item_given, (*where, name, index))
        elif isinstance(given, bool) and not isinstance(value, bool):
            yield (*where, name), "expected a number, not true or false"
        elif isinstance(given, str) and not given.strip() and Path in kinds:
            yield (*where, name), "expected a path"


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


def _read_small_file(path: Path, limit: int) -> bytes | None:
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
                f"{origin}: {_key_path(where)}: environment variable {name} is not set"
            )
        return os.environ[name]

    text = _ENV_REFERENCE.sub(substitute, node)
    if "\0" in text:
        raise ConfigError(f"{origin}: {_key_path(where)}: contains a NUL character")
    return text


def _key_path(location: tuple[str | int, ...]) -> str:
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
    close = difflib.get_close_matches(str(location[-1]), known, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _describe(error: ValidationError, origin: str) -> str:
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
        where = f"{_key_path(location)}: " if location else ""  # whole-file checks name the keys
        lines.append(f"{origin}: {where}{message}")
    return "\n".join(lines)
