"""Plain records shared by all layers: what sources say, and what the journal keeps."""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

import msgspec

_DOUBLE = struct.Struct("<d")

TERMINAL_STATUSES = frozenset({"FINISHED", "FAILED", "KILLED"})


class MetricPoint(msgspec.Struct, frozen=True, gc=False):
    """One logged metric value: MLflow's (timestamp ms, step, value). A Struct: a backfill makes
    millions of them, each in ~70 ns (a frozen dataclass takes ~350)."""

    timestamp: int
    step: int
    value: float

    def identity(self) -> tuple[int, int, bytes]:
        """Exact identity, NaN-safe (NaN equals NaN here, as it does for MLflow's dedup)."""
        return (self.timestamp, self.step, value_bits(self.value))


def value_bits(value: float) -> bytes:
    """The value as 8 bytes, with every NaN collapsed to one canonical NaN."""
    return _DOUBLE.pack(math.nan if math.isnan(value) else value)


def value_from_bits(bits: bytes) -> float:
    return float(_DOUBLE.unpack(bits)[0])


@dataclass(frozen=True, slots=True)
class Experiment:
    experiment_id: str
    name: str
    lifecycle_stage: str = "active"


@dataclass(frozen=True, slots=True)
class RunSnapshot:
    """What a source says about one run now (metadata and each key's latest point).

    `fingerprint` identifies what the source said (equal answers, equal fingerprints, in any
    process: it is kept in the state store); 0 if unknown."""

    run_id: str
    experiment_id: str
    name: str
    status: str
    lifecycle_stage: str
    start_time: int | None
    end_time: int | None
    parent_run_id: str | None
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    latest: Mapping[str, MetricPoint] = field(default_factory=dict)
    fingerprint: int = 0
    artifact_uri: str | None = None  # where its artifacts are, as the source names it

    @property
    def deleted(self) -> bool:
        return self.lifecycle_stage == "deleted"

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


@dataclass(slots=True)
class RunRecord:
    """A run as mirrored: where it lives and what of its metadata has been written."""

    source: str
    run_id: str
    experiment_id: str
    parent_run_id: str | None
    dir: str
    name: str
    status: str
    events_file: str | None = None
    text_digest: int | None = None  # of its text as last written (encoding.text_digest)
    text_step: int = -1
    hparams_written: bool = False
    end_written: bool = False
    reconciled_at: float = 0.0
    artifacts_at: float = 0.0  # when its artifacts were last looked at (0: never)
    trial: str | None = None  # its HParams session's name, unique in the root (None: run id)
    listed: int = 0  # fingerprint of the listed snapshot last mirrored whole (0: none)

    @property
    def events_path(self) -> str | None:
        """Relative path of the run's active events file, if it has one."""
        return f"{self.dir}/{self.events_file}" if self.events_file else None


@dataclass(slots=True)
class Cursor:
    """How far one (run, metric key) series is mirrored.

    `count` points exported, the last of them `last` (in the source's history order); `tb_step` is
    the last TensorBoard step written; `seen` is the latest point the source's run listing showed.
    """

    count: int = 0
    last: MetricPoint | None = None
    tb_step: int | None = None
    seen: MetricPoint | None = None


@dataclass(slots=True)
class TailRecord:
    """How far one tailed file (an uploaded file, or a run's tfevents artifact) is mirrored.

    `origin` names the file within its source (a path relative to the watched directory, or
    "<run id>/<artifact path>"); its mirror copy is `mirror_dir/mirror_file`. `offset` source bytes
    are mirrored; `head_digest` and `tail_digest` fingerprint the first and the last (up to
    FINGERPRINT_BYTES) of them, `identity` is the local file's device:inode, so a truncated,
    replaced or rewritten file is detected. `seen_size` is the size last looked at (a partial last
    record or line is not read again until the file changes). A corrupt record stops the file at
    `stopped_at` (warned once, read again each time the file is looked at). `converter` is the JSON
    state of a CSV/JSON-lines converter.
    """

    source: str
    origin: str
    kind: str
    mirror_dir: str
    mirror_file: str | None = None
    offset: int = 0
    seen_size: int = 0
    identity: str | None = None
    head_digest: str | None = None
    tail_digest: str | None = None
    generation: int = 0
    stopped_at: int | None = None
    converter: str | None = None
    points: int = 0  # records (tfevents) or scalar points (converted logs) mirrored

    @property
    def mirror_path(self) -> str | None:
        return f"{self.mirror_dir}/{self.mirror_file}" if self.mirror_file else None

    def restarted(self) -> TailRecord:
        """The record for mirroring this file again from the start, into a new copy."""
        return TailRecord(
            self.source, self.origin, self.kind, self.mirror_dir, generation=self.generation + 1
        )


@dataclass(frozen=True, slots=True)
class MediaRecord:
    """One image or table artifact of a run, as mirrored into the run's events file.

    `kind` is "image" (one of a `log_image(key=, step=)` series), "figure" (any other image,
    shown again when its size changes) or "table"; `tag` its TensorBoard tag; `size` the size
    the listing gave when it was last looked at; `step` the TensorBoard step it was last written
    at (None: never); `skipped` if the version at `size` was not written (too large, corrupt).
    """

    source: str
    run_id: str
    path: str
    kind: str
    tag: str
    size: int
    step: int | None
    skipped: bool = False


@dataclass(slots=True)
class SourceStatus:
    """How the last passes of one source went (for `tbmirror status` and /healthz)."""

    source: str
    last_attempt: float | None = None
    last_success: float | None = None
    consecutive_errors: int = 0
    last_error: str | None = None
    failed_runs: int = 0  # runs (or files) that failed in the last pass
    all_failed: bool = False  # every run (or file) the last pass looked at failed
