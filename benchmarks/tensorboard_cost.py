"""TensorBoard cost: what a TensorBoard costs on 10,000 mirrored runs vs a 500-run window.

Builds (once per --workdir; an interrupted build is completed by the next invocation) into a
local `mlflow server`'s sqlite store, through SqlAlchemyStore and its own table models (about
2 minutes for the default), one experiment of --runs FINISHED runs x --keys keys x --points
points (start times a second apart, so "most recent" is well defined: run{N-1} is the newest).
Then, each `tbmirror sync` a subprocess (cold start included) into an empty mirror root:
  1. mirrors it twice: every run (the baseline, no selection) and the source option
     `max_runs: --window`, and reports each sync's time;
  2. on each root in turn, starts TensorBoard as tbmirror's daemon does (`--load_fast true
     --reload_interval 5 --samples_per_plugin scalars=100000,images=1000,text=100`) and measures:
     - the time from start until `/data/runs` lists every run directory of the root and
       `/data/plugin/scalars/tags` shows every key of every run (then waits until the tree idles);
     - the median time (of --repeat) of GET /data/runs, GET /data/plugin/scalars/tags and of one
       series GET /data/plugin/scalars/scalars (the newest run, key_0), and as the floor of any
       request, GET /data/environment (a new connection each: TensorBoard closes them);
     - the RSS of its process tree (Python + the Rust data server child), from /proc;
     - freshness: one new point of key_0 logged to the newest run through the REST API
       (MlflowClient.log_metric), then `tbmirror sync` (its time), then the delay until the point
       shows in /data/plugin/scalars/scalars (polled every 0.1 s);
  3. prints both side by side with the ratio (all runs / window).

Usage: python benchmarks/tensorboard_cost.py [--runs 10000 --keys 5 --points 100] [--window 500]
           [--repeat 10] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from mlflow.entities import ViewType
from mlflow.entities.experiment_tag import ExperimentTag
from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric, SqlRun, SqlTag
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from mlflow.tracking import MlflowClient
from mlflow.utils.uri import append_to_uri_path
from sqlalchemy import insert

from common import tree_rss_mb, wait_until_idle, write_config
from tbmirror.local_mlflow import LocalMlflowServer
from tbmirror.processes import free_port, stop_process_group

EXPERIMENT = "tensorboard-cost"
BATCH = 500  # runs built per bulk insert
SCALARS, TAGS, RUNS = "/data/plugin/scalars/scalars", "/data/plugin/scalars/tags", "/data/runs"


# --- workload --------------------------------------------------------------------------------


def build(store: SqlAlchemyStore, runs: int, keys: int, points: int) -> None:
    """FINISHED runs run00000.. (start times 1 s apart, a day old); a run left unfinished is
    deleted and built again.

    The runs, their mlflow.runName tags and their points go straight into the store's tables
    (its own models: the rows create_run, log_batch and set_terminated write), BATCH runs per
    transaction: the store API call per run (about 70 ms here) would take 12 minutes for
    10,000 runs."""
    shape = f"{runs}x{keys}x{points}"
    found = store.get_experiment_by_name(EXPERIMENT)
    if found is not None and found.tags.get("shape", shape) != shape:
        raise SystemExit(f"{EXPERIMENT} exists with another shape: use a fresh --workdir")
    experiment_id = found.experiment_id if found else store.create_experiment(EXPERIMENT)
    store.set_experiment_tag(experiment_id, ExperimentTag("shape", shape))
    location = store.get_experiment(experiment_id).artifact_location
    listed = store.search_runs([experiment_id], "", ViewType.ACTIVE_ONLY, max_results=50_000)
    done = {run.info.run_name for run in listed if run.info.status == "FINISHED"}
    for run in listed:
        if run.info.status != "FINISHED":
            store.delete_run(run.info.run_id)
    t0 = int(time.time() * 1000) - 86_400_000
    missing = [index for index in range(runs) if f"run{index:05d}" not in done]
    started = time.monotonic()
    for first in range(0, len(missing), BATCH):
        created = [(index, t0 + 1000 * index, uuid.uuid4().hex)
                   for index in missing[first : first + BATCH]]  # fmt: skip
        run_rows = [
            {"run_uuid": run_id, "name": f"run{index:05d}", "source_type": "UNKNOWN",
             "source_name": "", "entry_point_name": "", "user_id": "bench",
             "status": "FINISHED", "start_time": start, "end_time": start + points,
             "deleted_time": None, "source_version": "", "lifecycle_stage": "active",
             "artifact_uri": append_to_uri_path(location, run_id, "artifacts"),
             "experiment_id": int(experiment_id)}
            for index, start, run_id in created
        ]  # fmt: skip
        tags = [{"key": "mlflow.runName", "value": f"run{index:05d}", "run_uuid": run_id}
                for index, _, run_id in created]  # fmt: skip
        rows = [
            {"key": f"key_{k}", "value": (index + k + step) % 97 / 97, "timestamp": start + step,
             "step": step, "is_nan": False, "run_uuid": run_id}
            for index, start, run_id in created
            for k in range(keys)
            for step in range(points)
        ]  # fmt: skip
        latest = [row for row in rows if row["step"] == points - 1]
        with store.ManagedSessionMaker() as session:
            session.execute(insert(SqlRun.__table__), run_rows)
            session.execute(insert(SqlTag.__table__), tags)
            session.execute(insert(SqlMetric.__table__), rows)
            session.execute(insert(SqlLatestMetric.__table__), latest)
        print(f"  built {first + len(created):,}/{len(missing):,} runs, "
              f"{time.monotonic() - started:.0f} s", flush=True)  # fmt: skip
    if missing:
        print(f"built {len(missing):,} runs x {keys} keys x {points} points in "
              f"{time.monotonic() - started:.0f} s", flush=True)  # fmt: skip


# --- syncs -----------------------------------------------------------------------------------


def sync(config: Path) -> tuple[float, dict[str, Any]]:
    """`tbmirror sync` as a subprocess: its wall time and its source_synced event."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "tbmirror", "sync", "--config", str(config)],
        capture_output=True,
        text=True,
    )
    seconds = time.monotonic() - started
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    report = next((e for e in events if e.get("event") == "source_synced"), None)
    if result.returncode != 0 or report is None:
        raise SystemExit(f"tbmirror sync failed ({result.returncode}):\n{result.stdout}\n"
                         f"{result.stderr[-3000:]}")  # fmt: skip
    return seconds, report


def run_dirs(root: Path) -> set[str]:
    """The directories (relative, POSIX) holding event files: TensorBoard's runs."""
    return {
        path.parent.relative_to(root).as_posix() or "."
        for path in root.rglob("*tfevents*")
        if path.is_file()
    }


# --- TensorBoard -----------------------------------------------------------------------------


def median_ms(client: httpx.Client, path: str, repeat: int, **params: str) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        client.get(path, params=params).raise_for_status()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


@dataclass
class Cost:
    runs: int  # listed by /data/runs
    loaded_s: float  # start until every run and key is listed
    idle_s: float  # start until the tree idles
    floor_ms: float  # /data/environment
    runs_ms: float
    tags_ms: float
    series_ms: float
    rss: float  # MB, the tree
    python_rss: float
    server_rss: float
    sync_s: float  # the sync that took the new point
    visible_s: float  # then until TensorBoard showed it


def loaded(client: httpx.Client, expected: set[str], keys: int) -> bool:
    try:
        if not expected <= set(client.get(RUNS).json()):
            return False
        tags = client.get(TAGS).json()
    except (httpx.HTTPError, ValueError):
        return False
    with_keys = {run for run, found in tags.items() if len(found) >= keys}
    return expected <= with_keys


def measure(
    root: Path, config: Path, tracking_uri: str, run_path: str, keys: int, repeat: int,
    log_path: Path, timeout: float,
) -> Cost:  # fmt: skip
    """TensorBoard on `root` as the daemon starts it; the new point goes to `run_path`."""
    expected = run_dirs(root)
    port = free_port()
    command = [
        sys.executable, "-m", "tensorboard.main", "--logdir", str(root),
        "--host", "127.0.0.1", "--port", str(port), "--reload_interval", "5",
        "--samples_per_plugin", "scalars=100000,images=1000,text=100", "--load_fast", "true",
    ]  # fmt: skip
    started = time.monotonic()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            while not loaded(client, expected, keys):
                if process.poll() is not None:
                    raise SystemExit(f"TensorBoard exited ({process.returncode}); see {log_path}")
                if time.monotonic() - started > timeout:
                    raise SystemExit(f"TensorBoard did not load within {timeout:.0f} s")
                time.sleep(0.5)
            loaded_s = time.monotonic() - started
            wait_until_idle(process.pid, started + timeout)
            idle_s = time.monotonic() - started
            sizes = tree_rss_mb(process.pid)
            listed = len(client.get(RUNS).json())
            floor_ms = median_ms(client, "/data/environment", repeat)
            runs_ms = median_ms(client, RUNS, repeat)
            tags_ms = median_ms(client, TAGS, repeat)
            series_ms = median_ms(client, SCALARS, repeat, run=run_path, tag="key_0")

            # freshness: a new point through the REST API, a sync, then TensorBoard's reload
            mlflow = MlflowClient(tracking_uri)
            run_id = mlflow.search_runs(
                [mlflow.get_experiment_by_name(EXPERIMENT).experiment_id],
                order_by=["attributes.start_time DESC"], max_results=1,
            )[0].info.run_id  # fmt: skip
            step = max(m.step for m in mlflow.get_metric_history(run_id, "key_0")) + 1
            mlflow.log_metric(run_id, "key_0", 42.0, step=step)
            sync_s, _ = sync(config)
            synced = time.monotonic()
            while True:
                answer = client.get(SCALARS, params={"run": run_path, "tag": "key_0"}).json()
                if any(point[1] == step for point in answer):
                    break
                if time.monotonic() - synced > timeout:
                    raise SystemExit(f"step {step} not visible within {timeout:.0f} s")
                time.sleep(0.1)
            visible_s = time.monotonic() - synced
    finally:
        stop_process_group(process)
    python = sizes[process.pid]
    total = sum(sizes.values())
    return Cost(listed, loaded_s, idle_s, floor_ms, runs_ms, tags_ms, series_ms, total, python,
                total - python, sync_s, visible_s)  # fmt: skip


# --- main ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--keys", type=int, default=5)
    parser.add_argument("--points", type=int, default=100, help="points per key and run")
    parser.add_argument("--window", type=int, default=500, help="max_runs of the second mirror")
    parser.add_argument("--repeat", type=int, default=10, help="requests per median")
    parser.add_argument("--timeout", type=float, default=1800, help="per TensorBoard wait, s")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    if min(args.runs, args.keys, args.points, args.window, args.repeat) < 1:
        parser.error("--runs, --keys, --points, --window and --repeat must be at least 1")
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # the store's "Creating tables..."
    work = args.workdir or Path(tempfile.mkdtemp(prefix="tbmirror-tbcost-"))
    output = work / "output"
    shutil.rmtree(output, ignore_errors=True)
    output.mkdir(parents=True)

    server = LocalMlflowServer(work / "mlflow")
    server.directory.mkdir(parents=True, exist_ok=True)
    store = SqlAlchemyStore(
        f"sqlite:///{server.directory / 'mlflow.db'}", str(server.directory / "artifacts")
    )
    build(store, args.runs, args.keys, args.points)
    store.engine.dispose()

    newest = f"run{args.runs - 1:05d}"
    results: dict[str, tuple[float, dict[str, Any], Cost]] = {}
    with server:
        for label, source in (("all", {}), ("window", {"max_runs": args.window})):
            (output / label).mkdir()
            config = write_config(output / label, server.url, EXPERIMENT, source=source)
            seconds, report = sync(config)
            print(f"sync {label}: {seconds:.1f} s (pass {report['seconds']:.1f} s), "
                  f"{report['runs_written']:,} runs written, {report['points']:,} points, "
                  f"{report['requests']:,} requests, {report['bytes_written']:,} bytes",
                  flush=True)  # fmt: skip
            root = output / label / "logs"
            run_path = next(p for p in sorted(run_dirs(root)) if p.endswith(newest))
            cost = measure(root, config, server.url, run_path, args.keys, args.repeat,
                           output / f"tensorboard-{label}.log", args.timeout)  # fmt: skip
            print(f"TensorBoard {label}: {cost}", flush=True)
            results[label] = (seconds, report, cost)

    all_sync, all_report, big = results["all"]
    win_sync, win_report, small = results["window"]
    rows = [
        ("runs mirrored (/data/runs)", big.runs, small.runs, "{:,}"),
        ("first sync, s", all_sync, win_sync, "{:.1f}"),
        ("first sync bytes written, MB", all_report["bytes_written"] / 1e6,
         win_report["bytes_written"] / 1e6, "{:.1f}"),
        ("TensorBoard: all runs loaded, s", big.loaded_s, small.loaded_s, "{:.1f}"),
        ("TensorBoard: idle after, s", big.idle_s, small.idle_s, "{:.1f}"),
        ("GET /data/environment, ms (floor)", big.floor_ms, small.floor_ms, "{:.1f}"),
        ("GET /data/runs, ms (median)", big.runs_ms, small.runs_ms, "{:.1f}"),
        ("GET scalars/tags, ms (median)", big.tags_ms, small.tags_ms, "{:.1f}"),
        ("GET scalars/scalars 1 series, ms", big.series_ms, small.series_ms, "{:.1f}"),
        ("RSS of the tree, MB", big.rss, small.rss, "{:.0f}"),
        ("  Python, MB", big.python_rss, small.python_rss, "{:.0f}"),
        ("  data server, MB", big.server_rss, small.server_rss, "{:.0f}"),
        ("new point: sync, s", big.sync_s, small.sync_s, "{:.1f}"),
        ("new point: then visible after, s", big.visible_s, small.visible_s, "{:.1f}"),
        ("new point: total, s", big.sync_s + big.visible_s, small.sync_s + small.visible_s,
         "{:.1f}"),
    ]  # fmt: skip
    print()
    print(f"workload: {args.runs:,} FINISHED runs x {args.keys} keys x {args.points} points; "
          f"window: max_runs {args.window:,}")  # fmt: skip
    print(f"{'metric':<36} {f'{args.runs:,} runs':>12} {f'{args.window:,} runs':>12} {'ratio':>8}")
    for name, a, b, form in rows:
        ratio = f"{a / b:.2f}" if b else "-"
        print(f"{name:<36} {form.format(a):>12} {form.format(b):>12} {ratio:>8}")


if __name__ == "__main__":
    main()
