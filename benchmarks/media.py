"""Media benchmark: what mirroring MLflow runs' images costs a sync, the server and TensorBoard.

Builds (once per --workdir; an interrupted build is completed by the next invocation) on a local
`mlflow server` (sqlite store), through MLflow's store API and the run's artifact directory, the
files `MlflowClient.log_image(image, key=, step=)` writes (`images/<key>+step+<n>+timestamp+<ms>+
<uuid>.png`, its `+compressed.webp` preview, tag mlflow.loggedImages "True"; 64x48 random RGB,
encoded as MLflow does, a pool of 64 reused):
  - single: one RUNNING run with --images images of key `pred`, a `loss` point per step;
  - many: --runs FINISHED runs a day old with --per-run images each, 5 keys x 10 points;
then, after warming the server up (about 200 requests of the kinds a sync makes), measures, each
`tbmirror sync` a subprocess (cold start included) into an empty mirror, the requests counted by
tbmirror and by endpoint in the server's access log (uvicorn's):
  1. single: the first sync's wall time and requests, then an idle second sync (the run still
     runs, so its artifacts are listed again): requests, /get-artifact downloads, bytes written;
  2. many: the same, against a baseline measured in the same run (first): the same first sync with
     `artifacts: {images: false, tables: false}` into another mirror, i.e. the pass without images
     (it still lists each run's top-level artifacts); artifact listing requests per run;
  3. TensorBoard (`--load_fast true`) on the mirrors of 1 and 2: the RSS of its process tree
     (Python + the Rust data server, from /proc) once every run's image tag is listed, the
     `pred` series is loaded and the tree is idle, with `--samples_per_plugin images=1000`
     (--samples; what tbmirror's daemon passes) against TensorBoard's default `images=10`; a
     series of --per-run <= 10 images is held whole either way, so the difference is the single
     run's series (also printed per extra image held).

Usage: python benchmarks/media.py [--images 1000] [--runs 1000 --per-run 10] [--samples 1000]
           [--workdir DIR]
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import numpy as np
from mlflow.entities import Metric, RunStatus, RunTag, ViewType
from mlflow.entities.experiment_tag import ExperimentTag
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from mlflow.tracking.multimedia import compress_image_size, convert_to_pil_image

from common import Results, tree_rss_mb, wait_until_idle, write_config
from tbmirror.local_mlflow import LocalMlflowServer
from tbmirror.processes import free_port, stop_process_group

SINGLE, MANY = "media-single", "media-many"
KEY = "pred"
KEYS, POINTS = 5, 10  # metrics of each run of `many`
POOL = 64  # distinct images, reused
ACCESS = re.compile(r'"(?:GET|POST|PUT|DELETE|PATCH) (?P<path>[^ ?"]+)[^"]*" (?P<status>\d{3})')
TAGS = "/data/plugin/images/tags"


# --- workload --------------------------------------------------------------------------------


@functools.cache
def image_pool(count: int) -> list[tuple[bytes, bytes]]:
    """(PNG, WebP preview) of `count` random 64x48 images, made as MlflowClient.log_image does."""
    rng = np.random.default_rng(0)
    pool = []
    for _ in range(count):
        image = convert_to_pil_image(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
        png, preview = io.BytesIO(), io.BytesIO()
        image.save(png, format="PNG")
        compress_image_size(image).save(preview, format="WEBP")
        pool.append((png.getvalue(), preview.getvalue()))
    return pool


def write_images(
    artifact_uri: str, pool: list[tuple[bytes, bytes]], steps: range, t0_ms: int
) -> None:
    """The files log_image(key=KEY, step=) writes for each step, into the run's artifact root."""
    folder = Path(urlparse(artifact_uri).path) / "images"
    folder.mkdir(parents=True, exist_ok=True)
    for step in steps:
        png, preview = pool[step % len(pool)]
        stem = f"{KEY}+step+{step}+timestamp+{t0_ms + 1000 * step}+{uuid.uuid4()}"
        (folder / f"{stem}.png").write_bytes(png)
        (folder / f"{stem}+compressed.webp").write_bytes(preview)


def experiment(store: SqlAlchemyStore, name: str, shape: str) -> str:
    found = store.get_experiment_by_name(name)
    if found is not None and found.tags.get("shape", shape) != shape:
        raise SystemExit(f"{name} exists with another shape: use a fresh --workdir")
    experiment_id = found.experiment_id if found else store.create_experiment(name)
    store.set_experiment_tag(experiment_id, ExperimentTag("shape", shape))
    return str(experiment_id)


