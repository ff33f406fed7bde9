"""The state store opens stores written by an earlier tbmirror (columns added since)."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

from tbmirror.engine.mlflow.encoding import text_digest
from tbmirror.journal import Store

# The runs table as tbmirror 0.1 (issues 2, 3 and 5) created it.
OLD_RUNS = """
CREATE TABLE runs (
    source TEXT NOT NULL, run_id TEXT NOT NULL, experiment_id TEXT NOT NULL,
    parent_run_id TEXT, dir TEXT NOT NULL UNIQUE, name TEXT NOT NULL, status TEXT NOT NULL,
    events_file TEXT, text_digest TEXT, text_step INTEGER NOT NULL DEFAULT -1,
    hparams_written INTEGER NOT NULL DEFAULT 0, end_written INTEGER NOT NULL DEFAULT 0,
    reconciled_at REAL NOT NULL DEFAULT 0, PRIMARY KEY (source, run_id));
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('schema_version', '1');
INSERT INTO runs (source, run_id, experiment_id, dir, name, status, reconciled_at)
    VALUES ('team', 'abc', '1', 'team/exp/run', 'run', 'FINISHED', 12.5);
"""


def test_a_store_from_an_earlier_version_opens_with_its_runs(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as db:
        db.executescript(OLD_RUNS)
    state = Store(path)
    try:
        [run] = state.runs("team").values()
        assert (run.dir, run.status, run.reconciled_at, run.artifacts_at) == (
            "team/exp/run", "FINISHED", 12.5, 0.0,
        )  # fmt: skip
        run.artifacts_at = 99.0
        state.put_run(run)
        assert state.runs("team")["abc"].artifacts_at == 99.0
        assert state.tails("team") == {}
    finally:
        state.close()


def test_a_text_digest_from_an_earlier_version_still_matches_its_text(tmp_path: Path) -> None:
    """Digests were the whole SHA-256 in hex, now its first 64 bits: an old row's text is not
    written again, and a digest past SQLite's signed 64-bit range round-trips."""
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as db:
        db.executescript(OLD_RUNS)
        old = hashlib.sha256(b"# a run's text").hexdigest()
        db.execute("UPDATE runs SET text_digest = ?", (old,))
    state = Store(path)
    try:
        [run] = state.runs("team").values()
        assert run.text_digest == text_digest("# a run's text") != text_digest("# changed")
        run.text_digest = 2**64 - 1
        state.put_run(run)
        assert state.runs("team")["abc"].text_digest == 2**64 - 1
    finally:
        state.close()
