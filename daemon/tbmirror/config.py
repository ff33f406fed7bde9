"""The configuration file: YAML -> validated `Settings`.

The shape of the file lives here and only here. `load_settings` either returns settings that the
rest of tbmirror can trust or raises `ConfigError` whose message names the file, the key path
(`sources[0].poll_interval`) and what was expected.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from tbmirror.errors import ConfigError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_ENV_REFERENCE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SECRET_FIELD = re.compile(r"password|token|secret|key", re.IGNORECASE)


def parse_duration(value: object) -> float:
    """'500ms', '10s', '5m', '1h', '1d' or a plain number of seconds -> seconds (float)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like '10s', '5m' or a number of seconds")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    raise ValueError("expected a duration like '10s', '5m' or a number of seconds")


Duration = Annotated[float, BeforeValidator(parse_duration)]
SourceName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MirrorSettings(_Section):
    """Where the mirror lives: the TensorBoard logdir we own, and our SQLite state."""

    root: Path
    state: Path


class _SecretSource(_Section):
    """A secret given inline (use ${ENV_VAR}) or as a file (e.g. systemd LoadCredential=)."""

    def secret(self, field: str) -> str:
        """The secret `field`, read from `<field>_file` when that is set (first line, stripped)."""
        value = getattr(self, field)
        if value is not None:
            return str(value.get_secret_value())
        path: Path = getattr(self, f"{field}_file")
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as error:
            raise ConfigError(f"cannot read {field}_file {path}: {error.strerror}") from None

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

    type: Literal["basic"]
    username: str
    password: SecretStr | None = None
    password_file: Path | None = None

    @model_validator(mode="after")
    def _password(self) -> BasicAuth:
        self._one_of(self, "password")
        return self


class BearerAuth(_SecretSource):
    """A static bearer token."""

    type: Literal["bearer"]
    token: SecretStr | None = None
    token_file: Path | None = None

    @model_validator(mode="after")
    def _token(self) -> BearerAuth:
        self._one_of(self, "token")
        return self


class DatabricksAuth(_SecretSource):
    """A Databricks workspace: a personal access token, or OAuth machine-to-machine."""

    type: Literal["databricks"]
    host: str | None = None  # default: the tracking_uri
    token: SecretStr | None = None
    token_file: Path | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    client_secret_file: Path | None = None

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

    type: Literal["azure"]
    credential: Literal["default", "managed_identity", "environment", "cli"] = "default"
    client_id: str | None = None  # a user-assigned managed identity
    scope: str = "https://management.azure.com/.default"


Auth = Annotated[BasicAuth | BearerAuth | DatabricksAuth | AzureAuth, Field(discriminator="type")]


DEFAULT_MAX_FILE_SIZE = 2 * 1024**3


class ArtifactSettings(_Section):
    """Which artifacts of MLflow runs are tfevents files to mirror into the run's directory."""

    enabled: bool = True
    pattern: str = "*tfevents*"  # fnmatch on the file name
    max_depth: int = Field(default=3, ge=0, le=16)  # folder levels below the run's root
    max_file_size: ByteSize = ByteSize(DEFAULT_MAX_FILE_SIZE)
    batch: int = Field(default=100, ge=0)  # finished runs never looked at, per daemon pass


