"""What the benchmarks share: a config for one source, and the daemon as a subprocess."""

from __future__ import annotations

import subprocess
import sys
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