def build(store: SqlAlchemyStore, images: int, runs: int, per_run: int) -> None:
    """Both workloads; what an earlier build completed is kept, a half-built run deleted."""
    pool = image_pool(POOL)
    started = time.monotonic()
    now_ms = int(time.time() * 1000)
    single = experiment(store, SINGLE, str(images))
    existing = store.search_runs([single], "", ViewType.ACTIVE_ONLY, max_results=100)
    if not any(run.data.tags.get("bench.built") == "true" for run in existing):
        for run in existing:
            store.delete_run(run.info.run_id)
        t0 = now_ms - 1000 * images - 60_000
        run = store.create_run(single, "bench", t0, [], "single")
        write_images(run.info.artifact_uri, pool, range(images), t0)
        loss = [Metric("loss", 1 / (step + 1), t0 + 1000 * step, step) for step in range(images)]
        for start in range(0, len(loss), 1000):
            store.log_batch(run.info.run_id, loss[start : start + 1000], [], [])
        tags = [RunTag("mlflow.loggedImages", "True"), RunTag("bench.built", "true")]
        store.log_batch(run.info.run_id, [], [], tags)  # still RUNNING
        print(f"built run `single` ({images:,} images) in {time.monotonic() - started:.0f} s")

    started = time.monotonic()
    many = experiment(store, MANY, f"{runs}x{per_run}")
    listed = store.search_runs([many], "", ViewType.ACTIVE_ONLY, max_results=50_000)
    done = {run.info.run_name for run in listed if run.info.status == "FINISHED"}
    for run in listed:
        if run.info.status != "FINISHED":
            store.delete_run(run.info.run_id)  # interrupted mid-way: incomplete
    t0 = now_ms - 86_400_000
    missing = [index for index in range(runs) if f"run{index:05d}" not in done]
    for index in missing:
        start = t0 + 1000 * index
        run = store.create_run(many, "bench", start, [], f"run{index:05d}")
        write_images(run.info.artifact_uri, pool, range(per_run), start)
        metrics = [
            Metric(f"metric_{k}", (index + k + step) % 7 / 7, start + 1000 * step, step)
            for k in range(KEYS)
            for step in range(POINTS)
        ]
        store.log_batch(run.info.run_id, metrics, [], [RunTag("mlflow.loggedImages", "True")])
        store.update_run_info(
            run.info.run_id, RunStatus.FINISHED, start + 1000 * per_run, f"run{index:05d}"
        )
    if missing:
        print(f"built {len(missing):,} runs x {per_run} images in "
              f"{time.monotonic() - started:.0f} s")  # fmt: skip


# --- syncs -----------------------------------------------------------------------------------


def warm_up(url: str) -> None:
    """Requests of each endpoint a sync uses (downloads of previews, which tbmirror never fetches;
    10 runs of each experiment, 10 each) so that the first sync measured does not pay for the
    server's first requests."""
    api = "/api/2.0/mlflow"
    with httpx.Client(base_url=url, timeout=60) as client:
        for name in (SINGLE, MANY):
            found = client.get(f"{api}/experiments/get-by-name", params={"experiment_name": name})
            body = {"experiment_ids": [found.json()["experiment"]["experiment_id"]]}
            for run in client.post(f"{api}/runs/search", json=body).json()["runs"][:10]:
                params = {"run_id": run["info"]["run_id"], "path": "images"}
                files = client.get(f"{api}/artifacts/list", params=params).json()["files"]
                for path in [f["path"] for f in files if f["path"].endswith(".webp")][:10]:
                    client.get("/get-artifact", params={"run_id": params["run_id"], "path": path})