class MlflowSourceSettings(_Section):
    """An MLflow tracking server (or anything speaking its REST API) to poll."""

    name: SourceName
    type: Literal["mlflow"]
    tracking_uri: str
    experiments: list[str] = Field(min_length=1)
    poll_interval: Duration = 10.0
    full_listing_interval: Duration = 600.0
    reconcile_interval: Duration = 600.0
    reconcile_batch: int = Field(default=20, ge=0)
    on_delete: Literal["remove", "keep"] = "remove"
    child_runs_in_other_experiments: bool = True
    ui_url: str | None = None
    timeout: Duration = 30.0
    max_retries: int = Field(default=5, ge=0, le=20)
    concurrency: int = Field(default=4, ge=1, le=32)
    auth: Auth | None = None
    max_requests_per_second: float | None = Field(default=None, gt=0)
    max_search_requests_per_second: float | None = Field(default=None, gt=0)
    artifacts: ArtifactSettings = ArtifactSettings()

    @field_validator("tracking_uri", "ui_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and value.startswith("azureml://"):
            value = "https://" + value.removeprefix("azureml://")  # as Azure prints it
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("expected an http:// or https:// (or azureml://) URL")
        return value.rstrip("/") if value else value

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

    @field_validator("poll_interval", "timeout")
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
    def run_link_base(self) -> str:
        """Base URL of the MLflow UI, for links back to runs (never with user:password@)."""
        return without_userinfo(self.ui_url or self.tracking_uri)


class UploadsSourceSettings(_Section):
    """A directory tree training jobs write TensorBoard logs or CSV/JSON-lines metric logs into.

    Patterns are fnmatch globs on the path relative to `path` (`*` also matches `/`).
    """

    name: SourceName
    type: Literal["uploads"]
    path: Path
    include: list[str] = ["*"]
    exclude: list[str] = [".*", "*/.*"]  # hidden files: temporary files of rsync, editors
    observer: Literal["native", "polling"] = "native"
    polling_interval: Duration = 2.0
    rescan_interval: Duration = 60.0
    debounce: Duration = 0.2
    tfevents_patterns: list[str] = ["*tfevents*"]
    csv_patterns: list[str] = ["*.csv"]
    jsonl_patterns: list[str] = ["*.jsonl", "*.ndjson"]
    step_columns: list[str] = Field(default=["step", "global_step", "epoch"], min_length=1)
    max_file_size: ByteSize = ByteSize(DEFAULT_MAX_FILE_SIZE)

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
    level: Literal["debug", "info", "warning", "error"] = "info"


class TensorBoardSettings(_Section):
    """The one TensorBoard the daemon runs on the mirror root."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=6006, ge=1, le=65535)
    path_prefix: str = Field(default="", pattern=r"^(/[A-Za-z0-9._~-]+)*$")
    reload_interval: int = Field(default=5, ge=1)
    scalars_samples: int = Field(default=100_000, ge=1)
    extra_args: list[str] = []

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.path_prefix}/"


class HealthSettings(_Section):
    """The /healthz and /metrics endpoint."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=9464, ge=1, le=65535)
    failure_threshold: int = Field(default=3, ge=1)


class Settings(_Section):
    """The whole configuration file."""

    mirror: MirrorSettings
    sources: list[SourceSettings] = Field(min_length=1)
    tensorboard: TensorBoardSettings = TensorBoardSettings()
    health: HealthSettings = HealthSettings()
    logging: LoggingSettings = LoggingSettings()

    @model_validator(mode="after")
    def _unique_source_names(self) -> Settings:
        seen: set[str] = set()
        for source in self.sources:
            if source.name in seen:
                raise ValueError(f"sources: the name {source.name!r} is used twice")
            seen.add(source.name)
        return self

    @model_validator(mode="after")
    def _uploads_apart_from_mirror(self) -> Settings:
        """An upload directory and the mirror root must not contain each other (a loop)."""
        root = os.path.realpath(self.mirror.root)
        for index, source in enumerate(self.sources):
            if isinstance(source, UploadsSourceSettings):
                path = os.path.realpath(source.path)
                if os.path.commonpath([root, path]) in (root, path):
                    raise ValueError(
                        f"sources[{index}].path: {path} and mirror.root {root} must not "
                        "contain each other"
                    )
        return self


def without_userinfo(url: str) -> str:
    """`url` without any user:password@ part: never show credentials."""
    return re.sub(r"//[^/@]*@", "//", url)


def load_settings(path: Path) -> Settings:
    """Read, interpolate `${ENV_VAR}` references in, and validate the YAML file at `path`."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the config file: {error.strerror}") from error
    return parse_settings(text, origin=str(path))


def parse_settings(text: str, origin: str = "<config>") -> Settings:
    """Validate YAML `text`; `origin` names it in errors."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{origin}: not valid YAML: {error}") from error
    if not isinstance(document, dict):
        raise ConfigError(f"{origin}: expected a mapping with 'mirror' and 'sources' at the top")
    document = _interpolate(document, (), origin)
    try:
        return Settings.model_validate(document)
    except ValidationError as error:
        raise ConfigError(_describe(error, origin)) from None


def _interpolate(node: Any, where: tuple[str | int, ...], origin: str) -> Any:
    """Replace `${NAME}` in every string with the environment variable; `$$` is a literal `$`."""
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

    return _ENV_REFERENCE.sub(substitute, node)


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


def _describe(error: ValidationError, origin: str) -> str:
    lines = []
    for item in error.errors():
        location = _without_union_tags(tuple(item["loc"]))
        message = item["msg"].removeprefix("Value error, ")
        context = item.get("ctx") or {}
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif item["type"] in ("missing", "union_tag_not_found"):
            message = "required key is missing"
        if item["type"] in ("union_tag_invalid", "union_tag_not_found"):
            location += (context.get("discriminator", "type").strip("'"),)
        if item["type"] == "union_tag_invalid":
            message = f"expected one of {context['expected_tags']} (got {context['tag']!r})"
        got = item.get("input")
        named = " ".join(str(part) for part in location)
        if (
            item["type"] not in ("missing", "extra_forbidden")
            and isinstance(got, (str, int, float))
            and len(str(got)) <= 80
            and not _SECRET_FIELD.search(named)
        ):
            message += f" (got {got!r})"
        where = f"{_key_path(location)}: " if location else ""  # whole-file checks name the keys
        lines.append(f"{origin}: {where}{message}")
    return "\n".join(lines)
