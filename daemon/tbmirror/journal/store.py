"""The SQLite state store: mirrored runs, per-series cursors, tailed files, committed file lengths,
directory moves in flight, and how each source's passes went.

Only journal/ uses this module: rows here never claim more than what is durably on disk, which the
journal (journal.py) guarantees by writing and fsyncing records before it commits the rows that
cover them. Tables only; no file is touched here.
"""

from __future__ import annotations

import sqlite3
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, NamedTuple

from tbmirror.errors import MirrorError
from tbmirror.journal.locks import PidLock
from tbmirror.model import (
    Cursor,
    MediaRecord,
    MetricPoint,
    RunRecord,
    SourceStatus,
    TailRecord,
    value_bits,
    value_from_bits,
)

SCHEMA_VERSION = 1
TAILED_FILES = "(tailed files)"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS experiments (
    source TEXT NOT NULL, experiment_id TEXT NOT NULL, name TEXT NOT NULL, dir TEXT NOT NULL,
    PRIMARY KEY (source, experiment_id));
CREATE TABLE IF NOT EXISTS runs (
    source TEXT NOT NULL, run_id TEXT NOT NULL,
    experiment_id TEXT NOT NULL,
    parent_run_id TEXT,
    dir TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    events_file TEXT,
    text_digest TEXT,
    text_step INTEGER NOT NULL DEFAULT -1,
    hparams_written INTEGER NOT NULL DEFAULT 0,
    end_written INTEGER NOT NULL DEFAULT 0,
    reconciled_at REAL NOT NULL DEFAULT 0,
    artifacts_at REAL NOT NULL DEFAULT 0,
    trial TEXT,
    listed INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (source, run_id));
CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, length INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS source_status (
    source TEXT PRIMARY KEY, last_attempt REAL, last_success REAL,
    consecutive_errors INTEGER NOT NULL DEFAULT 0, last_error TEXT,
    failed_runs INTEGER NOT NULL DEFAULT 0, all_failed INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS series (
    source TEXT NOT NULL, run_id TEXT NOT NULL, key TEXT NOT NULL,
    count INTEGER NOT NULL,
    last_ts INTEGER, last_step INTEGER, last_value BLOB,
    tb_step INTEGER,
    seen_ts INTEGER, seen_step INTEGER, seen_value BLOB,
    PRIMARY KEY (source, run_id, key));
CREATE TABLE IF NOT EXISTS moves (
    old_dir TEXT PRIMARY KEY, new_dir TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS media (
    source TEXT NOT NULL, run_id TEXT NOT NULL, path TEXT NOT NULL, kind TEXT NOT NULL,
    tag TEXT NOT NULL, size INTEGER NOT NULL, step INTEGER, skipped INTEGER NOT NULL,
    PRIMARY KEY (source, run_id, path));
CREATE TABLE IF NOT EXISTS tails (
    source TEXT NOT NULL, origin TEXT NOT NULL, kind TEXT NOT NULL, mirror_dir TEXT NOT NULL,
    mirror_file TEXT, offset INTEGER NOT NULL, seen_size INTEGER NOT NULL, identity TEXT,
    head_digest TEXT, tail_digest TEXT, generation INTEGER NOT NULL, stopped_at INTEGER,
    converter TEXT, points INTEGER NOT NULL,
    PRIMARY KEY (source, origin));
"""


_RUN_COLUMNS = [f.name for f in fields(RunRecord)]
_RUN_SELECT = ", ".join(_RUN_COLUMNS)
_DIGEST_COLUMN = _RUN_COLUMNS.index("text_digest")
_TAIL_COLUMNS = [f.name for f in fields(TailRecord)]
_STATUS_COLUMNS = [f.name for f in fields(SourceStatus)]

_ADDED_COLUMNS = {  # since the first release, by table: how a store made then is brought up
    "runs": [
        "artifacts_at REAL NOT NULL DEFAULT 0",
        "trial TEXT",
        "listed INTEGER NOT NULL DEFAULT 0",
    ],
    "source_status": [
        "failed_runs INTEGER NOT NULL DEFAULT 0",
        "all_failed INTEGER NOT NULL DEFAULT 0",
    ],
}
_IN_EXPERIMENT = "r.source = e.source AND substr(r.dir, 1, length(e.dir) + 1) = e.dir || '/'"
_MEDIA_COUNT = (
    "(SELECT count(*) FROM media m JOIN runs r ON m.source = r.source "
    f"AND m.run_id = r.run_id WHERE {_IN_EXPERIMENT} AND m.step IS NOT NULL AND m.kind {{}}) "
)
_TOTALS = (  # Store.totals
    "SELECT e.source, e.dir, "
    "(SELECT count(*) FROM runs r WHERE r.source = e.source "
    "   AND (r.dir = e.dir OR substr(r.dir, 1, length(e.dir) + 1) = e.dir || '/')), "
    "(SELECT coalesce(sum(s.count), 0) FROM series s JOIN runs r "
    f"   ON s.source = r.source AND s.run_id = r.run_id WHERE {_IN_EXPERIMENT}), "
    + _MEDIA_COUNT.format("IN ('image', 'figure')") + ", " + _MEDIA_COUNT.format("= 'table'")
    + "FROM experiments e "
    "UNION ALL SELECT source, ?, count(mirror_file), sum(points), 0, 0 FROM tails "
    "GROUP BY source ORDER BY 1, 2"
)  # fmt: skip

_HOLDINGS_RUNS = (  # Store.holdings
    "SELECT (SELECT count(*) FROM runs) + (SELECT count(*) FROM tails WHERE mirror_file NOT NULL)"
)
_HOLDINGS_SERIES = (
    "SELECT count, count(*) FROM series GROUP BY count UNION ALL "
    "SELECT points, count(*) FROM tails WHERE mirror_file NOT NULL GROUP BY points"
)


class Totals(NamedTuple):
    """What is mirrored of one experiment: runs, metric points, images (image series' steps
    and figures) and tables."""

    source: str
    dir: str
    runs: int
    points: int
    images: int
    tables: int


def lock_path(state_path: Path) -> Path:
    """The lock file that says which process uses the store at `state_path`."""
    return state_path.with_name(state_path.name + ".lock")


class Store:
    """One SQLite database (WAL, synchronous=FULL), used by one process (a lock file says so).

    Thread-safe: every call, and every `transaction()` block as a whole, holds one lock.
    """

    def __init__(self, path: Path, read_only: bool = False) -> None:
        self._mutex = threading.RLock()
        self._lock: PidLock | None = None
        try:
            if read_only:
                self._db = sqlite3.connect(
                    f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
                )
                self._db.execute("SELECT count(*) FROM runs")
                self.path = path
                return
            path.parent.mkdir(parents=True, exist_ok=True)
            self._lock = PidLock(lock_path(path), f"the state store {path}")
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=10000")
            self._db.executescript(_SCHEMA)
            _add_missing_columns(self._db)
            self._db.execute("CREATE INDEX IF NOT EXISTS runs_trial ON runs (trial)")
        except (OSError, sqlite3.Error) as error:
            raise MirrorError(f"cannot open the state store {path}: {error}") from error
        version = self._meta("schema_version")
        if version is None:
            self._set_meta("schema_version", str(SCHEMA_VERSION))
        elif int(version) != SCHEMA_VERSION:
            raise MirrorError(
                f"state store {path} has schema version {version}, expected {SCHEMA_VERSION}"
            )
        self.path = path

    def close(self) -> None:
        with self._mutex:
            self._db.close()
            if self._lock is not None:
                self._lock.release()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """All writes inside commit together or not at all (a failed COMMIT included: SQLite may
        have rolled back already, e.g. on SQLITE_FULL)."""
        with self._mutex:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    with suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                raise

    def _query(self, sql: str, parameters: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        with self._mutex:
            return self._db.execute(sql, parameters).fetchall()

    def _execute(self, sql: str, parameters: Sequence[object] = ()) -> None:
        with self._mutex:
            self._db.execute(sql, parameters)

    # -- meta -------------------------------------------------------------------------------

    def _meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def _set_meta(self, key: str, value: str) -> None:
        self._execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # -- experiments --------------------------------------------------------------------------

    def experiment_dirs(self, source: str) -> dict[str, tuple[str, str]]:
        """experiment id -> (name, relative dir) for one source."""
        rows = self._query(
            "SELECT experiment_id, name, dir FROM experiments WHERE source = ?", (source,)
        )
        return {row[0]: (row[1], row[2]) for row in rows}

    def put_experiment(self, source: str, experiment_id: str, name: str, dir: str) -> None:
        self._execute(
            "INSERT OR REPLACE INTO experiments VALUES (?, ?, ?, ?)",
            (source, experiment_id, name, dir),
        )

    def forget_experiment(self, source: str, experiment_id: str) -> None:
        self._execute(
            "DELETE FROM experiments WHERE source = ? AND experiment_id = ?",
            (source, experiment_id),
        )

    def sources(self) -> set[str]:
        """Every source this store holds anything of."""
        rows = self._query(
            "SELECT source FROM runs UNION SELECT source FROM tails "
            "UNION SELECT source FROM experiments UNION SELECT source FROM source_status"
        )
        return {row[0] for row in rows}

    def forget_source_status(self, source: str) -> None:
        self._execute("DELETE FROM source_status WHERE source = ?", (source,))

    # -- runs ---------------------------------------------------------------------------------

    def runs(self, source: str) -> dict[str, RunRecord]:
        """Every mirrored run of `source`, by run id (read a thousand rows at a time: 100,000
        rows at once would take as much memory again as their records)."""
        records: dict[str, RunRecord] = {}
        with self._mutex:
            rows = self._db.execute(f"SELECT {_RUN_SELECT} FROM runs WHERE source = ?", (source,))
            while batch := rows.fetchmany(1000):
                records.update((run.run_id, run) for run in map(_run_from_row, batch))
        return records

    def trial_taken(self, name: str) -> bool:
        """Whether a run of any source has the HParams session `name` (indexed: not every name
        is held in memory, 100,000 of them in a first sync)."""
        return bool(self._query("SELECT 1 FROM runs WHERE trial = ? LIMIT 1", (name,)))

    def run_dir_taken(self, dir: str) -> bool:
        """Whether a run of any source lives in `dir` (relative; indexed: dirs are unique)."""
        return bool(self._query("SELECT 1 FROM runs WHERE dir = ? LIMIT 1", (dir,)))

    def put_run(self, run: RunRecord) -> None:
        values = [getattr(run, name) for name in _RUN_COLUMNS]
        if run.text_digest is not None:  # 64 bits: more than SQLite's signed INTEGER holds
            values[_DIGEST_COLUMN] = f"{run.text_digest:016x}"
        placeholders = ", ".join("?" for _ in _RUN_COLUMNS)
        self._execute(
            f"INSERT OR REPLACE INTO runs ({_RUN_SELECT}) VALUES ({placeholders})", values
        )

    def forget_run(self, run: RunRecord) -> None:
        """Drop a run, its cursors and its file row (its files are the caller's to remove)."""
        self._execute("DELETE FROM runs WHERE source = ? AND run_id = ?", (run.source, run.run_id))
        self.forget_cursors(run)
        if run.events_path:
            self.forget_file(run.events_path)

    def forget_cursors(self, run: RunRecord) -> None:
        """Forget what of a run's series and media was written."""
        for table in ("series", "media"):
            self._execute(
                f"DELETE FROM {table} WHERE source = ? AND run_id = ?", (run.source, run.run_id)
            )

    def move_tree(self, old_dir: str, new_dir: str) -> None:
        """Re-home every run dir and file path at or below `old_dir` to `new_dir`."""
        prefix = old_dir + "/"
        self._execute(
            "UPDATE runs SET dir = ? || substr(dir, ?) WHERE dir = ? OR substr(dir, 1, ?) = ?",
            (new_dir, len(old_dir) + 1, old_dir, len(prefix), prefix),
        )
        self._execute(
            "UPDATE files SET path = ? || substr(path, ?) WHERE substr(path, 1, ?) = ?",
            (new_dir, len(old_dir) + 1, len(prefix), prefix),
        )
        self._execute(
            "UPDATE tails SET mirror_dir = ? || substr(mirror_dir, ?) "
            "WHERE mirror_dir = ? OR substr(mirror_dir, 1, ?) = ?",
            (new_dir, len(old_dir) + 1, old_dir, len(prefix), prefix),
        )

    def moves(self) -> list[tuple[str, str]]:
        """Directory moves recorded as intended and not yet applied to the tables: (old, new)."""
        return [(row[0], row[1]) for row in self._query("SELECT old_dir, new_dir FROM moves")]

    def put_move(self, old_dir: str, new_dir: str) -> None:
        self._execute("INSERT OR REPLACE INTO moves VALUES (?, ?)", (old_dir, new_dir))

    def forget_move(self, old_dir: str) -> None:
        self._execute("DELETE FROM moves WHERE old_dir = ?", (old_dir,))

    # -- files --------------------------------------------------------------------------------

    def files(self) -> dict[str, int]:
        """Committed length of every mirrored file, by relative path."""
        return {row[0]: row[1] for row in self._query("SELECT path, length FROM files")}

    def file_length(self, path: str) -> int | None:
        rows = self._query("SELECT length FROM files WHERE path = ?", (path,))
        return int(rows[0][0]) if rows else None

    def put_file(self, path: str, length: int) -> None:
        self._execute("INSERT OR REPLACE INTO files VALUES (?, ?)", (path, length))

    def forget_file(self, path: str) -> None:
        self._execute("DELETE FROM files WHERE path = ?", (path,))

    # -- tailed files -------------------------------------------------------------------------

    def tails(self, source: str, origin_prefix: str = "") -> dict[str, TailRecord]:
        """Tailed files of `source` (those whose origin starts with `origin_prefix`), by origin."""
        rows = self._query(
            f"SELECT {', '.join(_TAIL_COLUMNS)} FROM tails "
            "WHERE source = ? AND substr(origin, 1, ?) = ?",
            (source, len(origin_prefix), origin_prefix),
        )
        return {row[1]: TailRecord(*row) for row in rows}

    def put_tail(self, tail: TailRecord) -> None:
        values = [getattr(tail, name) for name in _TAIL_COLUMNS]
        placeholders = ", ".join("?" for _ in _TAIL_COLUMNS)
        self._execute(
            f"INSERT OR REPLACE INTO tails ({', '.join(_TAIL_COLUMNS)}) VALUES ({placeholders})",
            values,
        )

    def forget_tail(self, tail: TailRecord) -> None:
        """Drop a tailed file and its copy's file row (the copy is the caller's to remove)."""
        self._execute(
            "DELETE FROM tails WHERE source = ? AND origin = ?", (tail.source, tail.origin)
        )
        if tail.mirror_path:
            self.forget_file(tail.mirror_path)

    # -- media --------------------------------------------------------------------------------

    def media(self, source: str, run_id: str) -> dict[str, MediaRecord]:
        """The images and tables of one run mirrored so far, by artifact path."""
        rows = self._query(
            "SELECT source, run_id, path, kind, tag, size, step, skipped FROM media "
            "WHERE source = ? AND run_id = ?",
            (source, run_id),
        )
        return {
            row[2]: MediaRecord(*row[:7], skipped=bool(row[7]))  # type: ignore[misc]
            for row in rows
        }

    def put_media(self, records: Sequence[MediaRecord]) -> None:
        with self._mutex:
            self._db.executemany(
                "INSERT OR REPLACE INTO media VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (r.source, r.run_id, r.path, r.kind, r.tag, r.size, r.step, r.skipped)
                    for r in records
                ],
            )

    # -- series -------------------------------------------------------------------------------

    def cursors(self, source: str, run_id: str) -> dict[str, Cursor]:
        rows = self._query(
            "SELECT key, count, last_ts, last_step, last_value, tb_step, seen_ts, seen_step, "
            "seen_value FROM series WHERE source = ? AND run_id = ?",
            (source, run_id),
        )
        return {row[0]: Cursor(row[1], _point(row[2:5]), row[5], _point(row[6:9])) for row in rows}

    def put_cursors(self, source: str, run_id: str, cursors: dict[str, Cursor]) -> None:
        with self._mutex:
            self._db.executemany(
                "INSERT OR REPLACE INTO series VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (source, run_id, key, c.count, *_point_row(c.last), c.tb_step,
                     *_point_row(c.seen))
                    for key, c in cursors.items()
                ],
            )  # fmt: skip

    def holdings(self) -> tuple[int, list[tuple[int, int]]]:
        """(run directories, [(points in a series, how many series)]) of every source, as
        tensorboard_budget counts them (a tailed file: a run of one series of its records)."""
        runs = int(self._query(_HOLDINGS_RUNS)[0][0])
        return runs, [(int(points), int(count)) for points, count in self._query(_HOLDINGS_SERIES)]

    # -- source status and totals ---------------------------------------------------------------

    def source_status(self) -> dict[str, SourceStatus]:
        rows = self._query(f"SELECT {', '.join(_STATUS_COLUMNS)} FROM source_status")
        return {row[0]: replace(SourceStatus(*row), all_failed=bool(row[-1])) for row in rows}

    def put_source_status(self, status: SourceStatus) -> None:
        values = [getattr(status, name) for name in _STATUS_COLUMNS]
        placeholders = ", ".join("?" for _ in _STATUS_COLUMNS)
        self._execute(
            f"INSERT OR REPLACE INTO source_status ({', '.join(_STATUS_COLUMNS)}) "
            f"VALUES ({placeholders})",
            values,
        )

    def totals(self) -> list[Totals]:
        """The totals of every mirrored experiment, and of each source's tailed files (as
        experiment TAILED_FILES: files as runs, their records or lines as points)."""
        rows = self._query(_TOTALS, (TAILED_FILES,))
        return [Totals(row[0], row[1], *(int(value) for value in row[2:])) for row in rows]