@dataclass
class Sync:
    seconds: float  # wall, the subprocess
    report: dict[str, Any]  # the source_synced event
    endpoints: Counter[str]  # requests the server logged, by path
    failed: int  # of them, answered with a status >= 400
    complaints: Counter[str]  # tbmirror's warning and error events, by name

    @property
    def downloads(self) -> int:
        return self.endpoints["/get-artifact"]

    @property
    def listings(self) -> int:
        return self.endpoints["/api/2.0/mlflow/artifacts/list"]

    def line(self) -> str:
        r = self.report
        text = (
            f"{self.seconds:5.1f} s (pass {r['seconds']:.1f} s), {r['requests']:,} requests "
            f"({self.downloads:,} downloads, "
            f"{self.listings:,} artifact listings), {r['points']:,} points, "
            f"{r['bytes_written']:,} bytes written"
        )
        if self.failed:
            text += f"; {self.failed} requests failed"
        if self.complaints:
            text += "; logged " + ", ".join(f"{n} x {e}" for e, n in self.complaints.items())
        if r.get("failed_runs"):
            text += f"; {len(r['failed_runs'])} runs failed"
        return text

    def breakdown(self) -> str:
        """The requests the server logged, by endpoint."""
        return ", ".join(f"{path.rsplit('/', 1)[-1] if 'mlflow/' in path else path} {n:,}"
                         for path, n in sorted(self.endpoints.items()))  # fmt: skip


