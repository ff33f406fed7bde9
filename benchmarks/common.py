"""What the benchmarks share: a config for one source, and the daemon as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml


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


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


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
