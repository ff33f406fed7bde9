"""Scale-out: N runs served by one tbmirror instance (one TensorBoard) against the same runs split
over 4 instances (4 daemons, 4 TensorBoards, each over its own experiments), then one of the 4
killed with SIGKILL while the others keep syncing.

Builds (once per --workdir, common.build_runs) 4 experiments scaleout-0..3 of N/4 FINISHED runs x
--keys keys x --points points each, plus one RUNNING run "live" per experiment, in a local
`mlflow server` (one worker, shared by every instance, as a team's tracking server is). Then:
  1. one: `tbmirror run` with one source over `scaleout-*` (poll 1 s, TensorBoard reload 1 s);
     its first-sync time is from start until its TensorBoard lists every run with every key;
     then, once its process tree idles, the median GET /data/plugin/scalars/tags (of --repeat)
     and the RSS of the tree (daemon, TensorBoard, its data server); stopped;
  2. four: the same with 4 daemons started together, instance i over `scaleout-i` only, each
     with its own root, state and TensorBoard: per instance the same three figures;
  3. kill: while points are logged to each live run (a round over the 4 every second, or as
     fast as the shared server answers), instance 0 is SIGKILLed (its TensorBoard dies with it),
     restarted 10 s later on the same config; the others' lag (how long the oldest point logged
     but not yet shown by their TensorBoard has waited, sampled every 0.5 s) before and during
     the outage, instance 0's time from restart until caught up, and the points of every
     live run in TensorBoard and in the events files against those logged (exactly once).
Prints each figure of one against four as a ratio; writes benchmarks/results/scaleout-<date>.json.

Usage: python benchmarks/scaleout.py [--runs 10000 --keys 5 --points 100] [--repeat 10]
           [--workdir DIR]
"""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from common import Results, build_runs, open_store, start_daemon, tree_rss_mb, wait_until_idle
from tbmirror.local_mlflow import LocalMlflowServer
from tbmirror.mirror.summaries import iter_scalars
from tbmirror.processes import free_port, stop_process_group

SHARDS = 4
TAGS = "/data/plugin/scalars/tags"
SCALARS = "/data/plugin/scalars/scalars"


@dataclass
class Instance:
    """One `tbmirror run` over some experiments, with its own root, state and TensorBoard."""

    name: str
    work: Path
    experiments: list[str]
    tensorboard_port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.tensorboard_port}"

    def config(self, tracking_uri: str) -> Path:
        self.work.mkdir(parents=True, exist_ok=True)
        document = {
            "mirror": {"root": str(self.work / "logs"), "state": str(self.work / "state.db")},
            "sources": [{"name": self.name, "type": "mlflow", "tracking_uri": tracking_uri,
                         "experiments": self.experiments, "poll_interval": "1s"}],
            "tensorboard": {"port": self.tensorboard_port, "reload_interval": 1},
            "health": {"port": free_port()},
        }  # fmt: skip
        path = self.work / "tbmirror.yaml"
        path.write_text(yaml.safe_dump(document))
        return path

    def start(self, tracking_uri: str) -> None:
        log = self.work / f"daemon-{time.monotonic_ns()}.log"
        self.process = start_daemon(self.config(tracking_uri), log)

    def kill(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)  # TensorBoard dies with it (PDEATHSIG)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None:
            stop_process_group(self.process, grace=15)


@dataclass
class Served:
    """What one instance's TensorBoard costs once it shows everything."""

    runs: int
    first_sync_s: float
    tags_ms: float
    rss_mb: float
    mirror_mb: float  # the events files under its root
    state_mb: float  # its state store (with its WAL)


def loaded_runs(client: httpx.Client, keys: int) -> int:
    """Runs whose every key TensorBoard lists (0 while it does not answer)."""
    try:
        tags = client.get(TAGS).json()
    except (httpx.HTTPError, ValueError):
        return 0
    return sum(1 for found in tags.values() if len(found) >= keys)


