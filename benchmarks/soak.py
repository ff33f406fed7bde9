"""Soak (issue 28): the daemon for a long time under faults, SIGKILLs and a disk that fills.

`tbmirror run` against a real `mlflow server` behind the fault proxy
(tests/helpers/hostile_proxy.py), while runs log all the while, the daemon is SIGKILLed and
restarted every `--kill-every` seconds, the mirror's disk (a tmpfs) fills and empties, and the
proxy cycles through 503 storms, resets, header trickles and slow answers.

At the end (faults off, disk emptied, logging stopped) it waits until the daemon has caught up
and checks: every point logged is in the mirror's events files exactly once and TensorBoard shows
it; no run was removed (none was deleted); the daemon's peak RSS (VmHWM of each incarnation)
stayed under 250 MB. Needs root (the tmpfs). Exits 1 if a check fails.

Usage: python benchmarks/soak.py [--minutes 30] [--kill-every 60] [--disk-every 150]
Target: every point exactly once, no run removed, peak RSS < 250 MB.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from tensorboard.compat.proto.event_pb2 import Event

from common import REPO, Results, start_daemon, status_mb, write_source_config
from tbmirror.local_mlflow import LocalMlflowServer
from tbmirror.mirror import events
from tbmirror.processes import free_port

sys.path.insert(0, str(REPO / "tests"))
from helpers.hostile_proxy import HostileProxy

MAX_RSS_MB = 250
TAGS = ("loss", "acc")
STEPS_PER_RUN = 120  # a run logs one step a second, then finishes
FAULTS: list[tuple[str, dict[str, Any]]] = [
    ("status", {"code": 503, "body": {"error_code": "TEMPORARILY_UNAVAILABLE"}}),
    ("reset", {}),
    ("trickle", {"interval": 1.0, "head": True}),
    ("delay", {"seconds": 3.0}),
]


def value(run: int, tag: str, step: int) -> float:
    return run * 1000.0 + step + (0.5 if tag == "acc" else 0.0)


class Workload(threading.Thread):
    """Starts a run every `every` seconds; each logs TAGS one step a second, STEPS_PER_RUN steps,
    then ends. `logged`: run name -> steps logged (of every tag)."""

    def __init__(self, client: MlflowClient, experiment_id: str, every: float) -> None:
        super().__init__(name="workload", daemon=True)
        self.client, self.experiment_id, self.every = client, experiment_id, every
        self.logged: dict[str, int] = {}
        self.halt = threading.Event()

    def run(self) -> None:
        live: dict[str, tuple[str, int]] = {}  # name -> (run id, index)
        started_at = -float("inf")
        while not self.halt.wait(1.0):
            now = time.monotonic()
            if now - started_at >= self.every:
                index = len(self.logged)
                name = f"r{index:03d}"
                run_id = self.client.create_run(self.experiment_id, run_name=name).info.run_id
                live[name], self.logged[name], started_at = (run_id, index), 0, now
            for name, (run_id, index) in list(live.items()):
                step = self.logged[name]
                stamp = int(time.time() * 1000)
                metrics = [Metric(tag, value(index, tag, step), stamp, step) for tag in TAGS]
                self.client.log_batch(run_id, metrics=metrics)
                self.logged[name] = step + 1
                if step + 1 == STEPS_PER_RUN:
                    self.client.set_terminated(run_id)
                    del live[name]


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tbmirror-soak", str(path)],
                   check=True)  # fmt: skip
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)]).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=True)


def fill(directory: Path) -> Path:
    """A ballast file that takes every free block of `directory`'s file system."""
    ballast = directory / "ballast"
    descriptor = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for size in (1024**2, 4096):
            with contextlib.suppress(OSError):  # ENOSPC: this size no longer fits
                while True:
                    os.write(descriptor, b"\0" * size)
    finally:
        os.close(descriptor)
    return ballast


