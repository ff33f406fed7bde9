"""The `tbmirror` command: sync | check.

Every TbmirrorError ends a command with one line on stderr and its exit code (78 for config).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import structlog
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tbmirror import __version__, logs
from tbmirror.config import Settings, load_settings
from tbmirror.errors import TbmirrorError
from tbmirror.mirror.layout import MirrorLayout
from tbmirror.mirror.recovery import recover
from tbmirror.mirror.writer import MirrorWriter
from tbmirror.sources.mlflow import MlflowSource
from tbmirror.state import State
from tbmirror.sync import PassReport, SourceSync

log = structlog.get_logger(__name__)

DEFAULT_CONFIG = "/etc/tbmirror/config.yaml"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(Path(args.config))
        logs.configure(args.log_level or settings.logging.level)
        result: int = args.command(settings, args)
        return result
    except TbmirrorError as error:
        print(f"tbmirror: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tbmirror", description="Mirror experiment tracking run history into TensorBoard."
    )
    parser.add_argument("--version", action="version", version=f"tbmirror {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(name: str, handler: Callable[..., int], help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(command=handler)
        sub.add_argument(
            "--config",
            default=os.environ.get("TBMIRROR_CONFIG", DEFAULT_CONFIG),
            help=f"YAML config file (default: $TBMIRROR_CONFIG or {DEFAULT_CONFIG})",
        )
        sub.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
        return sub

    sync = command("sync", sync_command, "One full incremental pass over every source, then exit.")
    sync.add_argument(
        "--reconcile",
        action="store_true",
        help="re-check every series of every run, not only those that look changed",
    )
    command("check", check_command, "Validate the config and probe each source.")
    return parser


def open_mirror(settings: Settings) -> tuple[State, MirrorLayout]:
    """Open the state store and bring the mirror root back to what it says (recovery)."""
    layout = MirrorLayout(settings.mirror.root)
    try:
        layout.root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise TbmirrorError(f"cannot create the mirror root {layout.root}: {error}") from error
    state = State(settings.mirror.state)
    report = recover(state, layout, [source.name for source in settings.sources])
    log.info("recovered", **vars(report))
    return state, layout


def sync_command(settings: Settings, args: argparse.Namespace) -> int:
    state, layout = open_mirror(settings)
    writer = MirrorWriter(layout)
    reports = []
    try:
        for source_settings in settings.sources:
            source = MlflowSource.from_settings(source_settings)
            try:
                with _progress(source.name) as progress:
                    report = SourceSync(source, state, writer).run_pass(
                        reconcile_all=args.reconcile, progress=progress
                    )
            finally:
                source.close()
            log.info("source_synced", **vars(report))
            print(_summary(report))
            reports.append(report)
    finally:
        state.close()
    return 0 if all(report.ok for report in reports) else 1


def check_command(settings: Settings, args: argparse.Namespace) -> int:
    failures = 0
    for source_settings in settings.sources:
        source = MlflowSource.from_settings(source_settings)
        try:
            experiments, missing = source.experiments()
        except TbmirrorError as error:
            failures += 1
            print(f"FAIL  {source.name}: {error}")
            continue
        finally:
            source.close()
        names = ", ".join(sorted(e.name for e in experiments.values())) or "none"
        line = f"ok    {source.name}: {source_settings.tracking_uri}: experiments {names}"
        if missing:
            line += f"; not found: {', '.join(missing)}"
        print(line)
    return 1 if failures else 0


def _summary(report: PassReport) -> str:
    if report.error:
        return f"FAIL  {report.source}: {report.error}"
    text = (
        f"{'ok  ' if report.ok else 'FAIL'}  {report.source}: {report.runs_listed} runs, "
        f"{report.runs_written} written, {report.points} points, {report.bytes_written} bytes, "
        f"{report.requests} requests, {report.seconds:.1f} s"
    )
    if report.failed_runs:
        text += f"; {len(report.failed_runs)} runs failed: {', '.join(report.failed_runs[:5])}"
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