def serve(instances: list[Instance], server: LocalMlflowServer, per_instance: int, keys: int,
          repeat: int, timeout: float) -> list[Served]:  # fmt: skip
    """Start `instances` together; each one's first-sync time, then (all idle) its figures."""
    started = time.monotonic()
    for instance in instances:
        instance.start(server.url)
    clients = [httpx.Client(base_url=i.url, timeout=120) for i in instances]
    first_sync: dict[int, float] = {}
    while len(first_sync) < len(instances):
        for index, client in enumerate(clients):
            process = instances[index].process
            if process is not None and process.poll() is not None:
                raise SystemExit(f"{instances[index].name} exited; see {instances[index].work}")
            if index not in first_sync and loaded_runs(client, keys) >= per_instance:
                first_sync[index] = time.monotonic() - started
                print(f"  {instances[index].name}: all {per_instance:,} runs shown after "
                      f"{first_sync[index]:.1f} s", flush=True)  # fmt: skip
        if time.monotonic() - started > timeout:
            raise SystemExit(f"not every TensorBoard showed its runs within {timeout:.0f} s")
        time.sleep(1)
    served = []
    for index, (instance, client) in enumerate(zip(instances, clients, strict=True)):
        assert instance.process is not None
        wait_until_idle(instance.process.pid, time.monotonic() + 120)
        times = []
        for _ in range(repeat):
            begun = time.perf_counter()
            client.get(TAGS).raise_for_status()
            times.append((time.perf_counter() - begun) * 1000)
        rss = sum(tree_rss_mb(instance.process.pid).values())
        mirror = megabytes((instance.work / "logs").rglob("*"))
        state = megabytes(instance.work.glob("state.db*"))
        served.append(Served(loaded_runs(client, keys), first_sync[index],
                             statistics.median(times), rss, mirror, state))  # fmt: skip
        client.close()
    return served


def megabytes(paths: Iterable[Path]) -> float:
    return sum(p.stat().st_size for p in paths if p.is_file()) / 1e6


def newest_step(client: httpx.Client, run: str) -> int:
    """The newest step of the live run's series TensorBoard shows (-1: none, or no answer)."""
    try:
        answer = client.get(SCALARS, params={"run": run, "tag": "live"})
        return int(max(point[1] for point in answer.json())) if answer.status_code == 200 else -1
    except (httpx.HTTPError, ValueError):
        return -1


