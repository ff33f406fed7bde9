"""Start-up recovery: make the mirror root say exactly what the store says, before anything (and
TensorBoard above all) reads it.

- a directory move recorded but not finished is rolled forward;
- a file longer than its committed length is cut back to it (a batch that never committed: its
  data is fetched again from the source);
- a file that is missing, shorter than committed or not a regular file cannot be trusted: its run
  is reset (`Batch.reset_run`), or its tailed file mirrored again from the start;
- an events file (any name with "tfevents") under an owned source directory that no row knows
  (created but never committed, or left by a removal that did not finish) is removed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import structlog

from tbmirror.journal.journal import Journal
from tbmirror.mirror.layout import is_archived, owner_of

log = structlog.get_logger(__name__)


@dataclass
class RecoveryReport:
    truncated: int = 0
    bytes_dropped: int = 0
    runs_reset: int = 0
    orphans_removed: int = 0


def recover(journal: Journal, owned: list[str]) -> RecoveryReport:
    """Reconcile disk with the store for the source directories `owned` (relative names)."""
    report = RecoveryReport()
    store, files, layout = journal.store, journal.files, journal.layout
    for source in owned:
        journal.settle(source)  # finishes recorded moves (nothing is pending at start-up)
    broken: set[str] = set()
    for relative, length in store.files().items():
        if owner_of(relative) not in owned or (is_archived(relative) and not layout.archive):
            continue  # another's, or in an archive no longer configured (prune's to remove)
        path = layout.resolve(relative)
        size = files.size(path)
        if size is not None and size > length:
            files.truncate(path, length)
            report.truncated += 1
            report.bytes_dropped += size - length
            log.info("uncommitted_tail_truncated", path=relative, bytes=size - length)
        elif size is None or size < length:
            broken.add(relative)
    for source in owned:
        report.runs_reset += journal.reset_broken(source, broken)
    known = set(store.files())
    for source in owned:
        for directory, _, names in os.walk(layout.resolve(source)):
            for name in names:
                relative = os.path.relpath(os.path.join(directory, name), layout.root)
                if "tfevents" in name and relative not in known:
                    files.unlink(layout.resolve(relative))
                    report.orphans_removed += 1
                    log.info("orphan_events_file_removed", path=relative)
    return report
