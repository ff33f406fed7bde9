"""What the benchmarks share: their results written as JSON, workloads built straight into
MLflow's store, a config for one source, `tbmirror sync` and the daemon as subprocesses, and
process figures from /proc."""

from __future__ import annotations

import datetime
import importlib.metadata
import io
import json
import logging
import os
import platform
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml
from mlflow.entities.experiment_tag import ExperimentTag
from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric, SqlRun, SqlTag
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from mlflow.utils.uri import append_to_uri_path
from sqlalchemy import insert

from tbmirror.local_mlflow import SERVED_ROOT, LocalMlflowServer

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
BATCH_RUNS = 500  # runs built per transaction, at most
BATCH_POINTS = 250_000  # metric rows per transaction, at most (a run's own may pass it)


# --- results, as JSON -------------------------------------------------------------------------


@dataclass
class Figure:
    """One measured figure: what it is, its value and unit, and a target when there is one."""

    name: str
    value: float | int | str
    unit: str = ""
    target: str = ""
    met: bool | None = None


@dataclass
class Results:
    """A benchmark's results: started at construction (the date, the command line, the machine
    and its 1-minute load average then, so a run on a busy machine shows), figures added as they
    are measured, everything the script prints kept too, then `write` saves it all as
    benchmarks/results/<name>-<date>.json (-2, -3, ... for a second run that day).

    Use as `with Results("freshness") as results:`; the file is written when the block ends
    without an exception (a failed run leaves no result)."""

    name: str
    workload: str = ""
    figures: list[Figure] = field(default_factory=list)
    started: datetime.datetime = field(
        default_factory=lambda: datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    )
    command: list[str] = field(default_factory=lambda: ["python", _script(), *sys.argv[1:]])
    load_average: float = field(default_factory=lambda: os.getloadavg()[0])
    _printed: io.StringIO = field(default_factory=io.StringIO)
    _stdout: TextIO | None = None

    def add(
        self,
        name: str,
        value: float | str,
        unit: str = "",
        target: str = "",
        met: bool | None = None,
    ) -> None:
        """Record one figure (a float is kept to 4 significant digits)."""
        if isinstance(value, float):
            value = float(f"{value:.4g}")
        self.figures.append(Figure(name, value, unit, target, met))

    def __enter__(self) -> Results:
        self._stdout = sys.stdout
        sys.stdout = _Tee(self._stdout, self._printed)
        return self

    def __exit__(self, kind: object, error: object, traceback: object) -> None:
        assert self._stdout is not None
        sys.stdout = self._stdout
        if kind is None:
            print(f"results: {self.write().relative_to(REPO)}")

    def write(self) -> Path:
        """Save the results; the path written."""
        RESULTS.mkdir(parents=True, exist_ok=True)
        day = self.started.date().isoformat()
        path, count = RESULTS / f"{self.name}-{day}.json", 1
        while path.exists():
            count += 1
            path = RESULTS / f"{self.name}-{day}-{count}.json"
        document = {
            "benchmark": self.name,
            "date": self.started.isoformat(),
            "command": " ".join(self.command),
            "machine": machine(),
            "load_average_1m": round(self.load_average, 2),
            "workload": self.workload,
            "figures": [vars(figure) for figure in self.figures],
            "output": self._printed.getvalue().splitlines(),
        }
        path.write_text(json.dumps(document, indent=2) + "\n")
        return path


def _script() -> str:
    """The running script's path, from the repository's root when it is inside it."""
    path = Path(sys.argv[0]).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else sys.argv[0]


class _Tee(io.TextIOBase):
    """Writes to the terminal and keeps a copy."""

    def __init__(self, terminal: TextIO, copy: io.StringIO) -> None:
        self.terminal, self.copy = terminal, copy

    def write(self, text: str) -> int:
        self.copy.write(text)
        return self.terminal.write(text)

    def flush(self) -> None:
        self.terminal.flush()


def machine() -> dict[str, Any]:
    """What ran the benchmark: CPUs, the CPU model, Python, tbmirror's version and the commit."""
    model = ""
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break

    def git(*arguments: str) -> str:
        result = subprocess.run(["git", "-C", str(REPO), *arguments], capture_output=True,
                                text=True)  # fmt: skip
        return result.stdout.strip() if result.returncode == 0 else ""

    changed = git("status", "--porcelain", "--untracked-files=no", "--", "daemon", "benchmarks")
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1),
        "python": platform.python_version(),
        "tbmirror": importlib.metadata.version("tbmirror"),
        "commit": git("rev-parse", "--short=12", "HEAD") + (" (modified)" if changed else ""),
    }