def kill_one(instances: list[Instance], server: LocalMlflowServer, live: dict[str, str],
             seconds: float) -> dict[str, Any]:  # fmt: skip
    """Phase 3 (see the module docstring); `live`: experiment -> live run id."""
    client = MlflowClient(server.url)
    # steps go on from what an earlier invocation on the same --workdir logged
    logged = {e: len(client.get_metric_history(run_id, "live")) for e, run_id in live.items()}
    logged_at: dict[str, list[float]] = {e: [0.0] * n for e, n in logged.items()}  # per step
    stop = threading.Event()

    def log_points() -> None:
        while not stop.wait(1.0):
            for experiment, run_id in live.items():
                step = logged[experiment]
                now = time.time()
                client.log_batch(run_id, metrics=[Metric("live", float(step), int(now * 1000),
                                                         step)])  # fmt: skip
                logged_at[experiment].append(time.monotonic())
                logged[experiment] = step + 1

    def lag(board: httpx.Client, run: str, experiment: str) -> float:
        """How long the oldest point logged but not yet shown has waited (0: all shown)."""
        waiting = logged_at[experiment][newest_step(board, run) + 1 :]
        return time.monotonic() - waiting[0] if waiting else 0.0

    boards = [httpx.Client(base_url=i.url, timeout=10) for i in instances]
    runs = [f"{i.name}/{i.experiments[0]}/live" for i in instances]
    lags: dict[str, list[float]] = {"before": [], "during": []}
    logger = threading.Thread(target=log_points)
    logger.start()
    phase, began = "before", time.monotonic()
    restarted_at = caught_up = None
    try:
        while time.monotonic() - began < seconds:
            elapsed = time.monotonic() - began
            if phase == "before" and elapsed > seconds / 4:
                instances[0].kill()
                phase = "during"
            elif phase == "during" and elapsed > seconds / 4 + 10:
                instances[0].start(server.url)
                restarted_at, phase = time.monotonic(), "after"
            for board, run, instance in zip(boards[1:], runs[1:], instances[1:], strict=True):
                if phase in lags:
                    lags[phase].append(lag(board, run, instance.experiments[0]))
            if phase == "after" and caught_up is None:
                target = logged[instances[0].experiments[0]] - 2
                if newest_step(boards[0], runs[0]) >= target:
                    caught_up = time.monotonic() - (restarted_at or 0)
            time.sleep(0.5)
    finally:
        stop.set()
        logger.join()
    deadline = time.monotonic() + 120
    shown = {}
    for board, run, instance in zip(boards, runs, instances, strict=True):
        expected = logged[instance.experiments[0]]
        while newest_step(board, run) < expected - 1 and time.monotonic() < deadline:
            time.sleep(0.5)
        if instance is instances[0] and caught_up is None and restarted_at is not None:
            caught_up = time.monotonic() - restarted_at  # (within 0.5 s)
        shown[instance.name] = len(board.get(SCALARS, params={"run": run, "tag": "live"}).json())
        board.close()
    on_disk = {
        i.name: sum(1 for _ in iter_scalars(i.work / "logs" / i.name / i.experiments[0] / "live",
                                            "live"))
        for i in instances
    }  # fmt: skip
    return {
        "logged": {i.name: logged[i.experiments[0]] for i in instances},
        "shown": shown,
        "on_disk": on_disk,
        "others_max_lag_before_s": round(max(lags["before"], default=0.0), 1),
        "others_max_lag_during_s": round(max(lags["during"], default=0.0), 1),
        "others_median_lag_before_s": round(statistics.median(lags["before"] or [0.0]), 1),
        "others_median_lag_during_s": round(statistics.median(lags["during"] or [0.0]), 1),
        "restart_to_caught_up_s": round(caught_up, 1) if caught_up is not None else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10_000, help="in all, split over 4")
    parser.add_argument("--keys", type=int, default=5)
    parser.add_argument("--points", type=int, default=100, help="points per key and run")
    parser.add_argument("--repeat", type=int, default=10, help="tags requests per median")
    parser.add_argument("--kill-seconds", type=float, default=40, help="phase 3's length")
    parser.add_argument("--timeout", type=float, default=3600, help="per first sync, s")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    if args.runs < SHARDS or min(args.keys, args.points, args.repeat) < 1:
        parser.error(f"--runs must be at least {SHARDS}; --keys, --points, --repeat at least 1")
    if args.kill_seconds < 20:
        parser.error("--kill-seconds must be at least 20 (a 10 s outage inside it)")
    with Results("scaleout") as results:
        measure(args, results)


