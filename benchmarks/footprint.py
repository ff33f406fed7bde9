"""Footprint: the daemon's memory and CPU with many finished runs tracked and nothing changing.

Builds (once per --workdir, straight into the server's sqlite store with common.build_runs; an
interrupted build is completed by the next invocation) an experiment of --runs FINISHED runs x
--keys keys x 1 point (default 100,000 x 20). Then, each time into an empty mirror:
  1. the first backfill, `tbmirror sync` (every run's metrics; with --artifacts, every run's
     artifact listing too): its time, requests and peak RSS (--keep-mirror: skipped, the mirror
     of the last invocation kept, and its server's port);
  2. the daemon (`tbmirror run`, default intervals: a quick pass every 10 s, a full listing 600 s
     after the last one ended) on that mirror: once its first pass (a full one) is logged, over
     --window seconds, its RSS (sampled every SAMPLE s; and its peak, VmHWM, the first pass
     included), its CPU share and the passes it logged (the full ones: duration, requests);
     TensorBoard, its child (Python and the data server), apart;
  3. once the daemon stopped, in this process: the CPU of a full listing with nothing new (after
     a first pass that loads the engine's state, as the daemon's later passes find it), amortised
     over `full_listing_interval`;
against a Python that only imports tbmirror (its RSS). --sync-only: step 1 alone; --mirror DIR:
the mirror and its state in DIR (made empty first) instead of the workdir (which keeps its own).
--daemon-from-empty: instead of steps 1-3, the daemon (TensorBoard off) started on the empty
mirror: its peak RSS (VmHWM) once its first pass (the backfill) is logged, and again once a later
full pass wrote nothing (caught up, checked by a complete listing); each pass's kind, duration,
requests and runs whose cursors were read.
Targets: peak RSS <= 150 MB (the sync's and the daemon's), its first pass reading no cursor of
a run (none changed), idle CPU <= 2 % of one core over the window; a
window in which no full listing fell (one shorter than `full_listing_interval`) adds the
amortised full listing to its CPU.

Usage: python benchmarks/footprint.py [--runs 100000 --keys 20] [--window 600] [--workdir DIR]
           [--build-only] [--artifacts] [--keep-mirror] [--no-listing-cpu] [--sync-only]
           [--mirror DIR] [--daemon-from-empty]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import (
    Results,
    Synced,
    build_runs,
    cpu_seconds,
    open_store,
    rss_mb,
    run_sync,
    start_daemon,
    status_mb,
    tree,
    tree_rss_mb,
    write_config,
)
from tbmirror import logs
from tbmirror.app import build_engine, open_journal
from tbmirror.config import load_settings
from tbmirror.local_mlflow import LocalMlflowServer
from tbmirror.processes import free_port, stop_process_group

EXPERIMENT = "footprint"
SAMPLE = 5.0  # seconds between RSS samples
RSS_TARGET, CPU_TARGET = 150.0, 2.0  # MB, % of one core
OPEN_FILES = 1_048_576  # as the systemd unit's LimitNOFILE: TensorBoard opens every run's file


def raise_open_files() -> int:
    """The hard limit of open files for the daemon (and TensorBoard), raised to OPEN_FILES if
    this process may (as root), as the systemd unit does."""
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def server_port(work: Path, keep: bool) -> int:
    """A free port, or if `keep` (--keep-mirror, or --mirror: the workdir's mirror is left as it
    is) the port the last invocation's server had: the MLflow link in every run's text names it,
    and a new one would rewrite 100,000 texts."""
    saved = work / "server-port"
    port = int(saved.read_text()) if keep and saved.exists() else free_port()
    saved.write_text(f"{port}\n")
    return port


def events(log_path: Path, offset: int = 0) -> list[dict[str, Any]]:
    """The JSON events of the complete lines the daemon logged from byte `offset` on."""
    return events_since(log_path, offset)[0]


def events_since(log_path: Path, offset: int) -> tuple[list[dict[str, Any]], int]:
    """The JSON events of the complete lines the daemon logged from byte `offset` on, and the
    offset after the last of them."""
    with log_path.open("rb") as log:
        log.seek(offset)
        data = log.read()
    complete = data[: data.rfind(b"\n") + 1]
    lines = complete.split(b"\n")
    return [json.loads(line) for line in lines if line.startswith(b"{")], offset + len(complete)


def wait_for(
    log_path: Path, name: str, daemon: subprocess.Popen[bytes], timeout: float, **fields: Any
) -> dict[str, Any]:
    """The first event `name` (with `fields`) the daemon logged, waited for."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in events(log_path):
            if event.get("event") == name and fields.items() <= event.items():
                return event
        if daemon.poll() is not None:
            raise SystemExit(f"the daemon exited ({daemon.returncode}); see {log_path}")
        time.sleep(1)
    raise SystemExit(f"no {name} {fields} within {timeout:.0f} s; see {log_path}")


