"""The settings of an `uploads` source."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from tbmirror.config.base import TaggedSection
from tbmirror.config.values import (
    DEFAULT_MAX_FILE_SIZE,
    AbsolutePath,
    ByteSize,
    Duration,
    PositiveDuration,
    SourceName,
)


class UploadsSourceSettings(TaggedSection, tag="uploads", frozen=True):
    """A directory tree training jobs write TensorBoard logs or CSV/JSON-lines metric logs into.

    Patterns are fnmatch globs on the path relative to `path` (`*` also matches `/`).
    """

    name: Annotated[
        SourceName, Meta(description="The source's name: the first path component under the root.")
    ]
    path: Annotated[
        AbsolutePath,
        Meta(
            description="Absolute path of the directory tree jobs write into; it must not "
            "contain, nor be inside, `mirror.root`."
        ),
    ]
    include: Annotated[
        list[str], Meta(description="fnmatch globs on the relative path or the file name.")
    ] = msgspec.field(default_factory=lambda: ["*"])
    exclude: Annotated[
        list[str],
        Meta(
            description="Globs left out; the default leaves out hidden files (the temporary "
            "files of rsync and editors)."
        ),
    ] = msgspec.field(default_factory=lambda: [".*", "*/.*"])
    observer: Annotated[
        Literal["native", "polling"],
        Meta(
            description="`native` (inotify) or `polling`. inotify does not see changes other "
            "hosts make on a network share; polling does."
        ),
    ] = "native"
    polling_interval: Annotated[
        PositiveDuration, Meta(description="How often the polling observer looks.")
    ] = PositiveDuration(2.0)
    rescan_interval: Annotated[
        PositiveDuration,
        Meta(description="How often a full rescan runs (the safety net for missed events)."),
    ] = PositiveDuration(60.0)
    debounce: Annotated[
        Duration,
        Meta(
            description="Quiet time before the files of a burst of events are read (each once; "
            "at most 5 times this while events keep coming)."
        ),
    ] = Duration(0.2)
    tfevents_patterns: Annotated[
        list[str], Meta(description="File names copied as TensorBoard event files.")
    ] = msgspec.field(default_factory=lambda: ["*tfevents*"])
    csv_patterns: Annotated[
        list[str], Meta(description="File names converted as CSV metric logs.")
    ] = msgspec.field(default_factory=lambda: ["*.csv"])
    jsonl_patterns: Annotated[
        list[str], Meta(description="File names converted as JSON-lines logs.")
    ] = msgspec.field(default_factory=lambda: ["*.jsonl", "*.ndjson"])
    step_columns: Annotated[
        list[str],
        Meta(
            min_length=1,
            description="The CSV/JSON step field: the first one present wins; none: the row index.",
        ),
    ] = msgspec.field(default_factory=lambda: ["step", "global_step", "epoch"])
    max_file_size: Annotated[
        ByteSize, Meta(description="Larger files are skipped with a warning.")
    ] = ByteSize(DEFAULT_MAX_FILE_SIZE)

    @property
    def poll_interval(self) -> float:
        """The scheduler's interval for this source: its periodic rescan."""
        return self.rescan_interval
