"""TensorBoard cost: what a TensorBoard costs on 10,000 mirrored runs vs a 500-run window.

Builds (once per --workdir; an interrupted build is completed by the next invocation) into a
local `mlflow server`'s sqlite store, with MLflow's own table models (common.build_runs, about
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
import re
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from mlflow.tracking import MlflowClient

from common import (
    Results,
    Synced,
    build_runs,
    open_store,
    run_sync,
    start_tensorboard,
    tree_rss_mb,
    wait_until_idle,
    write_config,
)
from tbmirror.local_mlflow import LocalMlflowServer
from tbmirror.processes import free_port, stop_process_group

EXPERIMENT = "tensorboard-cost"
SCALARS, TAGS, RUNS = "/data/plugin/scalars/scalars", "/data/plugin/scalars/tags", "/data/runs"


# --- mirrors ---------------------------------------------------------------------------------


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
    started = time.monotonic()
    process = start_tensorboard(root, port, log_path)
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
            sync_s = run_sync(config).seconds
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
    with Results("tensorboard_cost") as results:
        compare(args, results)


def compare(args: argparse.Namespace, results: Results) -> None:
    """Run the benchmark; print and record its figures."""
    work = args.workdir or Path(tempfile.mkdtemp(prefix="tbmirror-tbcost-"))
    output = work / "output"
    shutil.rmtree(output, ignore_errors=True)
    output.mkdir(parents=True)

    server = LocalMlflowServer(work / "mlflow")
    store = open_store(server)
    build_runs(store, EXPERIMENT, args.runs, [f"key_{k}" for k in range(args.keys)], args.points)
    store.engine.dispose()

    newest = f"run{args.runs - 1:05d}"
    measured: dict[str, tuple[Synced, Cost]] = {}
    with server:
        for label, source in (("all", {}), ("window", {"max_runs": args.window})):
            (output / label).mkdir()
            config = write_config(output / label, server.url, EXPERIMENT, source=source)
            synced = run_sync(config)
            report = synced.report
            print(f"sync {label}: {synced.seconds:.1f} s (pass {report['seconds']:.1f} s), "
                  f"{report['runs_written']:,} runs written, {report['points']:,} points, "
                  f"{report['requests']:,} requests, {report['bytes_written']:,} bytes",
                  flush=True)  # fmt: skip
            root = output / label / "logs"
            run_path = next(p for p in sorted(run_dirs(root)) if p.endswith(newest))
            cost = measure(root, config, server.url, run_path, args.keys, args.repeat,
                           output / f"tensorboard-{label}.log", args.timeout)  # fmt: skip
            print(f"TensorBoard {label}: {cost}", flush=True)
            measured[label] = (synced, cost)

    (all_sync, big), (win_sync, small) = measured["all"], measured["window"]
    rows = [
        ("runs mirrored (/data/runs)", big.runs, small.runs, "{:,}"),
        ("first sync, s", all_sync.seconds, win_sync.seconds, "{:.1f}"),
        ("first sync bytes written, MB", all_sync.report["bytes_written"] / 1e6,
         win_sync.report["bytes_written"] / 1e6, "{:.1f}"),
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
    results.workload = (
        f"{args.runs:,} finished runs x {args.keys} keys x {args.points} points; the window: "
        f"max_runs {args.window:,}"
    )
    for name, a, b, form in rows:
        ratio = f"{a / b:.2f}" if b else "-"
        print(f"{name:<36} {form.format(a):>12} {form.format(b):>12} {ratio:>8}")
        labelled = re.fullmatch(r"(.*), (s|ms|MB)(?: \((.*)\))?", name.strip())
        what, unit = (name.strip(), "") if labelled is None else labelled.group(1, 2)
        if labelled and labelled.group(3):
            what += f" ({labelled.group(3)})"
        if name.startswith("  "):  # a part of the row above
            what = f"RSS of the tree, {what}"
        results.add(f"{what}: all {args.runs:,} runs", a, unit)
        results.add(f"{what}: window of {args.window:,}", b, unit)


if __name__ == "__main__":
    main()
