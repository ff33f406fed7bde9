"""TensorBoard's memory against what it serves: bytes per run and per point, measured.

Builds mirror roots of scalar events files straight on disk (no MLflow: the data server's memory
depends on what it loads, not on where it came from): an empty root, and --runs x --keys x
--points in three shapes, A (the base), B (A's runs, 3x the points per series) and C (10x the
runs, a tenth of the points per series: A's point count). On each, TensorBoard starts as the
daemon starts it (fast loader, `--samples_per_plugin scalars=100000`), and once every run and key
is listed, one series answers with all its points and the process tree idles, the RSS of the
tree (Python + the Rust data server) is read from /proc. Then:
  per point = (B - A) / (B's points - A's points); per run = (C - A - per point x (C's points -
  A's points)) / (C's runs - A's runs); the base = the empty root's RSS;
and the formula (tbmirror/tensorboard_budget.py) is printed with its error on each shape.

Usage: python benchmarks/tensorboard_memory.py [--runs 200 --keys 5 --points 1000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from common import Results, start_tensorboard, tree_rss_mb, wait_until_idle
from tbmirror import tensorboard_budget
from tbmirror.mirror import events, summaries
from tbmirror.processes import free_port, stop_process_group

SCALARS, TAGS, RUNS = "/data/plugin/scalars/scalars", "/data/plugin/scalars/tags", "/data/runs"
TIMEOUT = 900.0
MB = 1024**2


@dataclass(frozen=True)
class Shape:
    name: str
    runs: int
    keys: int
    points: int  # per series

    @property
    def total(self) -> int:
        return self.runs * self.keys * self.points


def build(root: Path, shape: Shape) -> None:
    """One events file per run, `keys` scalar series of `points` points each (built once)."""
    done = root / ".built"
    if done.exists():
        return
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    encoders = [summaries.ScalarEncoder(f"key_{k}") for k in range(shape.keys)]
    t0 = time.time() - 86_400
    for run in range(shape.runs):
        directory = root / f"run{run:05d}"
        directory.mkdir(parents=True)
        payloads = [summaries.file_version(t0)]
        for step in range(shape.points):
            payloads += [e.encode(t0 + step, step, (run + step) % 97 / 97) for e in encoders]
        (directory / f"{events.EVENTS_PREFIX}{int(t0):010d}.bench.1.0").write_bytes(
            events.frame_all(payloads)
        )
    done.touch()


def loaded(client: httpx.Client, shape: Shape) -> bool:
    """Every run and key listed, and the last run's key_0 answering with all its points."""
    if shape.runs == 0:
        return client.get(RUNS).status_code == 200
    try:
        tags = client.get(TAGS).json()
        if sum(1 for found in tags.values() if len(found) >= shape.keys) < shape.runs:
            return False
        last = f"run{shape.runs - 1:05d}"
        series = client.get(SCALARS, params={"run": last, "tag": "key_0"}).json()
    except (httpx.HTTPError, ValueError):
        return False
    return len(series) == shape.points


def rss(root: Path, shape: Shape, log_path: Path) -> float:
    """The idle RSS in bytes of a TensorBoard (as the daemon starts it) that loaded `root`."""
    port = free_port()
    started = time.monotonic()
    process = start_tensorboard(root, port, log_path)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            while True:
                try:
                    if loaded(client, shape):
                        break
                except httpx.HTTPError:
                    pass
                if process.poll() is not None:
                    raise SystemExit(f"TensorBoard exited ({process.returncode}); see {log_path}")
                if time.monotonic() - started > TIMEOUT:
                    raise SystemExit(f"{shape.name}: TensorBoard did not load in {TIMEOUT:.0f} s")
                time.sleep(1)
            wait_until_idle(process.pid, time.monotonic() + 120)
            return sum(tree_rss_mb(process.pid).values()) * MB
    finally:
        stop_process_group(process)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--keys", type=int, default=5)
    parser.add_argument("--points", type=int, default=1000, help="per series, shape A")
    parser.add_argument("--workdir", type=Path, help="kept (default: a temp dir, removed)")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="tbmirror-tb-memory-"))
    shapes = [
        Shape("empty", 0, args.keys, 0),
        Shape("A", args.runs, args.keys, args.points),
        Shape("B", args.runs, args.keys, 3 * args.points),
        Shape("C", 10 * args.runs, args.keys, args.points // 10),
    ]
    try:
        with Results("tensorboard_memory") as results:
            results.workload = ", ".join(
                f"{s.name}: {s.runs:,} runs x {s.keys} keys x {s.points:,} points" for s in shapes
            )
            measured = {}
            for shape in shapes:
                root = work / shape.name
                root.mkdir(parents=True, exist_ok=True)
                build(root, shape)
                measured[shape.name] = rss(root, shape, work / f"{shape.name}.log")
                print(f"{shape.name}: {shape.runs:,} runs x {shape.keys} keys x "
                      f"{shape.points:,} points = {shape.total:,} points: RSS "
                      f"{measured[shape.name] / MB:.0f} MiB (load average "
                      f"{os.getloadavg()[0]:.2f})")  # fmt: skip
                results.add(f"{shape.name}: RSS", measured[shape.name] / MB, "MiB")
            a, b, c = shapes[1:]
            per_point = (measured["B"] - measured["A"]) / (b.total - a.total)
            per_run = (measured["C"] - measured["A"] - per_point * (c.total - a.total)) / (
                c.runs - a.runs
            )
            print(f"measured: base {measured['empty'] / MB:.0f} MiB, {per_point:.0f} bytes a "
                  f"point, {per_run / 1024:.1f} KiB a run")  # fmt: skip
            results.add("base", measured["empty"] / MB, "MiB")
            results.add("bytes a point", per_point, "B")
            results.add("bytes a run", per_run, "B")
            print(f"the formula (tbmirror/tensorboard_budget.py): base "
                  f"{tensorboard_budget.BASE_BYTES / MB:.0f} MiB + "
                  f"{tensorboard_budget.RUN_BYTES:,} B a run + "
                  f"{tensorboard_budget.POINT_BYTES} B a point")  # fmt: skip
            for shape in shapes:
                estimate = tensorboard_budget.estimate(shape.runs, [(shape.points, shape.runs
                                                                    * shape.keys)])  # fmt: skip
                error = estimate / measured[shape.name] - 1
                print(f"  {shape.name}: estimate {estimate / MB:.0f} MiB, measured "
                      f"{measured[shape.name] / MB:.0f} MiB ({error:+.0%})")  # fmt: skip
                results.add(f"{shape.name}: estimate / measured", estimate / measured[shape.name],
                            "x")  # fmt: skip
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