def _add_missing_columns(db: sqlite3.Connection) -> None:
    """Bring a store made by an earlier tbmirror up to this schema (columns only added)."""
    for table, columns in _ADDED_COLUMNS.items():
        present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        for column in columns:
            if column.split()[0] not in present:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column}")


def _run_from_row(row: tuple[object, ...]) -> RunRecord:
    """A run record, held compactly (100,000 records are held in memory): the values many
    records share (source, experiment, status) as one string each; its id interned, as listings
    intern theirs (sources/mlflow/client.py), so a pass's sets of ids hold no copies of it; its
    HParams session's name, mostly its own name, the same string then; a time never set as the
    one 0.0; its text digest as an int (rows written before it was cut to 64 bits hold the whole
    SHA-256 in hex: its first 64 bits are the same)."""
    run = RunRecord(*row)  # type: ignore[arg-type]
    run.source, run.status = sys.intern(run.source), sys.intern(run.status)
    run.experiment_id, run.run_id = sys.intern(run.experiment_id), sys.intern(run.run_id)
    if run.trial == run.name:
        run.trial = run.name
    run.reconciled_at, run.artifacts_at = run.reconciled_at or 0.0, run.artifacts_at or 0.0
    if run.text_digest is not None:
        run.text_digest = int(str(run.text_digest)[:16], 16)
    run.hparams_written = bool(run.hparams_written)
    run.end_written = bool(run.end_written)
    return run


def _point(row: tuple[object, ...]) -> MetricPoint | None:
    timestamp, step, bits = row
    if timestamp is None:
        return None
    assert isinstance(timestamp, int) and isinstance(step, int) and isinstance(bits, bytes)
    return MetricPoint(timestamp, step, value_from_bits(bits))


def _point_row(point: MetricPoint | None) -> tuple[int | None, int | None, bytes | None]:
    if point is None:
        return (None, None, None)
    return (point.timestamp, point.step, value_bits(point.value))
