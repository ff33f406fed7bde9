"""Long series: `tbmirror sync`'s peak memory and time for one run of millions of points in a key.

Builds (once per --workdir) an MLflow sqlite store with one run whose key `loss` holds --points
points: the experiment, the run and its last point through MLflow's own store API, the other points
inserted in bulk into the store's `metrics` table (the store API logs ~7,000 points/s; 5 million
would take 13 minutes). Serves it with `mlflow server --workers 1` and measures `tbmirror sync`
(peak RSS from wait4, wall time) on every path a long series takes:

  1. first sync: get-history-bulk (capped at 25,000 points: the run is cut short), then paged
     get-history from the start, written a page a batch;
  2. a late point inserted before the cursor, and 10 new ones: the whole-key diff, page by page;
  3. 10 new points through a proxy that refuses the first offset page token (HTTP 400), as
     servers with opaque tokens do (Azure ML, Databricks): the series read from its start, page
     by page, to its boundary;

against a baseline measured in the same run: a Python process that only imports tbmirror's engine.

Usage: python benchmarks/long_series.py [--points 5000000] [--workdir DIR]
Target: peak RSS <= 250 MB in every step.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import Results, write_config

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from helpers.hostile_proxy import hostile_proxy  # noqa: E402
from tbmirror.local_mlflow import LocalMlflowServer  # noqa: E402

EXPERIMENT = "long-series"
KEY = "loss"
T0 = 1_700_000_000_000
INSERT_BATCH = 100_000


def build(store: Path, points: int) -> str:
    """The store with one run of `points` points of KEY (built once); returns the run id."""
    from mlflow.entities import Metric
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    marker = store / "run_id"
    if marker.exists():
        return marker.read_text()
    store.mkdir(parents=True, exist_ok=True)
    database = store / "mlflow.db"
    api = SqlAlchemyStore(f"sqlite:///{database}", str(store / "artifacts"))
    experiment_id = api.create_experiment(EXPERIMENT)
    run = api.create_run(experiment_id, "bench", T0, [], "long")
    run_id = run.info.run_id
    last = points - 1
    api.log_batch(run_id, metrics=[Metric(KEY, last / 3, T0 + last, last)], params=[], tags=[])
    api.engine.dispose()
    with sqlite3.connect(database) as connection:
        for start in range(0, last, INSERT_BATCH):
            rows = [
                (KEY, s / 3, T0 + s, run_id, s, 0)
                for s in range(start, min(start + INSERT_BATCH, last))
            ]
            connection.executemany(
                "INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
        # MLflow's schema has no index for get-history's ORDER BY timestamp, step, value: each
        # OFFSET page sorts the whole series (11 s a page at 1M points). This covering index
        # spares the server that, not the client: a 5M-point history is served in minutes.
        connection.execute(
            "CREATE INDEX IF NOT EXISTS bench_history ON metrics "
            "(run_uuid, key, timestamp, step, value, is_nan)"
        )
    marker.write_text(run_id)
    return run_id


def log_more(server: LocalMlflowServer, run_id: str, steps: range, late: bool = False) -> None:
    """New points after the last (and, if `late`, one with an older timestamp than all)."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(server.url)
    metrics = [Metric(KEY, s / 3, T0 + s, s) for s in steps]
    if late:  # (a value of its own: the same point again would be dropped by the server)
        metrics.append(Metric(KEY, -float(steps.start), T0 - 10, steps.start))
    client.log_batch(run_id, metrics=metrics)


def peak_of(command: list[str]) -> tuple[float, float, str]:
    """(peak RSS in MB, wall seconds, stdout) of a command run to completion, measured by
    /usr/bin/time (the peak of a child forked from this big process would count ours too)."""
    started = time.monotonic()
    result = subprocess.run(
        ["/usr/bin/time", "-f", "peak-kb %M", *command], capture_output=True, text=True
    )
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"{command} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    peak_kb = int(result.stderr.rsplit("peak-kb ", 1)[1].split()[0])
    return peak_kb / 1024, seconds, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=5_000_000)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    with Results("long_series") as results:
        results.workload = f"one run, one key of {args.points:,} points"
        measure(args, results)


def measure(args: argparse.Namespace, results: Results) -> None:
    """Run the benchmark; print and record its figures."""
    work = args.workdir or Path(tempfile.mkdtemp(prefix="tbmirror-long-"))
    store = work / f"store-{args.points}"
    started = time.monotonic()
    run_id = build(store, args.points)
    print(f"store: {args.points:,} points of one key ({time.monotonic() - started:.0f} s)")

    base, _, _ = peak_of(
        [sys.executable, "-c", "import tbmirror.app, tbmirror.engine.mlflow.engine"]
    )
    print(f"baseline: Python importing tbmirror's engine, peak {base:.0f} MB")
    results.add("baseline: Python importing the engine, peak RSS", base, "MB")
    server = LocalMlflowServer(store).start()
    try:
        with hostile_proxy(server.url) as proxy:
            sync = [sys.executable, "-m", "tbmirror", "sync", "--config"]
            mirror = work / "mirror"
            shutil.rmtree(mirror, ignore_errors=True)
            mirror.mkdir(parents=True)
            opaque = write_config(mirror, proxy.url, EXPERIMENT).rename(mirror / "opaque.yaml")
            direct = write_config(mirror, server.url, EXPERIMENT)  # the same root and state
            steps = [("first sync (bulk, then paged get-history)", direct, None)]
            steps.append(("late point: the whole-key diff", direct, "late"))
            steps.append(("opaque page tokens: read from the start", opaque, "opaque"))
            with sqlite3.connect(store / "mlflow.db") as connection:  # points of earlier runs
                total = connection.execute("SELECT MAX(step) + 1 FROM metrics").fetchone()[0]
            for title, config, change in steps:
                if change is not None:
                    log_more(server, run_id, range(total, total + 10), late=change == "late")
                    total += 10 + (change == "late")
                if change == "opaque":
                    proxy.set(
                        "status", path=r"/metrics/get-history\?.*page_token", code=400, times=1
                    )
                peak, seconds, output = peak_of([*sync, str(config)])
                summary = output.strip().splitlines()[-1] if output.strip() else ""
                results.add(f"{title}: peak RSS", peak, "MB", "<= 250 MB", peak <= 250)
                results.add(f"{title}: time", seconds, "s")
                print(
                    f"{title}: peak RSS {peak:.0f} MB ({peak / base:.1f}x baseline; target "
                    f"<= 250 MB), {seconds:.1f} s; {summary}"
                )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