def sync(config: Path, server: LocalMlflowServer) -> Sync:
    """`tbmirror sync` as a subprocess; the requests it made, from the server's access log."""
    offset = server.log_path.stat().st_size
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
    complaints = Counter(e["event"] for e in events if e.get("level") in ("warning", "error"))
    deadline = time.monotonic() + 5  # uvicorn logs a request once answered
    while True:
        with server.log_path.open("rb") as log:
            log.seek(offset)
            lines = log.read().decode(errors="replace").splitlines()
        hits = [m for m in map(ACCESS.search, lines) if m and m["path"] != "/health"]
        if len(hits) >= report["requests"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    endpoints = Counter(m["path"] for m in hits)
    failed = sum(int(m["status"]) >= 400 for m in hits)
    return Sync(seconds, report, endpoints, failed, complaints)


# --- TensorBoard -----------------------------------------------------------------------------


def tensorboard_rss(
    logdir: Path, samples: int, runs: int, steps: int, log_path: Path, timeout: float
) -> tuple[float, float, float, float]:
    """TensorBoard's tree RSS (total, Python, data server) in MB once it has loaded `runs` runs
    with an images tag and `steps` steps of the `pred` series, and idles; seconds to get there."""
    port = free_port()
    command = [
        sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--load_fast", "true",
        "--samples_per_plugin", f"images={samples}", "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            while True:
                if process.poll() is not None:
                    raise SystemExit(f"TensorBoard exited ({process.returncode}); see {log_path}")
                if time.monotonic() - started > timeout:
                    raise SystemExit(f"TensorBoard did not load within {timeout:.0f} s")
                if loaded(client, runs, steps):
                    break
                time.sleep(1)
            loaded_at = time.monotonic() - started
            wait_until_idle(process.pid, started + timeout)
            sizes = tree_rss_mb(process.pid)
            python = sizes[process.pid]
            return sum(sizes.values()), python, sum(sizes.values()) - python, loaded_at
    finally:
        stop_process_group(process)


def loaded(client: httpx.Client, runs: int, steps: int) -> bool:
    try:
        tags = client.get(TAGS).json()
        with_images = [run for run, found in tags.items() if found]
        if len(with_images) < runs:
            return False
        single = next(run for run in with_images if run.startswith("single/"))
        answer = client.get(
            "/data/plugin/images/images", params={"run": single, "tag": KEY, "sample": 0}
        )
        return len(answer.json()) >= steps
    except (httpx.HTTPError, ValueError, StopIteration):
        return False


# --- main ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1000, help="images of the single run")
    parser.add_argument("--runs", type=int, default=1000, help="finished runs with images")
    parser.add_argument("--per-run", type=int, default=10, help="images of each of those runs")
    parser.add_argument("--samples", type=int, default=1000, help="TensorBoard images= to try")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    if min(args.images, args.runs, args.per_run, args.samples) < 1:
        parser.error("--images, --runs, --per-run and --samples must be at least 1")
    with Results("media") as results:
        measure(args, results)


def measure(args: argparse.Namespace, results: Results) -> None:
    """Run the benchmark; print and record its figures."""
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # the store's "Creating tables..."
    work = args.workdir or Path(tempfile.mkdtemp(prefix="tbmirror-media-"))
    output = work / "output"
    shutil.rmtree(output, ignore_errors=True)
    mirrors = output / "mirrors"  # what TensorBoard reads: part 1's and 2's mirrors
    for folder in (mirrors / "single", mirrors / "many", output / "baseline"):
        folder.mkdir(parents=True)

    server = LocalMlflowServer(work / "mlflow")
    server.directory.mkdir(parents=True, exist_ok=True)
    store = SqlAlchemyStore(
        f"sqlite:///{server.directory / 'mlflow.db'}", str(server.directory / "artifacts")
    )
    build(store, args.images, args.runs, args.per_run)
    store.engine.dispose()

    with server:
        warm_up(server.url)
        single = write_config(mirrors / "single", server.url, SINGLE)
        single_first = sync(single, server)
        single_idle = sync(single, server)
        without = write_config(
            output / "baseline", server.url, MANY,
            source={"artifacts": {"images": False, "tables": False}},
        )  # fmt: skip
        baseline = sync(without, server)
        many = write_config(mirrors / "many", server.url, MANY)
        many_first = sync(many, server)
        many_idle = sync(many, server)

    total = 1 + args.runs
    default = min(10, args.samples)
    timeout = 600
    wide = tensorboard_rss(mirrors, args.samples, total, min(args.images, args.samples),
                           output / "tensorboard-wide.log", timeout)  # fmt: skip
    narrow = tensorboard_rss(mirrors, default, total, min(args.images, default),
                             output / "tensorboard-default.log", timeout)  # fmt: skip

    print(f"workload: 1 running run x {args.images:,} images; {args.runs:,} finished runs x "
          f"{args.per_run} images (+ {KEYS} keys x {POINTS} points); 64x48 PNG, "
          f"{sum(len(png) for png, _ in image_pool(POOL)) / POOL / 1024:.1f} KiB "
          "average")  # fmt: skip
    for label, measured in (
        ("1. single run, first sync", single_first),
        ("   single run, idle sync", single_idle),
        (f"2. {args.runs:,} runs, no images (baseline)", baseline),
        (f"   {args.runs:,} runs, first sync", many_first),
        (f"   {args.runs:,} runs, idle sync", many_idle),
    ):
        print(f"{label}: {measured.line()}")
        print(f"      server log: {measured.breakdown()}")
        name = label[3:]  # without "1. " or its indent
        results.add(f"{name}: time", measured.seconds, "s")
        results.add(f"{name}: requests", measured.report["requests"])
        results.add(f"{name}: downloads", measured.downloads)
    print(
        f"   with images vs without: {many_first.seconds / baseline.seconds:.2f} x the time "
        f"(the pass alone {many_first.report['seconds'] / baseline.report['seconds']:.2f} x), "
        f"{many_first.report['requests'] / baseline.report['requests']:.2f} x the requests; "
        f"artifact listings per run: {many_first.listings / args.runs:.2f} "
        f"(without images {baseline.listings / args.runs:.2f}); downloads: "
        f"{many_first.downloads / many_first.report['seconds']:.0f}/s "
        f"(single run {single_first.downloads / single_first.report['seconds']:.0f}/s)"
    )
    results.workload = (
        f"1 running run x {args.images:,} images; {args.runs:,} finished runs x {args.per_run} "
        "images; 64x48 PNGs"
    )
    results.add("with images vs without: time", many_first.seconds / baseline.seconds, "x")
    results.add(
        "with images vs without: requests",
        many_first.report["requests"] / baseline.report["requests"],
        "x",
    )
    for name, samples, (rss, python, server_rss, seconds) in (
        (f"3. TensorBoard images={args.samples}", args.samples, wide),
        (f"   TensorBoard images={default} (default)", default, narrow),
    ):
        held = min(args.images, samples) + args.runs * min(args.per_run, samples)
        results.add(f"TensorBoard RSS, images={samples}", rss, "MB")
        print(f"{name:<40} RSS {rss:6.0f} MB (Python {python:.0f} MB + data server "
              f"{server_rss:.0f} MB), {held:,} images held, loaded in {seconds:.1f} s")  # fmt: skip
    extra = min(args.images, args.samples) - min(args.images, default)
    extra += args.runs * (min(args.per_run, args.samples) - min(args.per_run, default))
    per_image = f", {(wide[0] - narrow[0]) * 1024 / extra:.1f} KiB per extra image" if extra else ""
    print(f"   ratio: {wide[0] / narrow[0]:.2f} x{per_image}")
    if extra:
        results.add("TensorBoard RSS per extra image held", (wide[0] - narrow[0]) * 1024 / extra,
                    "KiB")  # fmt: skip


if __name__ == "__main__":
    main()
