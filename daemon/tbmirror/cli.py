"""The `tbmirror` command: run | sync | check | status | demo.

Every TbmirrorError ends a command with one line on stderr and its exit code (78 for config).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import structlog
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tbmirror import __version__, logs
from tbmirror.config import Settings, UploadsSourceSettings, load_settings, without_userinfo
from tbmirror.engines import build_engine
from tbmirror.errors import TbmirrorError
from tbmirror.mirror.writer import MirrorWriter
from tbmirror.report import PassReport
from tbmirror.service.daemon import Daemon, open_mirror
from tbmirror.sources.mlflow import MlflowSource
from tbmirror.sources.uploads import UploadTree
from tbmirror.state import SourceStatus, State

log = structlog.get_logger(__name__)

DEFAULT_CONFIG = "/etc/tbmirror/config.yaml"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command is demo_command:
            logs.configure(args.log_level or "info")
            return demo_command(args)
        settings = load_settings(Path(args.config))
        logs.configure(args.log_level or settings.logging.level)
        result: int = args.command(settings, args)
        return result
    except TbmirrorError as error:
        print(f"tbmirror: {error}", file=sys.stderr)
        return error.exit_code
    except OSError as error:  # the mirror root or state on a disk we cannot use
        print(f"tbmirror: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tbmirror", description="Mirror experiment tracking run history into TensorBoard."
    )
    parser.add_argument("--version", action="version", version=f"tbmirror {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(
        name: str, handler: Callable[..., int], help: str, config: bool = True
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(command=handler)
        sub.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
        if not config:
            return sub
        sub.add_argument(
            "--config",
            default=os.environ.get("TBMIRROR_CONFIG", DEFAULT_CONFIG),
            help=f"YAML config file (default: $TBMIRROR_CONFIG or {DEFAULT_CONFIG})",
        )
        return sub

    sync = command("sync", sync_command, "One full incremental pass over every source, then exit.")
    sync.add_argument(
        "--reconcile",
        action="store_true",
        help="re-check every series of every run, not only those that look changed",
    )
    command("check", check_command, "Validate the config and probe each source.")
    command("run", run_command, "Run the daemon: poll, mirror, serve TensorBoard (systemd).")
    status = command("status", status_command, "Show what is mirrored, from the state store.")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    demo = command(
        "demo", demo_command, "Mirror a throw-away local MLflow server (needs the demo extra).",
        config=False,
    )  # fmt: skip
    demo.add_argument("--dir", type=Path, default=Path("tbmirror-demo"), help="demo folder")
    demo.add_argument("--port", type=int, default=6006, help="TensorBoard port")
    return parser


def sync_command(settings: Settings, args: argparse.Namespace) -> int:
    state, layout = open_mirror(settings)
    writer = MirrorWriter(layout)
    reports = []
    try:
        for source_settings in settings.sources:
            engine = build_engine(source_settings, state, writer)
            try:
                with _progress(engine.name) as progress:
                    report = engine.run_pass(reconcile_all=args.reconcile, progress=progress)
            finally:
                engine.close()
            log.info("source_synced", **vars(report))
            print(_summary(report))
            reports.append(report)
    finally:
        state.close()
    return 0 if all(report.ok for report in reports) else 1


def demo_command(args: argparse.Namespace) -> int:
    from tbmirror.demo import run_demo

    return run_demo(args.dir, args.port)


def run_command(settings: Settings, args: argparse.Namespace) -> int:
    return Daemon(settings, Path(args.config)).run()


def status_command(settings: Settings, args: argparse.Namespace) -> int:
    path = settings.mirror.state
    if not path.exists():
        raise TbmirrorError(f"no state store at {path}: nothing has been mirrored yet")
    state = State(path, read_only=True)
    try:
        statuses, totals = state.source_status(), state.totals()
    finally:
        state.close()
    now = time.time()
    rows: list[dict[str, Any]] = []
    for source in settings.sources:
        status = statuses.get(source.name) or SourceStatus(source.name)
        experiments = [(d, r, p) for s, d, r, p in totals if s == source.name] or [("-", 0, 0)]
        for directory, runs, points in experiments:
            rows.append({
                "source": source.name,
                "experiment": directory.split("/", 1)[-1],
                "runs": runs,
                "points": points,
                "last_sync": status.last_success,
                "lag_seconds": round(now - status.last_success, 1) if status.last_success else None,
                "consecutive_errors": status.consecutive_errors,
                "last_error": status.last_error,
            })  # fmt: skip
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table("source", "experiment", "runs", "points", "last sync", "lag", "errors")
    for row in rows:
        table.add_row(
            row["source"],
            row["experiment"],
            f"{row['runs']:,}",
            f"{row['points']:,}",
            _local_time(row["last_sync"]),
            f"{row['lag_seconds']:.0f} s" if row["lag_seconds"] is not None else "-",
            f"{row['consecutive_errors']}"
            + (f": {row['last_error']}" if row["last_error"] else ""),
        )
    Console().print(table)
    return 0


def _local_time(timestamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp)) if timestamp else "never"


def check_command(settings: Settings, args: argparse.Namespace) -> int:
    failures = 0
    for source_settings in settings.sources:
        if isinstance(source_settings, UploadsSourceSettings):
            line = _check_uploads(source_settings)
            failures += line.startswith("FAIL")
            print(line)
            continue
        source = MlflowSource.from_settings(source_settings)
        auth = source_settings.auth.type if source_settings.auth else "none"
        try:
            experiments, missing = source.experiments()
            visible = len(source.client.experiments())
        except TbmirrorError as error:
            failures += 1
            print(f"FAIL  {source.name}: {error}")
            continue
        finally:
            source.close()
        names = ", ".join(sorted(e.name for e in experiments.values())) or "none"
        line = (
            f"ok    {source.name}: {without_userinfo(source_settings.tracking_uri)} "
            f"(auth {auth}, {visible} experiments visible): experiments {names}"
        )
        if missing:
            line += f"; not found: {', '.join(missing)}"
        print(line)
    return 1 if failures else 0


def _check_uploads(settings: UploadsSourceSettings) -> str:
    """One line on an upload directory: there and readable, and what it holds to mirror."""
    tree = UploadTree(settings)
    problems: list[str] = []
    if not settings.path.is_dir():
        return f"FAIL  {settings.name}: upload directory {settings.path} does not exist"
    kinds = Counter(f.kind for f in tree.scan(problem=lambda r, m: problems.append(f"{r}: {m}")))
    found = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items())) or "no files to mirror"
    line = f"ok    {settings.name}: {settings.path} ({settings.observer} observer): {found}"
    if problems:
        line += f"; {len(problems)} skipped: {'; '.join(problems[:3])}"
    return line


def _summary(report: PassReport) -> str:
    if report.error:
        return f"FAIL  {report.source}: {report.error}"
    text = (
        f"{'ok  ' if report.ok else 'FAIL'}  {report.source}: {report.runs_listed} {report.unit}, "
        f"{report.runs_written} written, {report.points} points, {report.bytes_written} bytes, "
        + (f"{report.requests} requests, " if report.unit == "runs" else "")
        + f"{report.seconds:.1f} s"
    )
    if report.failed_runs:
        failed = ", ".join(report.failed_runs[:5])
        text += f"; {len(report.failed_runs)} {report.unit} failed: {failed}"
    if report.missing_experiments:
        text += f"; experiments not found: {', '.join(report.missing_experiments)}"
    return text


@contextmanager
def _progress(source: str) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar callback on a terminal; nothing otherwise."""
    if not sys.stderr.isatty():
        yield None
        return
    with Progress(
        TextColumn(f"[bold]{source}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=True,
    ) as bar:
        task = bar.add_task(source, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update
