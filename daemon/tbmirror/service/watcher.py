"""Watches one upload directory with watchdog and hands changed paths over, debounced.

Every file system event adds its path(s) to a pending set; a worker thread waits until no event
came for `debounce` seconds (or at most MAX_WAIT_FACTOR times that since the first pending one, so
a never-ending burst is still served), then calls `on_changes` with the set, once. A burst of
thousands of events on one file therefore reads that file once. Paths are relative to the tree.

The native observer (inotify) does not see changes made on other hosts of a network share; the
polling observer does. Either may miss events, which is why the scheduler also rescans.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from tbmirror.engine.base import WatchSpec

log = structlog.get_logger(__name__)

MAX_WAIT_FACTOR = 5


class UploadWatcher:
    """Not restartable: `start` once, `stop` once."""

    def __init__(
        self,
        spec: WatchSpec,
        on_changes: Callable[[set[str]], None],
    ) -> None:
        self.spec = spec
        self._relative = spec.relative
        self._on_changes = on_changes
        self._pending: set[str] = set()
        self._first: float | None = None
        self._last = 0.0
        self._condition = threading.Condition()
        self._stopped = False
        self._observer: BaseObserver = (
            PollingObserver(timeout=spec.polling_interval)
            if spec.observer == "polling"
            else Observer()
        )
        self._worker = threading.Thread(target=self._work, name=f"watch {spec.name}", daemon=True)

    def start(self) -> None:
        """Start watching; OSError if the directory cannot be watched (e.g. inotify limits)."""
        self._observer.schedule(_Handler(self._add), str(self.spec.path), recursive=True)
        self._observer.start()
        self._worker.start()
        log.info("watching", source=self.spec.name, path=str(self.spec.path),
                 observer=self.spec.observer)  # fmt: skip

    @property
    def healthy(self) -> bool:
        """False once the observer has stopped watching (e.g. the directory was removed)."""
        return self._observer.is_alive() and all(e.is_alive() for e in self._observer.emitters)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop watching; waits at most `timeout` seconds for the threads (a batch in flight
        ends at its next file, or window, once the daemon's stop is set)."""
        deadline = time.monotonic() + timeout
        with self._condition:
            self._stopped = True
            self._condition.notify()
        self._observer.stop()
        if self._observer.is_alive():
            self._observer.join(timeout=max(0.0, deadline - time.monotonic()))
        if self._worker.is_alive() and self._worker is not threading.current_thread():
            self._worker.join(timeout=max(0.0, deadline - time.monotonic()))

    def _add(self, paths: list[str]) -> None:
        relatives = {r for r in map(self._relative, paths) if r is not None}
        if not relatives:
            return
        with self._condition:
            self._pending |= relatives
            now = time.monotonic()
            self._last = now
            if self._first is None:
                self._first = now
            self._condition.notify()

    def _work(self) -> None:
        debounce = self.spec.debounce
        while True:
            with self._condition:
                while not self._stopped:
                    if self._first is not None:
                        now = time.monotonic()
                        due = min(self._last + debounce, self._first + debounce * MAX_WAIT_FACTOR)
                        if now >= due:
                            break
                        self._condition.wait(due - now)
                    else:
                        self._condition.wait()
                if self._stopped:
                    return
                batch, self._pending, self._first = self._pending, set(), None
            try:
                self._on_changes(batch)
            except Exception:  # keep watching whatever one batch did
                log.exception("watch_batch_failed", source=self.spec.name)


class _Handler(FileSystemEventHandler):
    def __init__(self, add: Callable[[list[str]], None]) -> None:
        self._add = add

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return  # reads (ours included) change nothing
        if event.is_directory and event.event_type == "modified":
            return  # its files have their own events; a created or moved-in one is scanned
        paths = [event.src_path, getattr(event, "dest_path", "") or ""]
        self._add([p if isinstance(p, str) else p.decode() for p in paths if p])
