"""What every sync engine offers the service: one pass at a time, a report, and what to watch.

An engine mirrors one configured source. The service sees engines only through `Engine` (never an
engine's class or attributes); an engine with a directory to watch says so with a `WatchSpec`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tbmirror.errors import TbmirrorError

Progress = Callable[[int, int], None]  # (done, total so far: a listing may still grow it)


@dataclass
class PassReport:
    """What one pass did; `failure` is why the pass failed, when the source itself, writing
    (a WriteFault: the disk, not the source) or a bug (UnexpectedError) ended it; `str()` of it
    is what users are told.

    `points` are metric points (and the records of tailed tfevents files); `images` (image
    series' steps and figures) and `tables` (versions of a table) are counted apart. For an
    uploads source, "runs" are the files (`unit`) found, written and failed (by path).
    """

    source: str
    runs_listed: int = 0
    runs_tried: int = 0  # runs (or files) the pass worked on: `failed_runs` are among them
    runs_written: int = 0
    runs_moved: int = 0
    runs_removed: int = 0
    runs_retired: int = 0  # left the selection (MLflow sources with `filter`, `max_runs`, ...)
    points: int = 0
    images: int = 0
    tables: int = 0
    bytes_written: int = 0
    requests: int = 0
    history_series: int = 0
    runs_planned: int = 0  # listed runs whose series' cursors were read (new, changed or due)
    failed_runs: list[str] = field(default_factory=list)
    missing_experiments: list[str] = field(default_factory=list)
    seconds: float = 0.0
    failure: TbmirrorError | None = None
    unit: str = "runs"  # what runs_* count: "files" for an uploads source

    @property
    def ok(self) -> bool:
        return self.failure is None and not self.failed_runs


RunFailed = Callable[[PassReport, str, Exception], None]  # (report, run id, why): counted, logged


@dataclass(frozen=True)
class WatchSpec:
    """A directory whose changes an engine wants to hear of between passes.

    `relative` maps an absolute path below `path` to the engine's relative path (None: not one
    of its files); `sync_paths` brings those relative paths up to date.
    """

    name: str
    path: Path
    observer: str
    polling_interval: float
    debounce: float
    relative: Callable[[str], str | None]
    sync_paths: Callable[[Iterable[str], threading.Event | None], PassReport]


class Engine(Protocol):
    """Mirrors one source. Not thread-safe: one pass (or watched batch) at a time."""

    @property
    def name(self) -> str: ...

    @property
    def runs_mirrored(self) -> int:
        """Runs (or files) of this source in the mirror; may be read from any thread."""
        ...

    @property
    def progress_at(self) -> float | None:
        """Wall time of the last sign of progress (an answer, a file done), for telling a long
        pass from a stuck one; may be read from any thread."""
        ...

    def run_pass(
        self,
        full: bool = True,
        reconcile_all: bool = False,
        progress: Progress | None = None,
        stop: threading.Event | None = None,
    ) -> PassReport:
        """One incremental pass; never raises for source, run or write errors (see the report).
        `full` lists everything (deletions, renames); `stop` ends it at the next run boundary."""
        ...

    def watch_spec(self) -> WatchSpec | None:
        """The directory to watch between passes, if any (asked before each pass)."""
        ...

    def close(self) -> None: ...
