"""The shape of the whole file: the top level, `mirror`, `tensorboard`, `health`, `logging`,
and which source settings `sources` may hold (one member per kind, told apart by `type`).

A source kind's settings model lives in its own module of this package (mlflow.py,
uploads.py); it is a member of `SourceKindSettings` below, and its behaviour is registered in
tbmirror.app's registry of kinds.
"""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path
from typing import Annotated, Literal, TypeAlias

from pydantic import ByteSize, Field, ValidationInfo, field_validator, model_validator

from tbmirror.config.base import Section
from tbmirror.config.mlflow import MlflowSourceSettings
from tbmirror.config.uploads import UploadsSourceSettings
from tbmirror.config.values import (
    Duration,
    absolute_path,
    device_of,
    http_url,
    is_offline,
    listen_host,
)


class MirrorSettings(Section):
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
        offline = is_offline(info)
        root, archive = absolute_path(info.data["root"], offline), absolute_path(value, offline)
        if os.path.commonpath([root, archive]) in (root, archive):
            raise ValueError(f"{archive} and mirror.root {root} must not contain each other")
        if offline:  # the file systems are the machine's, not the file's
            return value
        devices = {device_of(Path(root)), device_of(Path(archive))}
        if None not in devices and len(devices) > 1:
            raise ValueError(f"{archive} must be on the file system of mirror.root {root}")
        return value


# One member per kind of source (tbmirror.app.KINDS holds what each kind does).
SourceKindSettings: TypeAlias = MlflowSourceSettings | UploadsSourceSettings
SourceSettings = Annotated[SourceKindSettings, Field(discriminator="type")]


class LoggingSettings(Section):
    """The daemon's log (JSON lines on a non-terminal, such as journald)."""

    level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="The lowest level logged."
    )


class TensorBoardSettings(Section):
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


class HealthSettings(Section):
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


class Settings(Section):
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
        root = absolute_path(self.mirror.root, is_offline(info))
        for index, source in enumerate(self.sources):
            if isinstance(source, UploadsSourceSettings):
                path = absolute_path(source.path, is_offline(info))
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
        root = Path(absolute_path(self.mirror.root, is_offline(info)))
        state = Path(absolute_path(self.mirror.state, is_offline(info)))
        for source in self.sources:
            subtree = root / source.name
            if state == subtree or subtree in state.parents:
                raise ValueError(
                    f"mirror.state: {state} is inside {subtree}, which tbmirror owns and may "
                    "remove: keep the state store beside the root, or directly in it"
                )
        return self
