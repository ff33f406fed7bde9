"""Incremental conversion of CSV and JSON-lines metric logs into TensorBoard scalar events.

A `LineConverter` is fed the bytes of one log file from where its last feed stopped; it converts
the complete lines and says how many bytes it consumed, so a half-written last line is passed
again once its rest has arrived. Its `state()` is small and JSON-serialisable, so conversion can
continue after a restart without re-reading the file.

CSV: the first non-blank line is the header. The step comes from the first of `step_columns` in
the header (else the data-row index), the wall time from a wall_time/timestamp/time column (else
the read time); every other column is a tag. JSON lines: one object a line; numeric fields
(nested objects flattened with "/") are tags, except the step and wall-time fields.

Every tag's steps go through the step rule (`steps.next_step`), so repeated steps or steps going
back still show every point.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from typing import Any, Literal

import structlog

from tbmirror.mirror.steps import next_step
from tbmirror.mirror.summaries import ScalarEncoder, clean_tag

log = structlog.get_logger(__name__)

Kind = Literal["csv", "jsonl"]
DEFAULT_STEP_COLUMNS = ("step", "global_step", "epoch")
WALL_TIME_COLUMNS = ("wall_time", "timestamp", "time")
# A wall time above this is in milliseconds (1e11 s is the year 5138; 1e11 ms is 1973).
MILLISECONDS_ABOVE = 1e11
BOM = b"\xef\xbb\xbf"
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


def _seconds(value: float) -> float:
    """A wall time in seconds, from seconds or (when > MILLISECONDS_ABOVE) milliseconds."""
    return value / 1000.0 if value > MILLISECONDS_ABOVE else value


def _int_step(value: float) -> int:
    """A finite source step as an int64 (fractions truncated, out-of-range values clamped)."""
    return min(max(int(value), _INT64_MIN), _INT64_MAX)


def _json_number(value: Any) -> bool:
    """Whether a decoded JSON value is a number (bools are not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite_cell(cells: list[str], index: int | None) -> float | None:
    """The CSV cell at `index` as a finite float; None if absent, empty or not a finite number."""
    if index is None or index >= len(cells):
        return None
    try:
        number = float(cells[index])
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _json_finite(value: Any) -> float | None:
    """A decoded JSON value as a finite float, or None if it is not a number or not finite."""
    if not _json_number(value):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        return None
    return number if math.isfinite(number) else None


class LineConverter:
    """Converts complete lines of one metric log into scalar Event payloads, keeping its place."""

    def __init__(
        self,
        kind: Kind,
        step_columns: Sequence[str] = DEFAULT_STEP_COLUMNS,
        state: dict[str, Any] | None = None,
    ) -> None:
        """A converter for a `kind` log; with `state` (from `state()`), one continuing there."""
        if kind not in ("csv", "jsonl"):
            raise ValueError(f"unknown metric log kind: {kind!r}")
        self._kind: Kind = kind
        self._step_columns = tuple(step_columns)
        state = state or {}
        header = state.get("header")
        self._header: list[str] | None = list(header) if header is not None else None
        self._step_column: str | None = state.get("step_column")
        self._wall_time_column: str | None = state.get("wall_time_column")
        self._rows: int = int(state.get("rows", 0))
        self._line: int = int(state.get("line", 0))
        self._tb_steps: dict[str, int] = {
            str(tag): int(step) for tag, step in state.get("tb_steps", {}).items()
        }
        self._warned: set[str] = set(state.get("warned", []))
        self._bom_checked: bool = bool(state.get("bom_checked", False))
        self._encoders: dict[str, ScalarEncoder] = {}
        self._points = 0
        # CSV column layout, derived from the header.
        self._step_index: int | None = None
        self._wall_index: int | None = None
        self._tag_columns: list[tuple[int, str]] = []
        if self._header is not None:
            self._layout()

    @property
    def points(self) -> int:
        """The number of scalar points produced by the last `feed()` call."""
        return self._points

    def state(self) -> dict[str, Any]:
        """JSON-serialisable state; `LineConverter(kind, step_columns, state=that)` continues
        exactly where this one stopped."""
        return {
            "header": list(self._header) if self._header is not None else None,
            "step_column": self._step_column,
            "wall_time_column": self._wall_time_column,
            "rows": self._rows,
            "line": self._line,
            "tb_steps": dict(self._tb_steps),
            "warned": sorted(self._warned),
            "bom_checked": self._bom_checked,
        }

    def feed(self, data: bytes, read_time: float) -> tuple[list[bytes], int]:
        """Convert the complete lines at the start of `data` (bytes of the file from where the last
        feed stopped). Returns (payloads, bytes consumed). A partial last line (no trailing b"\\n")
        is not consumed, so the caller passes it again with its rest later.

        Points without a wall time of their own get `read_time` (seconds since the epoch)."""
        end = data.rfind(b"\n") + 1
        if end == 0:
            self._points = 0
            return [], 0
        start = 0
        if not self._bom_checked:
            self._bom_checked = True
            if data.startswith(BOM):
                start = len(BOM)
        text = bytes(data[start:end]).decode("utf-8", errors="replace")
        lines = text.split("\n")
        lines.pop()  # the empty string after the last "\n"
        payloads: list[bytes] = []
        if self._kind == "csv":
            self._csv_lines(lines, read_time, payloads)
        else:
            self._jsonl_lines(lines, read_time, payloads)
        self._points = len(payloads)
        return payloads, end

    # -- shared ---------------------------------------------------------------------------------

    def _emit(
        self, payloads: list[bytes], tag: str, source_step: int, wall_time: float, value: float
    ) -> None:
        """Append one point of `tag`, its step passed through the step rule (per tag as
        TensorBoard will see it: two long keys cut to the same tag are one series)."""
        tag = clean_tag(tag)
        tb_step = next_step(source_step, self._tb_steps.get(tag))
        self._tb_steps[tag] = tb_step
        encoder = self._encoders.get(tag)
        if encoder is None:
            encoder = self._encoders[tag] = ScalarEncoder(tag)
        payloads.append(encoder.encode(wall_time, tb_step, value))

    def _warn_non_numeric(self, column: str, value: Any) -> None:
        """Log that `column` holds a non-numeric value, once per column over the file's life."""
        if column not in self._warned:
            self._warned.add(column)
            log.warning("non_numeric_column_ignored", column=column, value=value)

    # -- CSV ------------------------------------------------------------------------------------

    def _layout(self) -> None:
        """Derive the step, wall-time and tag column indices from the header."""
        assert self._header is not None
        header = self._header
        self._step_index = header.index(self._step_column) if self._step_column in header else None
        self._wall_index = (
            header.index(self._wall_time_column) if self._wall_time_column in header else None
        )
        self._tag_columns = [
            (index, name)
            for index, name in enumerate(header)
            if name and index not in (self._step_index, self._wall_index)
        ]

    def _set_header(self, cells: list[str]) -> None:
        """Take `cells` as the header and choose the step and wall-time columns."""
        header = [cell.strip() for cell in cells]
        self._header = header
        self._step_column = next((name for name in self._step_columns if name in header), None)
        self._wall_time_column = next(
            (name for name in WALL_TIME_COLUMNS if name in header and name != self._step_column),
            None,
        )
        self._layout()

    def _csv_lines(self, lines: list[str], read_time: float, payloads: list[bytes]) -> None:
        """Convert complete CSV lines (without their "\\n")."""
        step_index = self._step_index
        wall_index = self._wall_index
        tag_columns = self._tag_columns
        for line in lines:
            self._line += 1
            if line.endswith("\r"):
                line = line[:-1]
            if not line or line.isspace():
                continue
            if '"' in line:
                try:
                    cells = next(csv.reader((line,)), [])
                except csv.Error as error:
                    log.warning("invalid_line_skipped", line=self._line, error=str(error))
                    continue
            else:
                cells = line.split(",")
            if self._header is None:
                self._set_header(cells)
                step_index = self._step_index
                wall_index = self._wall_index
                tag_columns = self._tag_columns
                continue
            header = self._header
            count = len(cells)
            if count == len(header) and [cell.strip() for cell in cells] == header:
                continue  # a repeated header (e.g. Keras CSVLogger appending after a restart)
            row = self._rows
            self._rows += 1
            step = _finite_cell(cells, step_index)
            source_step = row if step is None else _int_step(step)
            wall = _finite_cell(cells, wall_index)
            wall_time = read_time if wall is None else _seconds(wall)
            for index, tag in tag_columns:
                if index >= count:
                    break
                cell = cells[index].strip()
                if not cell:
                    continue
                try:
                    value = float(cell)
                except ValueError:
                    self._warn_non_numeric(tag, cell)
                    continue
                self._emit(payloads, tag, source_step, wall_time, value)

    # -- JSON lines -----------------------------------------------------------------------------

    def _jsonl_lines(self, lines: list[str], read_time: float, payloads: list[bytes]) -> None:
        """Convert complete JSON lines (without their "\\n")."""
        for line in lines:
            self._line += 1
            if line.endswith("\r"):
                line = line[:-1]
            if not line or line.isspace():
                continue
            try:
                record = json.loads(line)
            except (ValueError, RecursionError) as error:
                log.warning("invalid_line_skipped", line=self._line, error=str(error))
                continue
            if not isinstance(record, dict):
                log.warning(
                    "invalid_line_skipped",
                    line=self._line,
                    error=f"not a JSON object but {type(record).__name__}",
                )
                continue
            row = self._rows
            self._rows += 1
            source_step = row
            step_key: str | None = None
            for key in self._step_columns:
                value = record.get(key)
                if isinstance(value, int) and not isinstance(value, bool):
                    source_step = min(max(value, _INT64_MIN), _INT64_MAX)
                elif (number := _json_finite(value)) is not None:
                    source_step = _int_step(number)
                else:
                    continue
                step_key = key
                break
            wall_time = read_time
            wall_key: str | None = None
            for key in WALL_TIME_COLUMNS:
                if key != step_key and (number := _json_finite(record.get(key))) is not None:
                    wall_time = _seconds(number)
                    wall_key = key
                    break
            for key, value in record.items():
                if key in (step_key, wall_key):
                    continue
                self._json_value(payloads, key, value, source_step, wall_time)

    def _json_value(
        self, payloads: list[bytes], tag: str, value: Any, source_step: int, wall_time: float
    ) -> None:
        """Emit `value` under `tag` if numeric, recursing into objects (keys joined with "/")."""
        if isinstance(value, dict):
            for key, inner in value.items():
                self._json_value(payloads, f"{tag}/{key}", inner, source_step, wall_time)
            return
        if _json_number(value):
            try:
                number = float(value)
            except OverflowError:
                self._warn_non_numeric(tag, value)
                return
            self._emit(payloads, tag, source_step, wall_time, number)
            return
        self._warn_non_numeric(tag, value)
