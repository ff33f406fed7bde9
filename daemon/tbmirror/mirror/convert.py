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

Poison never blocks a file: a line whose step is a number TensorBoard cannot hold (NaN, infinite,
beyond int64) is skipped, a point the step rule would move past int64 is skipped, an absurd wall
time (negative, past the year 9999) is replaced by the read time, an object nested too deeply is
skipped; lines that are not valid are skipped. Each cause is logged once per file (the state
remembers, bounded) with the line number and the column or key name, never a value, and counted
(`skipped`).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from typing import Any, Literal

import structlog

from tbmirror.mirror.steps import INT64_MAX, INT64_MIN, next_step, valid_step
from tbmirror.mirror.summaries import ScalarEncoder, clean_tag

log = structlog.get_logger(__name__)

Kind = Literal["csv", "jsonl"]
DEFAULT_STEP_COLUMNS = ("step", "global_step", "epoch")
WALL_TIME_COLUMNS = ("wall_time", "timestamp", "time")
# A wall time above this is in milliseconds (1e11 s is the year 5138; 1e11 ms is 1973).
MILLISECONDS_ABOVE = 1e11
BOM = b"\xef\xbb\xbf"
MAX_WALL_TIME = 253_402_300_799.0  # 9999-12-31T23:59:59Z, in seconds
MAX_DEPTH = 32  # levels of nested JSON objects flattened into a tag
MAX_WARNED = 32  # distinct warnings (cause and column) remembered per file


def _seconds(value: float) -> float | None:
    """A wall time in seconds, from seconds or (when > MILLISECONDS_ABOVE) milliseconds; None if
    it is no plausible time (not finite, before 1970 or after 9999)."""
    if not math.isfinite(value):
        return None
    seconds = value / 1000.0 if value > MILLISECONDS_ABOVE else value
    return seconds if 0 <= seconds <= MAX_WALL_TIME else None


