"""Backfill benchmark: a first `tbmirror sync` against the server's limit and a naive exporter.

Builds (once per --workdir, straight into the server's sqlite store with common.build_runs; an
interrupted build is completed by the next invocation) an experiment of --runs FINISHED runs x
--keys keys x --points points (steps 0..points-1, a second apart; default 1,000 x 20 x 100), then,
against `mlflow server --workers N`, times
  - naive: MlflowClient.get_metric_history per key + tensorboardX add_scalar per point, one run
    after another (what azureml-tensorboard's export_to_tensorboard does);
  - the fetch-only client of issue 29 ("runs/search, then get-history-bulk by key for 100 runs
    at a time in 4 threads, nothing written"), which is the limit without listings: the requests
    a first `tbmirror sync` makes for the metrics and nothing else (the experiment by name; its
    runs/search pages of 1,000; experiments/search and the search for child runs in the other
    experiments; per 100 runs listed, get-history-bulk per key, sent as the listing arrives, and
    get-history for each run a bulk answer cut short), 4 in flight on kept-alive connections,
    every answer parsed as JSON, nothing written;
  - the limit with listings: the same, and each run's artifact listing (of its root) sent with
    its 100 runs' bulk calls on the same 4 connections (through the endpoint sync uses: with
    --serve-artifacts, `mlflow-artifacts/artifacts`, else `artifacts/list`): the listings
    overlap the fetches as well as a client can (sync lists finished runs' artifacts after
    their metrics: its backlog);
  - `tbmirror sync` (a subprocess, cold start included) into an empty mirror with its defaults
    (artifact listings on), and with the source option `artifacts: {enabled: false}`. Three
    ratios: (a) sync / the limit without listings: issue 29's target (<= 1.15x: the listings
    and writes overlap the fetches); (b) sync without listings / the limit without listings
    (the writes alone); (c) sync / the limit with listings (the listings done as well as a
    client can);
  - the server's CPU seconds for the runs' listings alone, beside those of the limit without
    listings: when the 1-worker server is the bottleneck, no client lists and fetches in less
    than (limit's server CPU + the listings') / limit's server CPU of the limit's time: the
    floor printed beside (a);
  - a second `tbmirror sync` with nothing new (requests, seconds, bytes written);
  - the CPU time of each side (the client's, and the server's processes') beside each figure;
  - the tfevents write path alone (encode + frame + append + fsync) against tensorboardX's
    add_scalar for the same points.

All but the naive exporter and the write path run in --rounds rounds (default 3), each sync into
an empty mirror of its own; each ratio is the median of the rounds' ratios (a single 30 s
measurement varies by ~10 % here even when idle, as much as the margin judged), and the other
figures are the rounds' medians.

Usage: python benchmarks/backfill.py [--runs 1000 --keys 20 --points 100] [--workers 1]
           [--workdir DIR] [--write-points 1000000] [--serve-artifacts] [--rounds 3]
`--workers` is the `mlflow server`'s (with several, each kept-alive request costs more there).
`--serve-artifacts` starts it as MLflow does by default: runs' artifact roots in its own store
(`mlflow-artifacts:/...`), which sync lists without the server reading the run; without it, a
plain local root, listed with `artifacts/list` (the server reads the run for each listing).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from mlflow.tracking import MlflowClient
from tensorboardX import SummaryWriter

from common import (
    Results,
    Synced,
    build_runs,
    cpu_seconds,
    open_store,
    run_sync,
    tree,
    write_config,
)
from tbmirror.journal import Journal
from tbmirror.local_mlflow import SERVED_ROOT, LocalMlflowServer
from tbmirror.mirror import events, summaries
from tbmirror.mirror.layout import MirrorLayout

EXPERIMENT = "backfill-benchmark"
API = "/api/2.0/mlflow"
BULK = "/ajax-api/2.0/mlflow/metrics/get-history-bulk"
CHILD = "tags.`mlflow.parentRunId` IS NOT NULL"  # runs/search: child runs
CHUNK = 100  # runs sync fetches together and a bulk call asks for; experiments a search asks for
MAX_POINTS = 25_000  # points a get-history(-bulk) answer holds at most
SERVED_ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts"  # the server's own store's listing
TARGET = 1.15


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


class Fetcher:
    """Requests through `http` (kept-alive connections), each answer checked and parsed as JSON,
    counted by endpoint. Thread-safe."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http
        self.requests: Counter[str] = Counter()  # by endpoint ("runs/search", ...)
        self._lock = threading.Lock()

    def call(self, method: str, path: str, query: dict[str, Any]) -> dict[str, Any]:
        """One request: `query` as the JSON body of a POST, the parameters of a GET."""
        place = "json" if method == "POST" else "params"
        answer = self.http.request(method, path, **{place: query})
        answer.raise_for_status()
        with self._lock:
            self.requests[path.split("/mlflow/", 1)[-1].removeprefix(SERVED_ARTIFACTS)
                          or "mlflow-artifacts"] += 1  # fmt: skip
        body: dict[str, Any] = answer.json()
        return body

    def pages(self, method: str, path: str, query: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Every page of a paged endpoint, each asked with the page token of the one before."""
        token = None
        while True:
            page = self.call(method, path, query | ({"page_token": token} if token else {}))
            yield page
            token = page.get("next_page_token")
            if not token:
                return

    def bulk(self, key: str, run_ids: list[str]) -> tuple[int, list[tuple[str, str]]]:
        """get-history-bulk: (the points of the runs whose series it holds whole, the series of
        the others: the answer is capped, and the last run in it may be cut short)."""
        query = {"run_id": sorted(run_ids), "metric_key": key, "max_results": MAX_POINTS}
        points = self.call("GET", BULK, query).get("metrics", [])
        if len(points) < MAX_POINTS:
            return len(points), []
        cut = points[-1]["run_id"]
        complete = sum(point["run_id"] < cut for point in points)
        return complete, [(run_id, key) for run_id in sorted(run_ids) if run_id >= cut]

    def history(self, series: tuple[str, str]) -> int:
        """get-history, page by page: the series' points."""
        query = {"run_id": series[0], "metric_key": series[1], "max_results": MAX_POINTS}
        pages = self.pages("GET", f"{API}/metrics/get-history", query)
        return sum(len(page.get("metrics", [])) for page in pages)

    def listing(self, run: dict[str, Any]) -> int:
        """The files and folders at the root of the run's artifacts: from the server's own store
        if the run's root is there, else with artifacts/list."""
        uri = run["info"]["artifact_uri"]
        if uri.startswith(SERVED_ROOT):
            query = {"path": uri.removeprefix(SERVED_ROOT)}
            pages = self.pages("GET", SERVED_ARTIFACTS, query)
        else:
            pages = self.pages("GET", f"{API}/artifacts/list", {"run_id": run["info"]["run_id"]})
        return sum(len(page.get("files", [])) for page in pages)


def chunks(pages: Iterator[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """The runs of runs/search pages, CHUNK at a time, as the pages arrive."""
    chunk: list[dict[str, Any]] = []
    for page in pages:
        for run in page.get("runs", []):
            chunk.append(run)
            if len(chunk) == CHUNK:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


def bulk_calls(chunk: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """(key, the runs of `chunk` that have it): one get-history-bulk call each."""
    by_key: dict[str, list[str]] = {}
    for run in chunk:
        for metric in run["data"].get("metrics", []):
            by_key.setdefault(metric["key"], []).append(run["info"]["run_id"])
    return sorted(by_key.items())


@dataclass
class Fetched:
    seconds: float
    cpu_seconds: float
    points: int
    requests: Counter[str]  # by endpoint

    def line(self, server_cpu: float) -> str:
        """Its figures, with the server's CPU seconds meanwhile."""
        shown = ", ".join(f"{endpoint} {n:,}" for endpoint, n in sorted(self.requests.items()))
        return (f"{self.seconds:8.1f} s  ({sum(self.requests.values()):,} requests: {shown}; "
                f"CPU {self.cpu_seconds:.1f} s, the server's {server_cpu:.1f} s)")  # fmt: skip


def fetch_only(url: str, experiment: str, listings: bool, concurrency: int = 4) -> Fetched:
    """The requests a first `tbmirror sync` of `experiment` makes (sources/mlflow/ with the
    default options; engine/mlflow/engine.py), with `listings` each run's artifact listing too,
    the listing in one thread, the histories (and artifact listings) of each 100 runs listed
    fetched meanwhile, `concurrency` in flight; nothing written: the limit for `tbmirror sync`.

    The workload's runs are finished, have points, no children and no artifacts (one listing
    each, of the run's root), and the server has fewer than 100 experiments. get-history pages
    are asked by the server's token where sync asks each from the last point it read: the same
    count, up to one a series of more than 25,000 points."""
    started, cpu_started = time.monotonic(), time.process_time()
    limits = httpx.Limits(max_connections=concurrency + 1)
    with (
        httpx.Client(base_url=url, timeout=120, limits=limits) as http,
        ThreadPoolExecutor(concurrency) as pool,
    ):
        fetcher = Fetcher(http)
        found = fetcher.call("GET", f"{API}/experiments/get-by-name",
                             {"experiment_name": experiment})  # fmt: skip
        experiment_id = found["experiment"]["experiment_id"]
        search = {"run_view_type": "ALL", "max_results": 1000,
                  "order_by": ["attributes.start_time ASC"]}  # fmt: skip
        query = search | {"experiment_ids": [experiment_id], "filter": ""}
        bulks, listed = [], []
        for chunk in chunks(fetcher.pages("POST", f"{API}/runs/search", query)):
            bulks += [pool.submit(fetcher.bulk, key, ids) for key, ids in bulk_calls(chunk)]
            if listings:
                listed += [pool.submit(fetcher.listing, run) for run in chunk]
        every = fetcher.pages("POST", f"{API}/experiments/search",
                              {"max_results": 1000, "view_type": "ACTIVE_ONLY"})  # fmt: skip
        others = sorted(e["experiment_id"] for page in every for e in page.get("experiments", []))
        others.remove(experiment_id)
        for start in range(0, len(others), CHUNK):
            query = search | {"experiment_ids": others[start : start + CHUNK], "filter": CHILD}
            for page in fetcher.pages("POST", f"{API}/runs/search", query):
                assert not page.get("runs"), "the workload has no child runs"
        answers = [future.result() for future in bulks]
        leftovers = [series for _, rest in answers for series in rest]
        points = sum(count for count, _ in answers) + sum(pool.map(fetcher.history, leftovers))
        assert sum(future.result() for future in listed) == 0, "the workload has no artifacts"
    cpu = time.process_time() - cpu_started
    return Fetched(time.monotonic() - started, cpu, points, fetcher.requests)


def listings_alone(url: str, experiment: str, concurrency: int = 4) -> Fetched:
    """Each run's artifact listing (of its root), `concurrency` in flight, after the one
    runs/search page that finds the runs: what the listings cost the server alone."""
    started, cpu_started = time.monotonic(), time.process_time()
    limits = httpx.Limits(max_connections=concurrency + 1)
    with (
        httpx.Client(base_url=url, timeout=120, limits=limits) as http,
        ThreadPoolExecutor(concurrency) as pool,
    ):
        fetcher = Fetcher(http)
        found = fetcher.call("GET", f"{API}/experiments/get-by-name",
                             {"experiment_name": experiment})  # fmt: skip
        query = {"experiment_ids": [found["experiment"]["experiment_id"]], "max_results": 50_000}
        runs = fetcher.call("POST", f"{API}/runs/search", query).get("runs", [])
        files = sum(pool.map(fetcher.listing, runs))
        assert files == 0, "the workload has no artifacts"
    return Fetched(time.monotonic() - started, time.process_time() - cpu_started, 0,
                   fetcher.requests)  # fmt: skip


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


def server_cpu(server: LocalMlflowServer) -> float:
    """CPU seconds (user + system) the server's processes have used so far."""
    assert server.process is not None
    return cpu_seconds(tree(server.process.pid))


def verdict(ratio: float) -> str:
    return f"{ratio:8.2f} x  (target <= {TARGET}: {'met' if ratio <= TARGET else 'missed'})"


def summary(synced: Synced, server_cpu: float) -> str:
    """A sync's figures, with the server's CPU seconds meanwhile."""
    report = synced.report
    return (f"{synced.seconds:8.1f} s  (pass {report['seconds']:.1f} s, "
            f"{report['requests']:,} requests, {report['points']:,} points, "
            f"peak RSS {synced.peak_mb:.0f} MB, CPU {synced.cpu_seconds:.1f} s, "
            f"the server's {server_cpu:.1f} s{synced.complained()})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--keys", type=int, default=20)
    parser.add_argument("--points", type=int, default=100, help="points per key and run")
    parser.add_argument("--workdir", type=Path, help="keeps the workload between invocations")
    parser.add_argument("--write-points", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=1, help="the mlflow server's workers")
    parser.add_argument(
        "--serve-artifacts",
        action="store_true",
        help="runs' artifact roots in the server's own store (MLflow's default)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the paired figures")
    args = parser.parse_args()
    if min(args.runs, args.keys, args.points, args.write_points, args.workers, args.rounds) < 1:
        parser.error(
            "--runs, --keys, --points, --write-points, --workers and --rounds must be at least 1"
        )
    with Results("backfill") as results:
        measure(args, results)


@dataclass
class Round:
    """One round's figures: each side's, and the server's CPU seconds during each."""

    limit: Fetched  # the limit with listings
    full: Synced  # sync, listings on
    bare_limit: Fetched  # the limit without listings
    bare: Synced  # sync, artifacts disabled
    alone: Fetched  # the listings alone
    server: dict[str, float]  # by the names above

    @property
    def ratios(self) -> dict[str, float]:
        return {"a": self.full.seconds / self.bare_limit.seconds,
                "b": self.bare.seconds / self.bare_limit.seconds,
                "c": self.full.seconds / self.limit.seconds}  # fmt: skip

    @property
    def floor(self) -> float:
        """The server-bound floor of (a) (module docstring)."""
        return (self.server["bare_limit"] + self.server["alone"]) / self.server["bare_limit"]


def one_round(server: LocalMlflowServer, output: Path) -> Round:
    """The paired figures once, each sync into an empty mirror under `output`."""
    shutil.rmtree(output, ignore_errors=True)
    for name in ("full", "bare"):
        (output / name).mkdir(parents=True)
    full_config = write_config(output / "full", server.url, EXPERIMENT)
    bare_config = write_config(
        output / "bare", server.url, EXPERIMENT, source={"artifacts": {"enabled": False}}
    )
    server_seconds: dict[str, float] = {}
    measured: dict[str, Any] = {}
    sides = {"limit": lambda: fetch_only(server.url, EXPERIMENT, listings=True),
             "full": lambda: run_sync(full_config),
             "bare_limit": lambda: fetch_only(server.url, EXPERIMENT, listings=False),
             "bare": lambda: run_sync(bare_config),
             "alone": lambda: listings_alone(server.url, EXPERIMENT)}  # fmt: skip
    for name, side in sides.items():
        before = server_cpu(server)
        measured[name] = side()
        server_seconds[name] = server_cpu(server) - before
    return Round(**measured, server=server_seconds)


def median_by(rounds: list[Round], figure: Callable[[Round], float]) -> float:
    return statistics.median(figure(r) for r in rounds)


def measure(args: argparse.Namespace, results: Results) -> None:
    """Run the benchmark; print and record its figures."""
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tbmirror-bench-"))
    output = workdir / "output"
    shutil.rmtree(output, ignore_errors=True)
    (output / "naive").mkdir(parents=True)

    server = LocalMlflowServer(
        workdir / ("mlflow-served" if args.serve_artifacts else "mlflow"),
        extra_args=["--workers", str(args.workers)],
        serve_artifacts=args.serve_artifacts,
    )
    store = open_store(server)
    keys = [f"metric_{k:02d}" for k in range(args.keys)]
    experiment_id = build_runs(store, EXPERIMENT, args.runs, keys, args.points)
    store.engine.dispose()
    total = args.runs * args.keys * args.points
    rounds: list[Round] = []
    with server:
        started = time.monotonic()
        naive_points = naive_export(MlflowClient(server.url), experiment_id, output / "naive")
        naive_seconds = time.monotonic() - started
        for number in range(args.rounds):
            rounds.append(one_round(server, output / f"round-{number}"))
            print(f"round {number + 1} of {args.rounds}: " + ", ".join(
                f"({k}) {v:.2f} x" for k, v in rounds[-1].ratios.items()), flush=True)  # fmt: skip
        idle = run_sync(output / f"round-{args.rounds - 1}" / "full" / "tbmirror.yaml")
    for name, points in [("naive", naive_points)] + [
        (side, count) for r in rounds for side, count in (("limit", r.limit.points),
        ("limit without listings", r.bare_limit.points), ("sync", r.full.report["points"]),
        ("sync without listings", r.bare.report["points"]))]:  # fmt: skip
        if points != total:
            sys.exit(f"{name}: {points:,} points, expected {total:,}")
    # The round whose (a) is the median stands for the others in the lines printed below.
    middle = sorted(rounds, key=lambda r: r.ratios["a"])[len(rounds) // 2]
    limit, full, bare_limit, bare, alone = (middle.limit, middle.full, middle.bare_limit,
                                            middle.bare, middle.alone)  # fmt: skip
    server_limit, server_full, server_bare_limit, server_bare, server_alone = (
        middle.server[name] for name in ("limit", "full", "bare_limit", "bare", "alone")
    )
    ours, baseline = write_path(args.write_points, output)
    results.workload = (
        f"{args.runs:,} runs x {args.keys} keys x {args.points} points = {total:,} points; "
        f"mlflow server --workers {args.workers}, artifact roots "
        + ("in its own store (mlflow-artifacts:/, listed without a run read)"
           if args.serve_artifacts else "plain local paths (listed with artifacts/list)")
    )  # fmt: skip

    print(f"workload: {results.workload}; {args.rounds} rounds (the lines below: the round "
          "whose (a) is the median; the ratios: the medians of the rounds')")  # fmt: skip
    print(f"naive exporter:              {naive_seconds:8.1f} s  "
          f"({total / naive_seconds:,.0f} points/s)")  # fmt: skip
    print(f"tbmirror sync:               {summary(full, server_full)}")
    print(f"  speed-up over naive:       {naive_seconds / full.seconds:8.1f} x")
    print(f"sync, artifacts disabled:    {summary(bare, server_bare)}")
    print(f"limit without listings:      {bare_limit.line(server_bare_limit)}")
    print(f"limit with listings:         {limit.line(server_limit)}")
    print(f"listings alone:              {alone.line(server_alone)}")
    floor = median_by(rounds, lambda r: r.floor)
    ratios = {k: statistics.median(r.ratios[k] for r in rounds) for k in ("a", "b", "c")}
    # The limit without listings makes a subset of the requests of the one with them: when it
    # takes longer (the rounds' medians), the machine's noise outweighs what is measured and no
    # ratio is a verdict.
    consistent = median_by(rounds, lambda r: r.bare_limit.seconds) <= median_by(
        rounds, lambda r: r.limit.seconds
    )
    if not consistent:
        print("NOT A VERDICT: the limit without listings took longer than the one with them "
              "(a busy machine); run again on an idle one")  # fmt: skip
    print(f"  (a) sync / limit without listings:     {verdict(ratios['a'])}"
          f"  (server-bound floor {floor:.2f} x)")  # fmt: skip
    print(f"  (b) sync without listings / the same:  {ratios['b']:8.2f} x")
    print(f"  (c) sync / limit with listings:        {ratios['c']:8.2f} x")
    print(f"no-change sync:              {idle.seconds:8.2f} s  ({idle.report['requests']:,} "
          f"requests, {idle.report['bytes_written']:,} bytes written"
          f"{idle.complained()})")  # fmt: skip
    print(f"write path:                  {ours:,.0f} points/s vs tensorboardX add_scalar "
          f"{baseline:,.0f} points/s ({ours / baseline:.1f} x)")  # fmt: skip
    results.add("naive exporter", naive_seconds, "s")
    results.add("rounds", args.rounds)
    results.add("limit without artifact listings (issue 29's fetch-only client), median",
                median_by(rounds, lambda r: r.bare_limit.seconds), "s")  # fmt: skip
    results.add("limit with artifact listings, median",
                median_by(rounds, lambda r: r.limit.seconds), "s")  # fmt: skip
    results.add("tbmirror sync, median", median_by(rounds, lambda r: r.full.seconds), "s")
    results.add("tbmirror sync, artifacts disabled, median",
                median_by(rounds, lambda r: r.bare.seconds), "s")  # fmt: skip
    results.add("the limits consistent (without listings no slower than with)",
                "yes" if consistent else "no")  # fmt: skip
    results.add("tbmirror sync / limit without listings (issue 29 target 2)", ratios["a"], "x",
                f"<= {TARGET}", ratios["a"] <= TARGET if consistent else None)  # fmt: skip
    results.add("tbmirror sync, artifacts disabled / limit without listings", ratios["b"], "x")
    results.add("tbmirror sync / limit with listings", ratios["c"], "x")
    results.add("server CPU, limit without listings, median",
                median_by(rounds, lambda r: r.server["bare_limit"]), "s")  # fmt: skip
    results.add("server CPU, the artifact listings alone, median",
                median_by(rounds, lambda r: r.server["alone"]), "s")  # fmt: skip
    results.add("server-bound floor of (a)", floor, "x")
    results.add("tbmirror sync, peak RSS", full.peak_mb, "MB")
    results.add("tbmirror sync, CPU", full.cpu_seconds, "s")
    results.add("no-change sync", idle.seconds, "s")
    results.add("no-change sync, bytes written", idle.report["bytes_written"], "bytes")
    results.add("write path, ours", ours, "points/s")
    results.add("write path, tensorboardX add_scalar", baseline, "points/s")


if __name__ == "__main__":
    main()