@dataclass
class Window:
    """The daemon, and TensorBoard apart, over the window."""

    seconds: float
    cpu: float  # % of one core
    rss: list[float]  # MB, sampled
    peak: float  # MB, VmHWM at the end (the daemon's whole life)
    passes: list[dict[str, Any]]  # the source_synced events logged in the window
    tensorboard_cpu: float
    tensorboard_rss: list[float]  # MB, its process tree


def measure(daemon: int, tensorboard: int, log_path: Path, seconds: float) -> Window:
    offset = log_path.stat().st_size
    started = time.monotonic()
    cpu, tb_cpu = cpu_seconds([daemon]), cpu_seconds(tree(tensorboard))
    rss: list[float] = []
    tb_rss: list[float] = []
    while True:
        rss.append(rss_mb(daemon))
        tb_rss.append(sum(tree_rss_mb(tensorboard).values()))
        left = started + seconds - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(SAMPLE, left))
    wall = time.monotonic() - started
    cpu = (cpu_seconds([daemon]) - cpu) / wall * 100
    tb_cpu = (cpu_seconds(tree(tensorboard)) - tb_cpu) / wall * 100
    passes = [e for e in events(log_path, offset) if e.get("event") == "source_synced"]
    return Window(wall, cpu, rss, status_mb(daemon, "VmHWM"), passes, tb_cpu, tb_rss)


def full_listing(config: Path) -> tuple[float, float, int]:
    """(CPU s, wall s, requests) of a daemon's full pass with nothing new, in this process."""
    logs.configure("warning")
    settings = load_settings(config)
    journal = open_journal(settings)
    engine = build_engine(settings.sources[0], journal, threading.Event())
    try:
        engine.run_pass(full=True)  # loads the state
        cpu, wall = time.process_time(), time.monotonic()
        report = engine.run_pass(full=True)
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    finally:
        engine.close()
        journal.close()
    if report.failure is not None or report.points:
        raise SystemExit(f"the full listing was not idle: {report}")
    return cpu, wall, report.requests


def caught_up(passes: list[dict[str, Any]], runs: int) -> bool:
    """Whether a daemon's `source_synced` events show it caught up: a full pass after its first
    one (the backfill) that listed all `runs`, failed none and wrote nothing (every run was
    mirrored)."""
    return any(
        e["full"] and e["runs"] == runs and not (e["failed_runs"] or e["points"] or e["bytes"])
        for e in passes[1:]
    )


def follow_passes(
    log_path: Path, daemon: subprocess.Popen[bytes], runs: int, timeout: float
) -> tuple[list[dict[str, Any]], float, float]:
    """The daemon's passes until it caught up (`caught_up`), and its VmHWM (MB) once its first
    pass was logged (looked at every 0.1 s, as the next pass starts at once) and at the end."""
    deadline = time.monotonic() + timeout
    backfill_peak = None
    passes: list[dict[str, Any]] = []
    offset = 0
    while time.monotonic() < deadline:
        logged, offset = events_since(log_path, offset)
        passes += [e for e in logged if e.get("event") == "source_synced"]
        if passes and backfill_peak is None:
            backfill_peak = status_mb(daemon.pid, "VmHWM")
            print(f"first pass logged: VmHWM {backfill_peak:.1f} MB", flush=True)
        if backfill_peak is not None and caught_up(passes, runs):
            return passes, backfill_peak, status_mb(daemon.pid, "VmHWM")
        if daemon.poll() is not None:
            raise SystemExit(f"the daemon exited ({daemon.returncode}); see {log_path}")
        time.sleep(0.1 if backfill_peak is None else 1)
    raise SystemExit(f"the daemon did not catch up within {timeout:.0f} s; see {log_path}")