def measure(args: argparse.Namespace, results: Results) -> None:
    """Run the three phases; print and record their figures."""
    work = args.workdir or Path(tempfile.mkdtemp(prefix="tbmirror-scaleout-"))
    per = args.runs // SHARDS
    experiments = [f"scaleout-{i}" for i in range(SHARDS)]

    server = LocalMlflowServer(work / "mlflow")
    store = open_store(server)
    for experiment in experiments:
        build_runs(store, experiment, per, [f"key_{k}" for k in range(args.keys)], args.points)
    store.engine.dispose()

    with server:
        client = MlflowClient(server.url)
        live = {}
        for experiment in experiments:
            experiment_id = client.get_experiment_by_name(experiment).experiment_id
            found = client.search_runs([experiment_id], "attributes.run_name = 'live'")
            run = found[0] if found else client.create_run(experiment_id, run_name="live")
            live[experiment] = run.info.run_id
        output = work / "output"
        shutil.rmtree(output, ignore_errors=True)

        print(f"one instance over {SHARDS * per:,} runs", flush=True)
        one = Instance("all", output / "one", ["scaleout-*"], free_port())
        try:
            (single,) = serve([one], server, SHARDS * per, args.keys, args.repeat, args.timeout)
        finally:
            one.stop()
        print(f"  {single}", flush=True)

        print(f"{SHARDS} instances over {per:,} runs each", flush=True)
        shards = [Instance(f"shard-{i}", output / f"shard-{i}", [experiments[i]], free_port())
                  for i in range(SHARDS)]  # fmt: skip
        try:
            split = serve(shards, server, per, args.keys, args.repeat, args.timeout)
            for served in split:
                print(f"  {served}", flush=True)
            print(f"SIGKILL of shard-0 for 10 s while points are logged ({args.kill_seconds:.0f} "
                  "s)", flush=True)  # fmt: skip
            killed = kill_one(shards, server, live, args.kill_seconds)
        finally:
            for shard in shards:
                shard.stop()

    slowest = max(s.first_sync_s for s in split)
    mean = {f: statistics.mean(getattr(s, f) for s in split) for f in ("tags_ms", "rss_mb")}
    ratios = {
        "tags_ms one / shard mean": single.tags_ms / mean["tags_ms"],
        "rss_mb one / shard mean": single.rss_mb / mean["rss_mb"],
        "rss_mb one / all shards together": single.rss_mb / (SHARDS * mean["rss_mb"]),
        "first_sync_s one / slowest shard": single.first_sync_s / slowest,
    }
    exactly_once = all(
        killed["logged"][name] == killed["shown"][name] == killed["on_disk"][name]
        for name in killed["logged"]
    )
    print()
    print(f"workload: {SHARDS * per:,} FINISHED runs x {args.keys} keys x {args.points} points "
          f"(+{SHARDS} live runs)")  # fmt: skip
    print(f"{'figure':<34} {'one':>10} {'shard mean':>11} {'shard max':>10}")
    for field, form in (("first_sync_s", "{:.1f}"), ("tags_ms", "{:.1f}"), ("rss_mb", "{:.0f}"),
                        ("mirror_mb", "{:.1f}"), ("state_mb", "{:.1f}")):  # fmt: skip
        values = [getattr(s, field) for s in split]
        one_value, shard_mean = getattr(single, field), statistics.mean(values)
        print(f"{field:<34} {form.format(one_value):>10} {form.format(shard_mean):>11} "
              f"{form.format(max(values)):>10}")  # fmt: skip
    for name, ratio in ratios.items():
        print(f"ratio {name:<40} {ratio:.2f}")
    print(f"kill: {killed}")
    print(f"exactly once after the SIGKILL and restart: {exactly_once}")

    results.workload = (
        f"{SHARDS * per:,} FINISHED runs x {args.keys} keys x {args.points} points "
        f"(+{SHARDS} live runs), one instance against {SHARDS} shards"
    )
    for field, unit in (("first_sync_s", "s"), ("tags_ms", "ms"), ("rss_mb", "MB"),
                        ("mirror_mb", "MB"), ("state_mb", "MB")):  # fmt: skip
        shard_mean = statistics.mean(getattr(s, field) for s in split)
        results.add(f"one instance: {field}", float(getattr(single, field)), unit)
        results.add(f"shard mean: {field}", shard_mean, unit)
    for name, ratio in ratios.items():
        results.add(f"ratio {name}", ratio, "x")
    for key in (
        "others_median_lag_before_s",
        "others_median_lag_during_s",
        "others_max_lag_before_s",
        "others_max_lag_during_s",
        "restart_to_caught_up_s",
    ):
        if killed[key] is not None:
            name = key.removesuffix("_s").replace("_", " ")
            results.add(f"kill: {name}", float(killed[key]), "s")
    results.add("exactly once after the SIGKILL and restart", str(exactly_once), "",
                "every point logged shown once", exactly_once)  # fmt: skip


if __name__ == "__main__":
    main()
