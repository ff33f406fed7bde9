"""The settings of an `uploads` source."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import ByteSize, Field, field_validator

from tbmirror.config.base import Section
from tbmirror.config.values import DEFAULT_MAX_FILE_SIZE, Duration, SourceName


class UploadsSourceSettings(Section):
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