def from_empty(args: argparse.Namespace, config: Path, log_path: Path, results: Results) -> None:
    """Measure the daemon started on an empty mirror (--daemon-from-empty); print and record."""
    started = time.monotonic()
    daemon = start_daemon(config, log_path)
    try:
        passes, backfill_peak, peak = follow_passes(log_path, daemon, args.runs, 2 * 3600)
    finally:
        stop_process_group(daemon)
    wall = time.monotonic() - started
    results.workload = (
        f"{args.runs:,} finished runs x {args.keys} keys x 1 point; the daemon (TensorBoard off) "
        "started on an empty mirror, at its default intervals; artifact listings "
        f"{'on' if args.artifacts else 'off'}"
    )
    print(f"workload: {results.workload}")
    for number, event in enumerate(passes, 1):
        print(f"  pass {number} ({'full' if event['full'] else 'quick'}): "
              f"{event['duration_ms'] / 1000:.1f} s, {event['requests']:,} requests, "
              f"{event['runs']:,} runs listed, {event['planned']:,} runs' cursors read, "
              f"{event['points']:,} points")  # fmt: skip
    backfill = passes[0]
    after = next(e for e in passes[1:] if e["full"])
    print(f"peak RSS (VmHWM) once the backfill was logged: {backfill_peak:.1f} MB; once caught "
          f"up ({len(passes)} passes, {wall:.0f} s): {peak:.1f} MB; target <= "
          f"{RSS_TARGET:.0f} MB: {met(peak <= RSS_TARGET)}")  # fmt: skip
    results.add("the daemon's backfill pass", backfill["duration_ms"] / 1000, "s")
    results.add("peak RSS (VmHWM) once the backfill was logged", backfill_peak, "MB",
                f"<= {RSS_TARGET:.0f} MB", backfill_peak <= RSS_TARGET)  # fmt: skip
    results.add("the full pass after the backfill", after["duration_ms"] / 1000, "s")
    results.add("the full pass after the backfill: runs whose cursors were read",
                after["planned"], "runs", "0", after["planned"] == 0)  # fmt: skip
    results.add("passes until caught up", len(passes), "passes")
    results.add("peak RSS (VmHWM) once caught up", peak, "MB", f"<= {RSS_TARGET:.0f} MB",
                peak <= RSS_TARGET)  # fmt: skip


def met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--keys", type=int, default=20)
    parser.add_argument("--window", type=float, default=600, help="seconds measured idle")
    parser.add_argument("--workdir", type=Path, help="keeps the workload between invocations")
    parser.add_argument("--build-only", action="store_true", help="build the workload, then exit")
    parser.add_argument(
        "--artifacts", action="store_true",
        help="list the runs' artifacts too (off: the workload has none, and listing 100,000 empty "
        "folders takes the server about an hour with one worker; backfill.py measures it)",
    )  # fmt: skip
    parser.add_argument(
        "--keep-mirror", action="store_true",
        help="skip the backfill: the daemon starts on the mirror the last invocation left",
    )  # fmt: skip
    parser.add_argument(
        "--no-listing-cpu", action="store_true",
        help="skip step 3 (two more full passes: ~25 min at 100,000 runs); the idle CPU is then "
        "judged only if a full listing fell in the window",
    )  # fmt: skip
    parser.add_argument(
        "--sync-only", action="store_true",
        help="measure the first backfill alone (no daemon, no listing CPU)",
    )  # fmt: skip
    parser.add_argument(
        "--daemon-from-empty", action="store_true",
        help="measure the daemon (TensorBoard off) started on the empty mirror, until caught up, "
        "instead of a sync and a daemon on its mirror",
    )  # fmt: skip
    parser.add_argument(
        "--mirror", type=Path,
        help="the mirror and its state here (made empty first), not in --workdir",
    )  # fmt: skip
    args = parser.parse_args()
    if min(args.runs, args.keys, args.window) <= 0:
        parser.error("--runs, --keys and --window must be positive")
    if args.sync_only and args.keep_mirror:
        parser.error("--sync-only measures the backfill that --keep-mirror skips")
    if args.daemon_from_empty and (args.sync_only or args.keep_mirror):
        parser.error("--daemon-from-empty starts on an empty mirror, without a sync")
    with Results("footprint") as results:
        measure_daemon(args, results)


