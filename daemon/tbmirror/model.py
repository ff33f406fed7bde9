"""Plain data shared by sources, the sync engine and the state store."""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field

_DOUBLE = struct.Struct("<d")

TERMINAL_STATUSES = frozenset({"FINISHED", "FAILED", "KILLED"})


@dataclass(frozen=True, slots=True)
class MetricPoint:
    """One logged metric value: MLflow's (timestamp ms, step, value)."""

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
    """What a source says about one run now (metadata and each key's latest point)."""

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
    latest: dict[str, MetricPoint] = field(default_factory=dict)

    @property
    def deleted(self) -> bool:
        return self.lifecycle_stage == "deleted"

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES
