"""Backfill benchmark: a full `tbmirror sync` against a naive exporter, measured in the same run.

Builds a workload on a local MLflow server (default 1,000 runs x 20 keys x 100 points), then times
  - naive: MlflowClient.get_metric_history per key + tensorboardX add_scalar per point, one run
    after another (what azureml-tensorboard's export_to_tensorboard does);
  - fetch-only, the limit: the requests sync makes for a backfill (runs/search pages of 1,000,
    then get-history-bulk per key for 100 runs a call, 4 in flight on kept-alive connections,
    every answer parsed as JSON), nothing written;
  - tbmirror: `tbmirror sync` (a subprocess, cold start included) into an empty mirror;
  - a second `tbmirror sync` with nothing new (requests, seconds, bytes written);
  - the tfevents write path alone (encode + frame + append + fsync) against tensorboardX's
    add_scalar for the same points.

Usage: python benchmarks/backfill.py [--runs 1000 --keys 20 --points 100] [--workers 1]
           [--workdir DIR]
`--workers` is the `mlflow server`'s (with several, each kept-alive request costs more there).
A workdir keeps the workload's MLflow database between invocations (built once; an
interrupted build is completed by the next invocation).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from tensorboardX import SummaryWriter

from common import write_config
from tbmirror.journal import Journal
from tbmirror.local_mlflow import LocalMlflowServer
from tbmirror.mirror import events, summaries
from tbmirror.mirror.layout import MirrorLayout

EXPERIMENT = "backfill-benchmark"
API = "/api/2.0/mlflow"


def build_workload(client: MlflowClient, runs: int, keys: int, points: int) -> str:
    """Create (or complete, if an earlier build was interrupted) the workload; returns its id."""
    shape = f"{runs}x{keys}x{points}"
    existing = client.get_experiment_by_name(EXPERIMENT)
    if existing and existing.tags.get("shape", shape) != shape:
        raise SystemExit(f"{EXPERIMENT} exists with another shape: use a fresh --workdir")
    experiment_id = existing.experiment_id if existing else client.create_experiment(EXPERIMENT)
    client.set_experiment_tag(experiment_id, "shape", shape)
    complete = {
        run.info.run_name
        for run in client.search_runs(
            [experiment_id], "attributes.status = 'FINISHED'", max_results=50_000
        )
    }
    t0 = int(time.time() * 1000) - 86_400_000

    def one_run(index: int) -> None:
        rng = random.Random(index)
        run_id = client.create_run(experiment_id, run_name=f"run{index:05d}").info.run_id
        metrics = [
            Metric(f"metric_{k:02d}", rng.random(), t0 + 1000 * step, step)
            for k in range(keys)
            for step in range(points)
        ]
        for start in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[start : start + 1000])
        client.set_terminated(run_id)

    for run in client.search_runs(
        [experiment_id], "attributes.status = 'RUNNING'", max_results=50_000
    ):
        client.delete_run(run.info.run_id)  # interrupted mid-way: incomplete
    missing = [i for i in range(runs) if f"run{i:05d}" not in complete]
    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one_run, missing))
    if missing:
        print(f"workload: {len(missing)} runs built in {time.monotonic() - started:.0f} s")
    return str(experiment_id)


def naive_export(client: MlflowClient, experiment_id: str, logdir: Path) -> int:
    points = 0
    for run in client.search_runs([experiment_id], max_results=50_000):
        writer = SummaryWriter(str(logdir / run.info.run_name))
        for key in run.data.metrics:
            for metric in client.get_metric_history(run.info.run_id, key):
                writer.add_scalar(key, metric.value, metric.step, walltime=metric.timestamp / 1000)
                points += 1
        writer.close()
    return points


def fetch_only(url: str, experiment_id: str, concurrency: int = 4) -> tuple[float, int, int]:
    """(seconds, points, requests) of fetching every history the way a backfill sync does,
    without writing anything: the lower bound for `tbmirror sync`."""
    started = time.monotonic()
    limits = httpx.Limits(max_connections=concurrency + 1)
    with httpx.Client(base_url=url, timeout=120, limits=limits) as http:
        keys_by_run: dict[str, list[str]] = {}
        token, requests = None, 0
        while True:
            body = {"experiment_ids": [experiment_id], "max_results": 1000,
                    "run_view_type": "ALL", "order_by": ["attributes.start_time ASC"]}  # fmt: skip
            page = http.post(
                f"{API}/runs/search", json=body | ({"page_token": token} if token else {})
            )
            answer, requests = page.json(), requests + 1
            for run in answer.get("runs", []):
                metrics = run["data"].get("metrics", [])
                keys_by_run[run["info"]["run_id"]] = [m["key"] for m in metrics]
            token = answer.get("next_page_token")
            if not token:
                break
        runs_by_key: dict[str, list[str]] = defaultdict(list)
        for run_id, keys in keys_by_run.items():
            for key in keys:
                runs_by_key[key].append(run_id)
        calls = [
            (key, run_ids[start : start + 100])
            for key, run_ids in runs_by_key.items()
            for start in range(0, len(run_ids), 100)
        ]

        def bulk(call: tuple[str, list[str]]) -> int:
            key, run_ids = call
            params = {"run_id": sorted(run_ids), "metric_key": key, "max_results": 25_000}
            answer = http.get("/ajax-api/2.0/mlflow/metrics/get-history-bulk", params=params)
            return len(answer.json().get("metrics", []))

        with ThreadPoolExecutor(concurrency) as pool:
            points = sum(pool.map(bulk, calls))
    return time.monotonic() - started, points, requests + len(calls)


def tbmirror_sync(config: Path) -> tuple[float, str]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "tbmirror", "sync", "--config", str(config), "--log-level", "error"],
        capture_output=True,
        text=True,
        check=True,
    )
    return time.monotonic() - started, result.stdout.strip()


def write_path(points: int, directory: Path) -> tuple[float, float]:
    """Points/s of tbmirror's write path and of tensorboardX add_scalar, same points."""
    values = [(1.7e9 + i, i, i * 0.5) for i in range(points)]
    started = time.perf_counter()
    journal = Journal.open(MirrorLayout(directory / "mirror"), directory / "state.db")
    journal.own("bench")
    with journal.batch("bench") as batch:
        name = batch.create("bench", events.frame_all([summaries.file_version(1.7e9)]))
    for key in range(20):
        encoder = summaries.ScalarEncoder(f"metric_{key:02d}")
        chunk = values[key * points // 20 : (key + 1) * points // 20]
        with journal.batch("bench") as batch:
            batch.append(f"bench/{name}", events.frame_all(
                [encoder.encode(w, s, v) for w, s, v in chunk]))  # fmt: skip
    ours = points / (time.perf_counter() - started)
    journal.close()
    started = time.perf_counter()
    writer = SummaryWriter(str(directory / "tensorboardx"))
    for index, (wall_time, step, value) in enumerate(values):
        writer.add_scalar(f"metric_{index * 20 // points:02d}", value, step, walltime=wall_time)
    writer.close()
    return ours, points / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--keys", type=int, default=20)
    parser.add_argument("--points", type=int, default=100)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--write-points", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=1, help="the mlflow server's workers")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tbmirror-bench-"))
    output = workdir / "output"
    shutil.rmtree(output, ignore_errors=True)
    output.mkdir(parents=True)

    with LocalMlflowServer(
        workdir / "mlflow", extra_args=["--workers", str(args.workers)]
    ) as server:
        client = MlflowClient(server.url)
        experiment_id = build_workload(client, args.runs, args.keys, args.points)
        total = args.runs * args.keys * args.points

        started = time.monotonic()
        naive_points = naive_export(client, experiment_id, output / "naive")
        naive_seconds = time.monotonic() - started
        assert naive_points == total, (naive_points, total)

        fetch_seconds, fetch_points, fetch_requests = fetch_only(server.url, experiment_id)
        assert fetch_points == total, (fetch_points, total)
        config = write_config(output, server.url, EXPERIMENT)
        full_seconds, full_summary = tbmirror_sync(config)
        assert f", {total} points, " in full_summary, full_summary
        idle_seconds, idle_summary = tbmirror_sync(config)

    ours, baseline = write_path(args.write_points, output)
    requests = re.search(r"(\d+) requests", idle_summary)
    written = re.search(r"(\d+) bytes", idle_summary)
    shape = f"{args.runs} runs x {args.keys} keys x {args.points} points"
    print(f"workload: {shape} = {total:,} points")
    print(f"naive exporter:        {naive_seconds:8.1f} s  ({total / naive_seconds:,.0f} points/s)")
    print(f"tbmirror sync (full):  {full_seconds:8.1f} s  ({total / full_seconds:,.0f} points/s)")
    print(f"speed-up:              {naive_seconds / full_seconds:8.1f} x")
    full_requests = re.search(r"(\d+) requests", full_summary)
    print(
        f"fetch-only (limit):    {fetch_seconds:8.1f} s  ({total / fetch_seconds:,.0f} points/s,"
        f" {fetch_requests} requests; sync made {full_requests.group(1) if full_requests else '?'})"
    )
    print(f"sync / fetch-only:     {full_seconds / fetch_seconds:8.2f} x  (target <= 1.15)")
    print(
        f"no-change sync:        {idle_seconds:8.2f} s, "
        f"{requests.group(1) if requests else '?'} requests, "
        f"{written.group(1) if written else '?'} bytes written"
    )
    print(
        f"write path:            {ours:,.0f} points/s vs tensorboardX add_scalar "
        f"{baseline:,.0f} points/s ({ours / baseline:.1f} x)"
    )


if __name__ == "__main__":
    main()
