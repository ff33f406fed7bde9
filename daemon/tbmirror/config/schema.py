"""The shape of the whole file: the top level, `mirror`, `tensorboard`, `health`, `logging`,
which source settings `sources` may hold (one member per kind, told apart by `type`), and the
checks across sections (`relations`).

A source kind's settings section lives in its own module of this package (mlflow.py,
uploads.py); it is a member of `SourceSettings` below, and its behaviour is registered in
tbmirror.app's registry of kinds.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Literal, Self, TypeAlias

import msgspec
from msgspec import Meta

from tbmirror.config.base import Section
from tbmirror.config.mlflow import MlflowSourceSettings
from tbmirror.config.uploads import UploadsSourceSettings
from tbmirror.config.values import (
    ByteSize,
    Duration,
    HttpUrl,
    ListenHost,
    absolute_path,
    device_of,
)

Location: TypeAlias = tuple[str | int, ...]
# what TensorBoard and the health endpoint listen on
Host = Annotated[ListenHost, Meta(description="The address it listens on (IPv4).")]
Port = Annotated[int, Meta(ge=1, le=65535, description="The port it listens on.")]


class MirrorSettings(Section, frozen=True):
    """Where the mirror lives: the TensorBoard logdir we own, and our SQLite state."""

    root: Annotated[
        Path,
        Meta(
            description="The TensorBoard logdir tbmirror writes (TensorBoard reads it). "
            "Everything under `<root>/<source name>/` is tbmirror's: events files there that "
            "its state does not know are removed at start-up."
        ),
    ]
    state: Annotated[
        Path,
        Meta(
            description="The SQLite state store (cursors, committed file lengths). Keep it "
            "beside the root: the two together are the mirror. One process at a time uses it. "
            "Several processes may share one root, each with its own state and sources."
        ),
    ]
    archive: Annotated[
        Path | None,
        Meta(
            description="Where runs that leave a source's selection go, to come back without "
            "being fetched again. Outside the root, on its file system. Unset: such runs are "
            "removed."
        ),
    ] = None


# One member per kind of source (tbmirror.app.KINDS holds what each kind does).
SourceSettings: TypeAlias = MlflowSourceSettings | UploadsSourceSettings


class LoggingSettings(Section, frozen=True):
    """The daemon's log (JSON lines on a non-terminal, such as journald)."""

    level: Annotated[
        Literal["debug", "info", "warning", "error"], Meta(description="The lowest level logged.")
    ] = "info"


class PublicUrl(HttpUrl):
    """The address people open, behind a proxy that signs them in: no user:password@."""

    @classmethod
    def from_config(cls, value: object) -> Self:
        url = HttpUrl.from_config(value)  # a valid URL: its parts can be read
        if "@" in urllib.parse.urlsplit(url).netloc:
            raise ValueError("expected a URL without user:password@ (sign-in is the proxy's job)")
        return cls(f"{url}/")


class TensorBoardSettings(Section, frozen=True):
    """The one TensorBoard the daemon runs on the mirror root."""

    enabled: Annotated[bool, Meta(description="Run the supervised TensorBoard.")] = True
    host: Host = ListenHost("127.0.0.1")
    port: Port = 6006
    path_prefix: Annotated[
        str,
        Meta(
            pattern=r"^(/[A-Za-z0-9._~-]+)*$",
            description="URL path prefix, e.g. `/tensorboard` behind a reverse proxy.",
        ),
    ] = ""
    reload_interval: Annotated[
        int, Meta(ge=1, le=86_400, description="Seconds between TensorBoard's reloads.")
    ] = 5
    scalars_samples: Annotated[
        int, Meta(ge=1, le=1_000_000_000, description="Points kept per scalar series.")
    ] = 100_000
    memory_budget: Annotated[
        ByteSize | None,
        Meta(
            description="What TensorBoard may hold in memory, e.g. `4GiB`: at each TensorBoard "
            "start the points it keeps per scalar series (`scalars_samples` at most; its own "
            "sampling beyond that, the mirror's files keep every point) are set so that the "
            "estimate for what the mirror holds stays within it; `status` and `check` show the "
            "estimate. `null`: no budget (`scalars_samples` per series, however much memory "
            "that takes)."
        ),
    ] = ByteSize(4 * 1024**3)
    images_samples: Annotated[
        int,
        Meta(
            ge=1,
            le=1_000_000,
            description="Images kept per run and tag (TensorBoard's own default is 10); each is "
            "held in memory.",
        ),
    ] = 1000
    text_samples: Annotated[
        int,
        Meta(
            ge=1,
            le=1_000_000,
            description="Text records kept per run and tag: versions of the run info and of "
            "each table.",
        ),
    ] = 100
    extra_args: Annotated[list[str], Meta(description="More `tensorboard` arguments.")] = (
        msgspec.field(default_factory=list)
    )
    public_url: Annotated[
        PublicUrl | None,
        Meta(
            description="The address colleagues open behind a reverse proxy, e.g. "
            "`https://dash.example.org/tensorboard/`: its path must be `path_prefix`. Shown in "
            "the start-up log and `tbmirror status`."
        ),
    ] = None

    def __post_init__(self) -> None:
        if self.public_url is not None:
            path = urllib.parse.urlsplit(self.public_url).path.rstrip("/")
            if path != self.path_prefix:
                raise ValueError(
                    "public_url: its path must be tensorboard.path_prefix (the proxy passes the "
                    "path through unchanged)"
                )

    @property
    def url(self) -> str:
        """Where the daemon reaches TensorBoard (probes)."""
        return f"http://{self.host}:{self.port}{self.path_prefix}/"

    @property
    def shown_url(self) -> str:
        """The URL tbmirror prints for people: `public_url` when set, else `url`."""
        return self.public_url or self.url