def mirrored(root: Path) -> Counter[tuple[str, str, int]]:
    """(run directory, tag, step) -> records holding it, in every events file under `root`."""
    counts: Counter[tuple[str, str, int]] = Counter()
    for path in root.rglob("*tfevents*"):
        with contextlib.suppress(events.CorruptRecordError, OSError):
            for record in events.iter_file_records(path):
                event = Event.FromString(record.payload)
                for item in event.summary.value:
                    counts[(path.parent.name, item.tag, event.step)] += 1
    return counts


def wrong(logged: dict[str, int], counts: Counter[tuple[str, str, int]]) -> list[str]:
    """What the mirror holds other than each logged point exactly once."""
    problems = []
    for name, steps in logged.items():
        for tag in TAGS:
            held = [counts.get((name, tag, step), 0) for step in range(steps)]
            if any(n != 1 for n in held):
                missing = sum(1 for n in held if n == 0)
                twice = sum(1 for n in held if n > 1)
                problems.append(f"{name}/{tag}: {missing} missing, {twice} more than once")
    return problems


class Daemon:
    """`tbmirror run`, restarted after each SIGKILL; `peak_mb`: the highest VmHWM seen."""

    def __init__(self, config: Path, logs: Path) -> None:
        self.config, self.logs, self.incarnation, self.peak_mb = config, logs, 0, 0.0
        self.process = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        self.incarnation += 1
        return start_daemon(self.config, self.logs / f"daemon-{self.incarnation}.log")

    def sample(self) -> None:
        self.peak_mb = max(self.peak_mb, status_mb(self.process.pid, "VmHWM"))

    def kill(self) -> None:
        self.sample()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.process = self._start()

    def stop(self) -> int:
        self.sample()
        os.killpg(self.process.pid, signal.SIGTERM)
        return self.process.wait(120)

    def end(self) -> None:
        """Kill whatever is left of it (after a failure of the soak itself)."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--kill-every", type=float, default=60.0, help="seconds")
    parser.add_argument("--fault-every", type=float, default=20.0, help="seconds each")
    parser.add_argument("--disk-every", type=float, default=150.0, help="seconds")
    parser.add_argument("--run-every", type=float, default=15.0, help="a new run, seconds")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("soak.py mounts a tmpfs for the mirror: run it as root")
    with (
        tempfile.TemporaryDirectory(prefix="tbmirror-soak-") as scratch,
        Results("soak") as results,
    ):
        work = Path(scratch)
        results.workload = (
            f"{args.minutes:g} min; a run every {args.run_every:g} s logging {len(TAGS)} keys "
            f"for {STEPS_PER_RUN} s; SIGKILL every {args.kill_every:g} s; faults "
            f"{args.fault_every:g} s each; disk full every {args.disk_every:g} s"
        )
        passed = soak(work, args, results)
    if not passed:
        raise SystemExit("soak FAILED: see the lines marked `wrong` and the figures above")


def soak(work: Path, args: argparse.Namespace, results: Results) -> bool:
    """The soak in `work` (see the module docstring); whether every check passed."""
    with (
        LocalMlflowServer(work / "mlflow") as server,
        HostileProxy(server.url) as proxy,
        tmpfs(work / "disk", "64m") as disk,
    ):
        client = MlflowClient(server.url)
        experiment_id = client.create_experiment("soak")
        tb_port = free_port()
        source = {"name": "soak", "type": "mlflow", "tracking_uri": proxy.url,
                  "experiments": ["soak"], "poll_interval": "2s", "timeout": "5s",
                  "max_retries": 1}  # fmt: skip
        config = write_source_config(
            disk, source, tensorboard={"port": tb_port, "scalars_samples": 100_000},
            health={"enabled": False},
        )  # fmt: skip
        workload = Workload(client, experiment_id, args.run_every)
        workload.start()
        daemon = Daemon(config, work)
        try:
            return run_soak(args, results, proxy, disk, workload, daemon, tb_port)
        finally:
            workload.halt.set()
            daemon.end()


def run_soak(
    args: argparse.Namespace,
    results: Results,
    proxy: HostileProxy,
    disk: Path,
    workload: Workload,
    daemon: Daemon,
    tb_port: int,
) -> bool:
    """The soak proper: faults while the workload logs, then the catch-up and the checks;
    whether every check passed."""
    counts = Counter[str]()
    started = time.monotonic()
    end = started + args.minutes * 60
    next_kill, next_disk, next_fault = (started + args.kill_every, started + args.disk_every,
                                        started + args.fault_every)  # fmt: skip
    fault, ballast = 0, None
    while time.monotonic() < end:
        time.sleep(1.0)
        daemon.sample()
        now = time.monotonic()
        if now >= next_kill:
            daemon.kill()
            counts["kills"] += 1
            next_kill = now + args.kill_every
        if now >= next_fault:
            proxy.clear()
            name, params = FAULTS[fault // 2 % len(FAULTS)] if fault % 2 == 0 else (None, {})
            if name is not None:
                proxy.set(name, **params)
                counts[f"fault {name}"] += 1
            fault, next_fault = fault + 1, now + args.fault_every
        if now >= next_disk:
            if ballast is None:
                ballast = fill(disk)
                counts["disk filled"] += 1
                next_disk = now + 30
            else:
                ballast.unlink()
                ballast, next_disk = None, now + args.disk_every
    workload.halt.set()
    workload.join(60)
    proxy.clear()
    if ballast is not None:
        ballast.unlink()
    logged = dict(workload.logged)
    print(f"{time.monotonic() - started:.0f} s: {len(logged)} runs, "
          f"{sum(logged.values()) * len(TAGS):,} points logged; {dict(counts)}")  # fmt: skip
    deadline = time.monotonic() + 600
    while (problems := wrong(logged, mirrored(disk / "logs"))) and time.monotonic() < deadline:
        time.sleep(5)
        daemon.sample()
    caught_up = time.monotonic() - (deadline - 600)
    shown = shown_wrongly(tb_port, logged)
    code = daemon.stop()
    runs_left = {path.name for path in (disk / "logs" / "soak" / "soak").iterdir()}
    removed = sorted(set(logged) - runs_left)
    print(f"caught up {caught_up:.0f} s after the faults ended; daemon exit {code}")
    for problem in (problems + shown)[:20]:
        print(f"  wrong: {problem}")
    results.add("runs", len(logged))
    results.add("points logged", sum(logged.values()) * len(TAGS))
    for what, count in sorted(counts.items()):
        results.add(what, count)
    results.add("points not in the mirror exactly once", len(problems), target="0",
                met=not problems)  # fmt: skip
    results.add("series TensorBoard shows wrongly", len(shown), target="0", met=not shown)
    results.add("runs removed", len(removed), target="0", met=not removed)
    results.add("daemon peak RSS", daemon.peak_mb, "MB", f"< {MAX_RSS_MB}",
                daemon.peak_mb < MAX_RSS_MB)  # fmt: skip
    results.add("catch-up after the faults", caught_up, "s")
    return not (problems or shown or removed or daemon.peak_mb >= MAX_RSS_MB)


def shown_wrongly(port: int, logged: dict[str, int]) -> list[str]:
    """Series TensorBoard shows other than steps 0..n-1 once each (waiting up to 3 minutes)."""
    deadline, problems = time.monotonic() + 180, ["TensorBoard not asked"]
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as board:
        while problems and time.monotonic() < deadline:
            problems = []
            for name, steps in logged.items():
                for tag in TAGS:
                    try:
                        points = board.get(
                            "/data/plugin/scalars/scalars",
                            params={"run": f"soak/soak/{name}", "tag": tag},
                        ).json()
                    except (httpx.HTTPError, ValueError) as error:  # fmt: skip
                        problems.append(f"{name}/{tag}: {type(error).__name__}")
                        continue
                    if [int(point[1]) for point in points] != list(range(steps)):
                        problems.append(f"{name}/{tag}: {len(points)} points shown of {steps}")
            if problems:
                time.sleep(5)
    return problems


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
