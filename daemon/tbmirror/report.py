"""What one pass over a source did, and how the passes of each source went (state store)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from tbmirror.state import SourceStatus, State

Progress = Callable[[int, int], None]  # (done, total), for a progress bar


@dataclass
class PassReport:
    """What one pass did; `error` is set when the source itself failed.

    For an uploads source, "runs" are the files (`unit`) found, written and failed (by path).
    """

    source: str
    runs_listed: int = 0
    runs_written: int = 0
    runs_moved: int = 0
    runs_removed: int = 0
    points: int = 0
    bytes_written: int = 0
    requests: int = 0
    history_series: int = 0
    failed_runs: list[str] = field(default_factory=list)
    missing_experiments: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None
    unit: str = "runs"  # what runs_* count: "files" for an uploads source

    @property
    def ok(self) -> bool:
        return self.error is None and not self.failed_runs


def record_status(state: State, report: PassReport, now: float) -> None:
    """Store the outcome of `report`'s pass as its source's status (for status and /healthz)."""
    status = state.source_status().get(report.source) or SourceStatus(report.source)
    status.last_attempt = now
    if report.error:
        status.consecutive_errors += 1
        status.last_error = report.error
    else:
        status.last_success, status.consecutive_errors, status.last_error = now, 0, None
    state.put_source_status(status)
