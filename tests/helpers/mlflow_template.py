"""An empty, already migrated MLflow tracking store to start the tests' servers from.

A fresh `mlflow server` spends a large part of its start migrating an empty sqlite store (every
alembic revision: 13 s on a loaded 2-core host, against 0.3 s to open a migrated one). The first
server of a test session that migrates a store of its own leaves a copy of it here; every later
server of the session (on any xdist worker) starts from a copy, its Default experiment's artifact
location pointed at its own artifact root. The server itself is the real one; `tbmirror demo`
(test_demo.py) and test_local_mlflow.py still start servers on an empty directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

TEMPLATE_NAME = "mlflow-template.db"
STORE_NAME = "mlflow.db"  # tbmirror.local_mlflow.LocalMlflowServer's sqlite store


class Template:
    """The template of one test session, in `directory` (shared by the session's workers)."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / TEMPLATE_NAME

    def seed(self, server_directory: Path) -> bool:
        """Copy the template into a server's directory that has no store yet; True if copied."""
        store = server_directory / STORE_NAME
        if store.exists() or not self.path.exists():
            return False
        server_directory.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.path, store)
        with closing(sqlite3.connect(store)) as database, database:
            database.execute(
                "UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                (str(server_directory / "artifacts" / "0"),),
            )
        return True

    @contextlib.contextmanager
    def making(self) -> Iterator[None]:
        """Held (an flock shared by the workers) while a server migrates the store that becomes
        the template: the session's first servers, one per worker, wait for it and start from
        the copy instead of migrating side by side."""
        with open(self.path.with_name(f"{TEMPLATE_NAME}.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def keep(self, server_directory: Path) -> None:
        """Save the store a server has just migrated (nothing logged to it yet) as the template,
        unless there is one already; written whole, then renamed into place."""
        if self.path.exists():
            return
        partial = self.path.with_name(f"{TEMPLATE_NAME}.{os.getpid()}")
        with (
            closing(sqlite3.connect(server_directory / STORE_NAME)) as store,
            closing(sqlite3.connect(partial)) as copy,
        ):
            store.backup(copy)
        os.replace(partial, self.path)