def measure_daemon(args: argparse.Namespace, results: Results) -> None:
    """Run the benchmark; print and record its figures."""
    work = args.workdir or Path(tempfile.mkdtemp(prefix="tbmirror-footprint-"))
    work.mkdir(parents=True, exist_ok=True)
    port = server_port(work, args.keep_mirror or args.mirror is not None)
    server = LocalMlflowServer(work / "mlflow", port=port)
    store = open_store(server)
    build_runs(store, EXPERIMENT, args.runs, [f"key_{k:02d}" for k in range(args.keys)], 1)
    store.engine.dispose()
    if args.build_only:
        raise SystemExit(0)  # no result: nothing was measured
    mirror = args.mirror or work
    mirror.mkdir(parents=True, exist_ok=True)
    if not args.keep_mirror:
        shutil.rmtree(mirror / "logs", ignore_errors=True)
        for stale in ("state.db", "state.db-wal", "state.db-shm"):
            (mirror / stale).unlink(missing_ok=True)
    (mirror / "daemon.log").unlink(missing_ok=True)

    open_files = raise_open_files()
    with server:
        config = write_config(
            mirror, server.url, EXPERIMENT,
            source={"artifacts": {"enabled": args.artifacts}},
            tensorboard=(
                {"enabled": False} if args.daemon_from_empty else {"port": free_port()}
            ),
            health={"port": free_port()},
            logging={"level": "debug"},  # every pass's source_synced, idle ones too
        )  # fmt: skip
        log_path = mirror / "daemon.log"
        if args.daemon_from_empty:
            from_empty(args, config, log_path, results)
            return
        backfill = None if args.keep_mirror else run_sync(config)
        if args.sync_only:
            assert backfill is not None
            results.workload = (
                f"{args.runs:,} finished runs x {args.keys} keys x 1 point; the first sync only; "
                f"artifact listings {'on' if args.artifacts else 'off'}"
            )
            print(f"workload: {results.workload}")
            report_backfill(args, backfill, results)
            return
        daemon = start_daemon(config, log_path)
        baseline = subprocess.Popen(
            [sys.executable, "-c", "import tbmirror.cli, time; time.sleep(3600)"]
        )
        try:
            first = wait_for(log_path, "source_synced", daemon, 3600, full=True)
            tensorboard = wait_for(log_path, "tensorboard_ready", daemon, 600)["pid"]
            window = measure(daemon.pid, tensorboard, log_path, args.window)
            base_rss = rss_mb(baseline.pid)
        finally:
            baseline.kill()
            stop_process_group(daemon)
        listing = None if args.no_listing_cpu else full_listing(config)
    interval = load_settings(config).sources[0].full_listing_interval

    print(f"workload: {args.runs:,} FINISHED runs x {args.keys} keys x 1 point; the daemon at "
          f"its default intervals (full listing {interval:.0f} s after the last); artifact "
          f"listings {'on' if args.artifacts else 'off'}; open files {open_files:,}")  # fmt: skip
    if backfill is None:
        print("first backfill: skipped (--keep-mirror)")
    else:
        report_backfill(args, backfill, results)
    print(f"daemon's first pass (full, nothing new): {first['duration_ms'] / 1000:.1f} s, "
          f"{first['requests']:,} requests, {first['runs']:,} runs listed, "
          f"{first['planned']:,} runs' cursors read")  # fmt: skip
    fulls = [e for e in window.passes if e.get("full")]
    quick = [e for e in window.passes if not e.get("full")]
    print(f"window: {window.seconds:.0f} s, {len(quick)} quick passes "
          f"({sum(e['requests'] for e in quick):,} requests), {len(fulls)} full")  # fmt: skip
    for event in fulls:
        print(f"  full pass: {event['duration_ms'] / 1000:.1f} s, {event['requests']:,} requests, "
              f"{event['runs']:,} runs listed")  # fmt: skip
    print(f"daemon RSS: {window.rss[-1]:.0f} MB at the end, {max(window.rss):.0f} MB at most in "
          f"the window, peak {window.peak:.0f} MB (VmHWM); import-only Python {base_rss:.0f} MB; "
          f"target <= {RSS_TARGET:.0f} MB: {met(window.peak <= RSS_TARGET)}")  # fmt: skip
    tb_rss = window.tensorboard_rss
    print(f"TensorBoard (apart): RSS {tb_rss[-1]:.0f} MB at the end ({max(tb_rss):.0f} MB at "
          f"most), CPU {window.tensorboard_cpu:.2f} %")  # fmt: skip
    amortised = None
    if listing is None:
        print("one full listing, nothing new (in-process): skipped (--no-listing-cpu)")
    else:
        full_cpu, full_wall, full_requests = listing
        amortised = full_cpu / interval * 100
        print(f"one full listing, nothing new (in-process): {full_wall:.1f} s wall, "
              f"{full_cpu:.2f} s CPU, {full_requests:,} requests: {amortised:.2f} % over "
              f"{interval:.0f} s")  # fmt: skip
    if fulls:
        idle, how = window.cpu, "full listings included"
    elif amortised is not None:
        idle, how = window.cpu + amortised, "+ a full listing amortised, none in the window"
    else:
        idle, how = None, "no full listing in the window, none measured: not judged"
    shown = "" if idle is None else f"{idle:.2f} % "
    judged = "" if idle is None else f"; target <= {CPU_TARGET:.0f} %: {met(idle <= CPU_TARGET)}"
    print(f"daemon idle CPU: {window.cpu:.2f} % over the window; {shown}({how}){judged}")
    results.workload = (
        f"{args.runs:,} finished runs x {args.keys} keys x 1 point; the daemon at its default "
        f"intervals; artifact listings {'on' if args.artifacts else 'off'}; open files "
        f"{open_files:,}"
    )
    results.add("the daemon's first pass (full, nothing new)", first["duration_ms"] / 1000, "s")
    results.add("the daemon's first pass: runs whose cursors were read", first["planned"], "runs",
                "0", first["planned"] == 0)  # fmt: skip
    results.add("daemon RSS at the end of the window", window.rss[-1], "MB")
    results.add("daemon peak RSS (VmHWM)", window.peak, "MB", f"<= {RSS_TARGET:.0f} MB",
                window.peak <= RSS_TARGET)  # fmt: skip
    if idle is not None:
        results.add("daemon idle CPU", idle, "% of a core", f"<= {CPU_TARGET:.0f} %",
                    idle <= CPU_TARGET)  # fmt: skip
    if listing is not None:
        results.add("one full listing, nothing new: CPU", listing[0], "s")
    results.add("TensorBoard (apart): RSS at the end", tb_rss[-1], "MB")
    results.add("import-only Python: RSS", base_rss, "MB")


def report_backfill(args: argparse.Namespace, backfill: Synced, results: Results) -> None:
    """Print and record the first backfill's figures."""
    report = backfill.report
    per_run = backfill.seconds / args.runs * 1000
    print(f"first backfill (tbmirror sync): {backfill.seconds:.1f} s ({per_run:.1f} ms a run; "
          f"pass {report['seconds']:.1f} s), "
          f"{report['requests']:,} requests, {report['points']:,} points, "
          f"peak RSS {backfill.peak_mb:.0f} MB (target <= {RSS_TARGET:.0f} MB: "
          f"{met(backfill.peak_mb <= RSS_TARGET)}){backfill.complained()}")  # fmt: skip
    results.add("first backfill, tbmirror sync", backfill.seconds, "s")
    results.add("first backfill, peak RSS", backfill.peak_mb, "MB", f"<= {RSS_TARGET:.0f} MB",
                backfill.peak_mb <= RSS_TARGET)  # fmt: skip


if __name__ == "__main__":
    main()