# --- workloads, straight into MLflow's store ---------------------------------------------------


def open_store(server: LocalMlflowServer) -> SqlAlchemyStore:
    """The sqlite store `server` serves (and its artifact root), opened (or created) in this
    process; build before the server starts, and dispose of its engine after."""
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # the store's "Creating tables..."
    server.directory.mkdir(parents=True, exist_ok=True)
    root = SERVED_ROOT if server.serve_artifacts else str(server.directory / "artifacts")
    return SqlAlchemyStore(f"sqlite:///{server.directory / 'mlflow.db'}", root)


def build_runs(
    store: SqlAlchemyStore, experiment: str, runs: int, keys: list[str], points: int
) -> str:
    """The id of `experiment`, holding `runs` FINISHED runs run00000.. with `points` points of
    each of `keys` (both at least 1): built by the first call, completed by the next if cut short.

    Run i starts at origin + i s (origin: a day and `runs` s before the first build, so
    run{runs-1} is the newest, started a day ago); point `step` (0..points-1) of the k-th key
    has timestamp start + step s and value (i + k + step) % 97 / 97; the run ends at
    start + points s. The rows are those create_run, log_batch and set_terminated write (the run,
    its mlflow.runName tag, its metrics and latest_metrics), inserted with MLflow's own table
    models, a batch of runs per transaction (the store API takes ~70 ms a run, the REST API
    longer): a batch is there whole or not at all, and runs missing by name are built. The shape
    (runs x keys x points) and the origin are tags of the experiment: another shape exits."""
    shape = f"{runs}x{len(keys)}x{points}"
    found = store.get_experiment_by_name(experiment)
    if found is None:
        origin = int(time.time() * 1000) - 86_400_000 - 1000 * runs
        tags = [ExperimentTag("shape", shape), ExperimentTag("origin_ms", str(origin))]
        experiment_id = store.create_experiment(experiment, tags=tags)
    elif found.tags.get("shape") == shape:
        experiment_id, origin = found.experiment_id, int(found.tags["origin_ms"])
    else:
        raise SystemExit(f"{experiment} exists with another shape: use a fresh --workdir")
    location = store.get_experiment(experiment_id).artifact_location
    with store.ManagedSessionMaker() as session:
        query = session.query(SqlRun.name).filter(SqlRun.experiment_id == int(experiment_id))
        done = {name for (name,) in query}
    missing = [index for index in range(runs) if f"run{index:05d}" not in done]
    batch = max(1, min(BATCH_RUNS, BATCH_POINTS // (len(keys) * points)))
    started = shown = time.monotonic()
    for first in range(0, len(missing), batch):
        created = [(index, origin + 1000 * index, uuid.uuid4().hex)
                   for index in missing[first : first + batch]]  # fmt: skip
        run_rows = [
            {"run_uuid": run_id, "name": f"run{index:05d}", "source_type": "UNKNOWN",
             "source_name": "", "entry_point_name": "", "user_id": "unknown",
             "status": "FINISHED", "start_time": start, "end_time": start + 1000 * points,
             "deleted_time": None, "source_version": "", "lifecycle_stage": "active",
             "artifact_uri": append_to_uri_path(location, run_id, "artifacts"),
             "experiment_id": int(experiment_id)}
            for index, start, run_id in created
        ]  # fmt: skip
        tags = [{"key": "mlflow.runName", "value": f"run{index:05d}", "run_uuid": run_id}
                for index, _, run_id in created]  # fmt: skip
        rows = [
            {"key": key, "value": (index + k + step) % 97 / 97, "timestamp": start + 1000 * step,
             "step": step, "is_nan": False, "run_uuid": run_id}
            for index, start, run_id in created
            for k, key in enumerate(keys)
            for step in range(points)
        ]  # fmt: skip
        latest = [row for row in rows if row["step"] == points - 1]  # the greatest (step, time)
        with store.ManagedSessionMaker() as session:
            session.execute(insert(SqlRun.__table__), run_rows)
            session.execute(insert(SqlTag.__table__), tags)
            session.execute(insert(SqlMetric.__table__), rows)
            session.execute(insert(SqlLatestMetric.__table__), latest)
        if time.monotonic() - shown >= 30:
            shown = time.monotonic()
            print(f"  built {first + len(created):,}/{len(missing):,} runs, "
                  f"{shown - started:.0f} s", flush=True)  # fmt: skip
    if missing:
        print(f"built {len(missing):,} runs x {len(keys)} keys x {points} points in "
              f"{time.monotonic() - started:.0f} s", flush=True)  # fmt: skip
    return str(experiment_id)


# --- tbmirror ----------------------------------------------------------------------------------


def write_config(work: Path, tracking_uri: str, experiment: str, **sections: Any) -> Path:
    """tbmirror.yaml in `work` (mirror root and state there too) for one MLflow source, bench."""
    source = {"name": "bench", "type": "mlflow", "tracking_uri": tracking_uri,
              "experiments": [experiment], **sections.pop("source", {})}  # fmt: skip
    return write_source_config(work, source, **sections)


def write_source_config(work: Path, source: dict[str, Any], **sections: Any) -> Path:
    """tbmirror.yaml in `work` (mirror root `work/logs`, state there) for the one `source`."""
    document = {
        "mirror": {"root": str(work / "logs"), "state": str(work / "state.db")},
        "sources": [source],
        **sections,
    }
    config = work / "tbmirror.yaml"
    config.write_text(yaml.safe_dump(document))
    return config


@dataclass
class Synced:
    """One `tbmirror sync`: wall time (cold start included), peak RSS, CPU seconds (user + system),
    its pass report (the source_synced event: runs_listed, points, requests, bytes_written,
    seconds, ...), and the warnings and errors it logged, counted by event ("request_retrying": a
    request sent again)."""

    seconds: float
    peak_mb: float
    cpu_seconds: float
    report: dict[str, Any]
    complaints: Counter[str]

    def complained(self) -> str:
        """What it logged as warnings or errors ("; logged: <event> <count>, ..."), or ""."""
        shown = ", ".join(f"{event} {n:,}" for event, n in sorted(self.complaints.items()))
        return f"; logged: {shown}" if shown else ""


def run_sync(config: Path) -> Synced:
    """`tbmirror sync --config config` to completion, under /usr/bin/time (the peak RSS wait4
    reports for a child forked from this process would count this process's pages too). Exits
    with its output if it fails. The config must log at level info (the default)."""
    command = [
        "/usr/bin/time", "-f", "peak-kb %M cpu %U %S",
        sys.executable, "-m", "tbmirror", "sync", "--config", str(config),
    ]  # fmt: skip
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.monotonic() - started
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    report = next((e for e in events if e.get("event") == "source_synced"), None)
    if result.returncode != 0 or report is None:
        raise SystemExit(f"tbmirror sync failed ({result.returncode}):\n{result.stdout}\n"
                         f"{result.stderr[-3000:]}")  # fmt: skip
    peak_kb, _, user, system = result.stderr.rsplit("peak-kb ", 1)[1].split()[:4]
    complaints = Counter(e["event"] for e in events if e.get("level") in ("warning", "error"))
    return Synced(seconds, int(peak_kb) / 1024, float(user) + float(system), report, complaints)


def start_daemon(config: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """`tbmirror run` in its own process group, logging to `log_path`."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "tbmirror", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )


# --- processes, from /proc ---------------------------------------------------------------------

TICKS = os.sysconf("SC_CLK_TCK")


def tree(pid: int) -> list[int]:
    """`pid` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo.extend(children.get(found[-1], []))
    return found


def status_mb(pid: int, field: str) -> float:
    """A size of /proc/<pid>/status in MB ("VmRSS"; "VmHWM", the peak RSS); 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def rss_mb(pid: int) -> float:
    return status_mb(pid, "VmRSS")


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICKS


def wait_until_idle(pid: int, until: float) -> None:
    """Wait until `pid`'s process tree uses < 5 % of a core over 6 s, or `until` (monotonic)."""
    while time.monotonic() < until:
        pids = tree(pid)
        before = cpu_seconds(pids)
        time.sleep(6)
        if (cpu_seconds(pids) - before) / 6 < 0.05:
            return


def tree_rss_mb(pid: int) -> dict[int, float]:
    """RSS in MB of `pid` and each of its descendants."""
    return {member: rss_mb(member) for member in tree(pid)}


def start_tensorboard(root: Path, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    """A TensorBoard on `root` at 127.0.0.1:`port` with the daemon's default sampling (stop it
    with tbmirror.processes.stop_process_group), its output in `log_path`."""
    command = [
        sys.executable, "-m", "tensorboard.main", "--logdir", str(root), "--host", "127.0.0.1",
        "--port", str(port), "--reload_interval", "5", "--load_fast", "true",
        "--samples_per_plugin", "scalars=100000,images=1000,text=100",
    ]  # fmt: skip
    with log_path.open("wb") as log:
        return subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
