"""Notices a changed config file without SIGHUP.

The directory holding the config is watched, not the file: Kubernetes updates a mounted ConfigMap
by writing a new timestamped directory beside the file and swapping the `..data` symlink the file
points through, so the file itself never sees an event. When the file is a symlink into another
directory (a link to a file kept elsewhere), the directory it points into at start is watched
too, so edits there are seen. Any event marks the file dirty; once no event came for `debounce`
seconds, the file's content (read through its symlinks) is hashed, and `due` is true once when
that digest differs from the last one seen. What it then does is the daemon's: the same reload
as SIGHUP.

Thread-safety: watchdog's thread only marks the directory dirty; `due` is called from one thread.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from pathlib import Path

import structlog
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

log = structlog.get_logger(__name__)

DEBOUNCE_SECONDS = 2.0


class ConfigWatcher:
    """Not restartable: `start` once, `stop` once."""

    def __init__(
        self,
        path: Path,
        debounce: float = DEBOUNCE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.debounce, self._clock = debounce, clock
        self._digest = _digest(path)  # of the content the daemon started with
        self._event_at: float | None = None
        self._lock = threading.Lock()
        self._observer: BaseObserver | None = None

    def directories(self) -> list[Path]:
        """The directories watched (not recursively): the config's, and the one its symlinks
        lead into when that is elsewhere."""
        own = self.path.parent
        target = self.path.resolve().parent
        return [own] if target.is_relative_to(own.resolve()) else [own, target]

    def start(self) -> None:
        """Watch the directories. If they cannot be watched (no inotify watch left, say), one
        warning and SIGHUP remains the way to reload."""
        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                watcher._mark()

        observer = Observer()
        directories = self.directories()
        try:
            for directory in directories:
                observer.schedule(Handler(), str(directory), recursive=False)
            observer.start()
        except OSError as error:
            log.warning("config_watch_unavailable", path=", ".join(map(str, directories)),
                        error=error.strerror or str(error))  # fmt: skip
            return
        self._observer = observer

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join()

    def due(self) -> bool:
        """True once per change of the file's content, `debounce` s after the last event."""
        with self._lock:
            if self._event_at is None or self._clock() - self._event_at < self.debounce:
                return False
            self._event_at = None
        digest = _digest(self.path)
        if digest == self._digest:
            return False
        self._digest = digest
        return True

    def loading(self) -> None:
        """The file is being loaded now (on SIGHUP, say): events so far and its content as it
        is are taken as seen, so the same change is not reloaded twice."""
        with self._lock:
            self._event_at = None
        self._digest = _digest(self.path)

    def _mark(self) -> None:
        with self._lock:
            self._event_at = self._clock()


def _digest(path: Path) -> str | None:
    """SHA-256 of the file's bytes; None while it cannot be read (the reload then says why)."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None
