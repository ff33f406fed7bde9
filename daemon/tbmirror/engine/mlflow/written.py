"""What a run's events files already hold of one series, to tell which points of a series rewritten
upstream (a late point inserted before the cursor) are not mirrored yet.

A point is matched on (wall time, float32 value), what TensorBoard keeps of it; each written point
matches one source point once (a series may repeat a point). The marks are a sorted numpy array of
12 bytes a point and a used flag of 1 byte, read from the files a chunk at a time, so diffing
millions of points stays within tens of megabytes.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from tbmirror.mirror import summaries
from tbmirror.model import MetricPoint

MARK = np.dtype([("wall", "<f8"), ("bits", "<u4")])
FILL_BATCH = 65536


class WrittenMarks:
    """The marks of one tag's scalars in a run directory, consumed as points match them."""

    def __init__(self, directory: Path, tag: str) -> None:
        self._marks = _read(directory, tag)
        self._marks.sort()  # by wall time, then bits: equal marks side by side
        self._used = bytearray(len(self._marks))  # a mark without equals: used up
        self._next: dict[int, int] = {}  # first of several equal marks -> the next one unused

    def __len__(self) -> int:
        return len(self._marks)

    def unwritten(self, points: list[MetricPoint]) -> list[MetricPoint]:
        """The points (in order) no unused mark matches; the matched marks are used up."""
        if not points:
            return []
        keys = _marks_of(points)
        starts = np.searchsorted(self._marks, keys, side="left").tolist()
        ends = np.searchsorted(self._marks, keys, side="right").tolist()
        new: list[MetricPoint] = []
        for point, start, end in zip(points, starts, ends, strict=True):
            if end - start == 1 and not self._used[start]:
                self._used[start] = 1
            elif end - start > 1 and (index := self._next.get(start, start)) < end:
                self._next[start] = index + 1
            else:
                new.append(point)
        return new


def _marks_of(points: Iterable[MetricPoint]) -> np.ndarray:
    """(wall time, float32 bits) of source points, as they would be written."""
    listed = list(points)
    marks = np.empty(len(listed), MARK)
    marks["wall"] = np.array([point.timestamp for point in listed], dtype=np.float64) / 1000
    marks["bits"] = _float32_bits(np.array([point.value for point in listed], dtype=np.float64))
    return marks


def _float32_bits(values: np.ndarray) -> np.ndarray:
    """Values as TensorBoard stores them (float32), as their bits, every NaN alike."""
    with np.errstate(over="ignore", invalid="ignore"):
        single = values.astype(np.float32)
    single[np.isnan(single)] = np.float32(np.nan)
    return single.view(np.uint32)


def _read(directory: Path, tag: str) -> np.ndarray:
    """The marks of the tag's scalars in the directory's events files (unsorted), gathered
    FILL_BATCH at a time (at most twice their size held while they are joined)."""
    chunks: list[np.ndarray] = []
    walls: list[float] = []
    values: list[float] = []

    def flush() -> None:
        chunk = np.empty(len(walls), MARK)
        chunk["wall"] = walls
        chunk["bits"] = _float32_bits(np.array(values, dtype=np.float64))
        chunks.append(chunk)
        walls.clear()
        values.clear()

    for wall, value in summaries.iter_scalars(directory, tag):
        walls.append(wall)
        values.append(value)
        if len(walls) == FILL_BATCH:
            flush()
    flush()
    return np.concatenate(chunks)
