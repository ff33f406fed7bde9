"""Start-up recovery: make the mirror root say exactly what the state store says.

Run before anything reads the mirror (TensorBoard included):
- a file longer than its committed length is cut back to it (records appended, never committed);
- a file that is missing, shorter than committed or not a file at all cannot be trusted: its run
  is reset, so its points are fetched and written again into a fresh file (a tailed file's copy:
  the file is mirrored again from the start);
- an events file (any name with "tfevents") under a source directory we own that the store does not
  know (created but never committed, or left by a deleted run or a replaced upload) is removed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import structlog

from tbmirror.mirror import events
from tbmirror.mirror.layout import MirrorLayout
from tbmirror.state import State

log = structlog.get_logger(__name__)


@dataclass
class RecoveryReport:
    truncated: int = 0
    bytes_dropped: int = 0
    runs_reset: int = 0
    orphans_removed: int = 0


def recover(state: State, layout: MirrorLayout, owned_dirs: list[str]) -> RecoveryReport:
    """Reconcile disk with `state`; `owned_dirs` are the relative source directories we own."""
    report = RecoveryReport()
    committed = state.files()
    broken: set[str] = set()
    for relative, length in committed.items():
        path = layout.resolve(relative)
        try:
            size = path.stat().st_size if path.is_file() else -1
        except OSError:
            size = -1
        if size > length:
            events.truncate(path, length)
            report.truncated += 1
            report.bytes_dropped += size - length
            log.info("uncommitted_tail_truncated", path=relative, bytes=size - length)
        elif size < length:
            broken.add(relative)
    if broken:
        with state.transaction():
            for run in state.all_runs():
                if run.events_path in broken:
                    log.warning("events_file_damaged_run_reset", path=run.events_path)
                    _remove(layout, run.events_path)
                    state.forget_run(run)
                    run.events_file, run.text_digest, run.text_step = None, None, -1
                    run.hparams_written = run.end_written = False
                    state.put_run(run)
                    report.runs_reset += 1
            for tail in state.all_tails():
                if tail.mirror_path in broken:
                    log.warning("mirror_copy_damaged_file_restarted", path=tail.mirror_path)
                    _remove(layout, tail.mirror_path)
                    state.forget_tail(tail)
                    state.put_tail(tail.restarted())
                    report.runs_reset += 1
    known = set(state.files())
    for owned in owned_dirs:
        top = layout.resolve(owned)
        for directory, _, names in os.walk(top):
            for name in names:
                if "tfevents" not in name:
                    continue
                relative = os.path.relpath(os.path.join(directory, name), layout.root)
                if relative not in known:
                    os.unlink(os.path.join(directory, name))
                    report.orphans_removed += 1
                    log.info("orphan_events_file_removed", path=relative)
    return report


def _remove(layout: MirrorLayout, relative: str) -> None:
    try:
        layout.resolve(relative).unlink(missing_ok=True)
    except OSError as error:
        log.warning("damaged_file_not_removed", path=relative, error=str(error))