class HealthSettings(Section, frozen=True):
    """The /healthz and /metrics endpoint."""

    enabled: Annotated[bool, Meta(description="Serve `/healthz` and `/metrics`.")] = True
    host: Host = ListenHost("127.0.0.1")
    port: Port = 9464
    failure_threshold: Annotated[
        int,
        Meta(
            ge=1,
            le=1_000_000,
            description="Consecutive failed passes before a source counts as unhealthy.",
        ),
    ] = 3
    stale_after: Annotated[
        Duration | None,
        Meta(
            description="A source is unhealthy once no pass of it succeeded for this long, "
            "while a pass has run longer than this, or when every run or file of its last pass "
            "failed. Unset: max(3 x `poll_interval`, 15 s), per source."
        ),
    ] = None

    def stale_after_for(self, poll_interval: float) -> float:
        return self.stale_after or max(3 * poll_interval, 15.0)


class Settings(Section, frozen=True):
    """The whole configuration file."""

    mirror: Annotated[MirrorSettings, Meta(description="Where the mirror lives.")]
    sources: Annotated[
        list[SourceSettings],
        Meta(min_length=1, description="What is mirrored: `mlflow` and `uploads` sources."),
    ]
    tensorboard: Annotated[
        TensorBoardSettings, Meta(description="The TensorBoard the daemon runs.")
    ] = msgspec.field(default_factory=TensorBoardSettings)
    health: Annotated[HealthSettings, Meta(description="The health and metrics endpoint.")] = (
        msgspec.field(default_factory=HealthSettings)
    )
    logging: Annotated[LoggingSettings, Meta(description="The log.")] = msgspec.field(
        default_factory=LoggingSettings
    )


def relations(settings: Settings, offline: bool) -> Iterator[tuple[Location, str]]:
    """What is wrong across sections, where: `offline` compares paths as written (no symbolic
    link resolved, no file system looked at), for a file made for another machine."""
    root = absolute_path(settings.mirror.root, offline)
    archive = settings.mirror.archive
    if archive is not None:  # outside the root (TensorBoard would read it), on its file system
        archive_path = absolute_path(archive, offline)
        if os.path.commonpath([root, archive_path]) in (root, archive_path):
            yield (
                ("mirror", "archive"),
                (f"{archive_path} and mirror.root {root} must not contain each other"),
            )
        elif not offline:  # the file systems are the machine's, not the file's
            devices = {device_of(Path(root)), device_of(Path(archive_path))}
            if None not in devices and len(devices) > 1:
                yield (
                    ("mirror", "archive"),
                    (f"{archive_path} must be on the file system of mirror.root {root}"),
                )
    seen: set[str] = set()
    for source in settings.sources:
        if source.name in seen:
            yield ("sources",), f"the name {source.name!r} is used twice"
        seen.add(source.name)
    for index, source in enumerate(settings.sources):  # an upload directory in the mirror: a loop
        if isinstance(source, UploadsSourceSettings):
            path = absolute_path(source.path, offline)
            if os.path.commonpath([root, path]) in (root, path):
                yield (
                    ("sources", index, "path"),
                    (f"{path} and mirror.root {root} must not contain each other"),
                )
    state = Path(absolute_path(settings.mirror.state, offline))
    for source in settings.sources:  # pruning a source removes its subtree
        subtree = Path(root) / source.name
        if state == subtree or subtree in state.parents:
            yield (
                ("mirror", "state"),
                (
                    f"{state} is inside {subtree}, which tbmirror owns and may remove: keep the "
                    "state store beside the root, or directly in it"
                ),
            )
