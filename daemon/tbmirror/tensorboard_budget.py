"""TensorBoard's memory: an estimate of what serving the mirror costs, and the points per series
that keep it within `tensorboard.memory_budget`.

The formula (measured by benchmarks/tensorboard_memory.py, docs/operations/scale-out.md):
RSS = BASE_BYTES + RUN_BYTES x runs + POINT_BYTES x points held, where a series holds
min(its points, the points per series kept): TensorBoard keeps that many of each scalar series
(reservoir sampling beyond it); the mirror's files keep every point. Images and text are not
counted. A series is a (run, key) of the state store; an uploaded or artifact tfevents file counts
as one run holding one series of all its records (an over-estimate when it holds several tags).
"""

from __future__ import annotations

from collections.abc import Sequence

# Measured on TensorBoard 2.21 with its Rust data server 0.7.2 (benchmarks/tensorboard_memory.py):
BASE_BYTES = 84 * 1024**2  # TensorBoard and its data server, serving nothing
RUN_BYTES = 28 * 1024  # per run directory
POINT_BYTES = 116  # per scalar point held
MIN_POINTS_PER_SERIES = 10  # kept whatever the budget says (fewer says too little)

Histogram = Sequence[tuple[int, int]]  # (points in a series, how many series have that many)


def estimate(runs: int, series: Histogram, points_per_series: int | None = None) -> int:
    """Bytes TensorBoard holds for `runs` run directories and `series` (a histogram), keeping at
    most `points_per_series` of each (None: all)."""
    held = sum(
        min(points, points_per_series) * count if points_per_series is not None else points * count
        for points, count in series
    )
    return BASE_BYTES + RUN_BYTES * runs + POINT_BYTES * held


def points_per_series(budget: int, runs: int, series: Histogram, cap: int) -> int:
    """The most points per series (at most `cap`, at least MIN_POINTS_PER_SERIES) with which
    `estimate` stays within `budget`: short series keep all their points, the long ones share
    what is left equally."""
    left = (budget - BASE_BYTES - RUN_BYTES * runs) // POINT_BYTES
    remaining = sum(count for _, count in series)
    for points, count in sorted(series):
        if points >= cap:
            break
        if points * remaining > left:  # not every series left can have this many
            return min(cap, max(MIN_POINTS_PER_SERIES, left // remaining))
        left -= points * count
        remaining -= count
    if remaining and cap * remaining > left:
        return min(cap, max(MIN_POINTS_PER_SERIES, left // remaining))
    return cap


def describe(budget: int | None, runs: int, series: Histogram, cap: int) -> tuple[bool, str]:
    """(within the budget, one line): what TensorBoard is estimated to hold of the mirror."""
    points = sum(p * count for p, count in series)
    if budget is None:
        held = estimate(runs, series, cap)
        return True, f"~{_mib(held)} for {runs:,} runs, {points:,} points (no memory_budget)"
    kept = points_per_series(budget, runs, series, cap)
    held = estimate(runs, series, kept)
    text = (
        f"~{_mib(held)} of memory_budget {_mib(budget)} for {runs:,} runs, {points:,} points; "
        f"{kept:,} points per series kept"
    )
    if held > budget:
        return False, text + ": past the budget even so (fewer runs: selection, retention)"
    return True, text


def _mib(size: int) -> str:
    return f"{size / 1024**2:,.0f} MiB"