def _json_number(value: Any) -> bool:
    """Whether a decoded JSON value is a number (bools are not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number_cell(cells: list[str], index: int | None) -> str | None:
    """The CSV cell at `index` (stripped) if it holds a number (NaN and infinities included);
    None if it is absent, empty or not a number."""
    if index is None or index >= len(cells):
        return None
    cell = cells[index].strip()
    try:
        float(cell)
    except ValueError:
        return None
    return cell


def _json_float(value: Any) -> float:
    """A decoded JSON number as a float (an int too large for one is infinite)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


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
        # Warnings already logged ("cause" or "cause:column"; a bare column name is from an
        # older version, when only non-numeric columns were warned about) and skips counted.
        self._warned: set[str] = {
            entry if ":" in entry or entry in _CAUSES else f"non_numeric:{entry}"
            for entry in state.get("warned", [])
        }
        self._skipped: dict[str, int] = {
            str(cause): int(count) for cause, count in state.get("skipped", {}).items()
        }
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

    @property
    def skipped(self) -> dict[str, int]:
        """How many lines, values or points were skipped (or wall times replaced), by cause,
        over the file's life."""
        return dict(self._skipped)

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
            "skipped": dict(self._skipped),
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
        if not INT64_MIN <= tb_step <= INT64_MAX:  # moved past a step at the end of int64
            self._skip("step_overflow", column=tag)
            return
        self._tb_steps[tag] = tb_step
        encoder = self._encoders.get(tag)
        if encoder is None:
            encoder = self._encoders[tag] = ScalarEncoder(tag)
        payloads.append(encoder.encode(wall_time, tb_step, value))

    def _skip(self, cause: str, column: str | None = None, **fields: Any) -> None:
        """Count a skip for `cause` and log it, once per file for each cause (and column, for a
        non-numeric one), at most MAX_WARNED warnings in all. Names and line numbers only: a
        value may be anything (a token someone logged)."""
        self._skipped[cause] = self._skipped.get(cause, 0) + 1
        key = f"{cause}:{column[:200]}" if cause == "non_numeric" and column else cause
        if key in self._warned or _CAPPED in self._warned:
            return
        if len(self._warned) >= MAX_WARNED:
            self._warned.add(_CAPPED)
            log.warning("metric_log_warnings_capped", line=self._line, limit=MAX_WARNED)
            return
        self._warned.add(key)
        if column is not None:
            fields["column"] = column
        log.warning(_CAUSES[cause], line=self._line, **fields)

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
                    self._skip("invalid_line", error=str(error))
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
            source_step: int | None = row
            step_cell = _number_cell(cells, step_index)
            if step_cell is not None and (source_step := valid_step(step_cell)) is None:
                self._skip("invalid_step", column=self._step_column)
                continue
            assert source_step is not None
            wall_time = read_time
            wall_cell = _number_cell(cells, wall_index)
            if wall_cell is not None:
                wall_time = self._wall_time(float(wall_cell), self._wall_time_column, read_time)
            for index, tag in tag_columns:
                if index >= count:
                    break
                cell = cells[index].strip()
                if not cell:
                    continue
                try:
                    value = float(cell)
                except ValueError:
                    self._skip("non_numeric", column=tag)
                    continue
                self._emit(payloads, tag, source_step, wall_time, value)

    def _wall_time(self, number: float, column: str | None, read_time: float) -> float:
        """A source wall time in seconds; the read time (and a warning) if it is absurd."""
        seconds = _seconds(number)
        if seconds is None:
            self._skip("invalid_wall_time", column=column)
            return read_time
        return seconds

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
            except json.JSONDecodeError as error:
                self._skip("invalid_line", error=error.msg)  # the message alone: no line text
                continue
            except (ValueError, RecursionError) as error:
                self._skip("invalid_line", error=type(error).__name__)
                continue
            if not isinstance(record, dict):
                self._skip("not_an_object", error=f"not a JSON object but {type(record).__name__}")
                continue
            row = self._rows
            self._rows += 1
            source_step: int | None = row
            step_key: str | None = None
            for key in self._step_columns:
                value = record.get(key)
                if _json_number(value):
                    step_key = key
                    source_step = valid_step(value)
                    break
            if source_step is None:
                self._skip("invalid_step", column=step_key)
                continue
            wall_time = read_time
            wall_key: str | None = None
            for key in WALL_TIME_COLUMNS:
                value = record.get(key)
                if key != step_key and _json_number(value):
                    wall_time = self._wall_time(_json_float(value), key, read_time)
                    wall_key = key
                    break
            for key, value in record.items():
                if key in (step_key, wall_key):
                    continue
                self._json_value(payloads, key, value, source_step, wall_time, 1)

    def _json_value(
        self,
        payloads: list[bytes],
        tag: str,
        value: Any,
        source_step: int,
        wall_time: float,
        depth: int,
    ) -> None:
        """Emit `value` under `tag` if numeric, recursing into objects (keys joined with "/")."""
        if isinstance(value, dict):
            if depth >= MAX_DEPTH:
                self._skip("too_deep", column=tag.split("/", 1)[0])
                return
            for key, inner in value.items():
                self._json_value(payloads, f"{tag}/{key}", inner, source_step, wall_time, depth + 1)
            return
        number = _json_float(value) if _json_number(value) else None
        if number is None or (isinstance(value, int) and not math.isfinite(number)):
            self._skip("non_numeric", column=tag)  # not a number, or an int beyond a float
            return
        self._emit(payloads, tag, source_step, wall_time, number)


# The warning logged (once per file) for each cause of a skip.
_CAUSES = {
    "invalid_line": "invalid_line_skipped",
    "not_an_object": "invalid_line_skipped",
    "invalid_step": "invalid_step_skipped",  # NaN, infinite or beyond int64: the line
    "step_overflow": "step_overflow_skipped",  # the step rule would leave int64: the point
    "invalid_wall_time": "wall_time_out_of_range",  # the read time is used instead
    "too_deep": "nested_too_deep_skipped",  # an object nested over MAX_DEPTH levels
    "non_numeric": "non_numeric_column_ignored",  # per column
}
_CAPPED = "capped"  # MAX_WARNED reached: nothing more is logged for this file
