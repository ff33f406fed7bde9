"""The `tbmirror` command: run | sync | check | status | prune | demo. Parses, dispatches to
app.py (or the daemon) and renders.

Every TbmirrorError ends a command with one line on stderr and its exit code (78 for config).

Imports: this module imports only the standard library and tbmirror.errors at its top; app,
config, logs, structlog and rich are imported inside the functions that use them, so that
`tbmirror --help` imports no engine (they bring numpy, TensorBoard's protos and the HTTP
stack), and each command pays only for what it uses (tests/test_start.py holds --help to it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from tbmirror import __version__
from tbmirror.errors import ConfigError, TbmirrorError

if TYPE_CHECKING:
    from tbmirror.app import PassReport
    from tbmirror.config import Settings

DEFAULT_CONFIG = "/etc/tbmirror/config.yaml"


def main(argv: Sequence[str] | None = None) -> int:
    """The command `argv` (None: the program's own, sys.argv, which a one-shot command ends with
    the process: see _exit_now) as its exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    from tbmirror import logs  # (imports here and below: see the module's docstring)
    from tbmirror.config import load_settings

    try:
        if args.command is demo_command:
            logs.configure(args.log_level or "warning")  # the banner stays in view
            # (its teardown of mlflow, scikit-learn and matplotlib would take seconds)
            _exit_now(demo_command(args))
        try:
            settings = load_settings(Path(args.config), offline=getattr(args, "offline", False))
        except TbmirrorError:
            raise
        except Exception as error:  # a bug, but a config problem is one line: never a traceback
            raise ConfigError(f"{args.config}: cannot be loaded ({type(error).__name__})") from None
        logs.configure(args.log_level or settings.logging.level)
        result: int = args.command(settings, args)
        if argv is None and args.command in ONE_SHOT:
            _exit_now(result)
        return result
    except TbmirrorError as error:
        print(f"tbmirror: {error}", file=sys.stderr)
        return error.exit_code
    except OSError as error:  # the mirror root or state on a disk we cannot use
        print(f"tbmirror: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _exit_now(code: int) -> NoReturn:
    """End the process with `code` once stdout and stderr are flushed, without the interpreter's
    teardown (tens of milliseconds of a `sync` with nothing to do: it frees the ~600 modules a
    command imports, one by one). Only for a command that has closed all it opened (its journal,
    engines, clients and threads) when it returns: the demo and the ONE_SHOT commands."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tbmirror", description="Mirror experiment tracking run history into TensorBoard."
    )
    parser.add_argument("--version", action="version", version=f"tbmirror {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(
        name: str, handler: Callable[..., int], help: str, config: bool = True, more: str = ""
    ) -> argparse.ArgumentParser:
        """A subcommand: `help` in the list of commands, with `more` in its own --help."""
        sub = commands.add_parser(
            name, help=help, description=f"{help} {more}".strip(), formatter_class=_DefaultsShown
        )
        sub.set_defaults(command=handler)
        sub.add_argument(
            "--log-level",
            choices=["debug", "info", "warning", "error"],
            help="how much is logged to stderr (default: "
            + ("warning, so the banner stays in view)" if not config else "the config's "
               "logging.level; JSON lines unless stderr is a terminal)"),
        )  # fmt: skip
        if not config:
            return sub
        sub.add_argument(
            "--config",
            default=os.environ.get("TBMIRROR_CONFIG", DEFAULT_CONFIG),
            help=f"YAML config file (default: $TBMIRROR_CONFIG, else {DEFAULT_CONFIG})",
        )
        return sub

    sync = command(
        "sync",
        sync_command,
        "One full incremental pass over every source, then exit.",
        more="Prints a line per source: runs listed and written, metric points, images and "
        "tables written.",
    )
    sync.add_argument(
        "--reconcile",
        action="store_true",
        help="re-check every series of every run, not only those that look changed",
    )
    check = command(
        "check",
        check_command,
        "Tell what in the config will not work (--offline: the file alone).",
        more="One line each: the file, mirror.root and mirror.state writable, TensorBoard's and "
        "the health endpoint's ports free, every source reachable and every experiment found. "
        "Exits 1 if anything fails, 78 if the file is invalid.",
    )
    check.add_argument(
        "--offline",
        action="store_true",
        help="check the file alone (schema, values, paths against each other): nothing is "
        "contacted, no secret file read, nothing on the disk looked at (for CI)",
    )
    command("run", run_command, "Run the daemon: poll, mirror, serve TensorBoard (systemd).")
    prune = command(
        "prune", prune_command, "Remove what no configured source or experiment owns any more."
    )
    prune.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    status = command(
        "status",
        status_command,
        "Show what is mirrored, from the state store.",
        more="Per experiment: its runs, metric points, images and tables, the last successful "
        "sync, the lag (seconds since then) and errors.",
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")
    demo = command(
        "demo", demo_command, "Mirror a throw-away local MLflow server (needs the demo extra).",
        config=False,
    )  # fmt: skip
    demo.add_argument(
        "--dir", type=Path, default="tbmirror-demo", help="demo folder (kept and reused)"
    )
    demo.add_argument("--port", type=int, default=6006, help="TensorBoard port")
    demo.add_argument("--health-port", type=int, default=9464, help="/healthz and /metrics port")
    return parser


class _DefaultsShown(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default in its help, unless it has none (a flag) or the help says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def sync_command(settings: Settings, args: argparse.Namespace) -> int:
    import structlog

    from tbmirror import app

    log = structlog.get_logger(__name__)
    ok = True
    for report in app.sync_sources(settings, args.reconcile, _progress):
        if report.failure is None:  # a failed pass was logged as source_failed
            log.info("source_synced", **vars(report))
        print(_summary(report))
        ok &= report.ok
    return 0 if ok else 1


def demo_command(args: argparse.Namespace) -> int:
    from tbmirror.demo import run_demo

    return run_demo(args.dir, args.port, args.health_port)


def run_command(settings: Settings, args: argparse.Namespace) -> int:
    from tbmirror.service.daemon import Daemon

    return Daemon(settings, Path(args.config)).run()


def prune_command(settings: Settings, args: argparse.Namespace) -> int:
    from tbmirror import app

    results = app.prune(settings, args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for unowned, error in results:
        counts = f"{len(unowned.runs)} runs, {len(unowned.tails)} files"
        what = f"{unowned.dir}: {counts} ({unowned.why})"
        print(f"kept  {what}: {error}" if error else f"{verb}  {what}")
    if not results:
        print("nothing to prune: every source and experiment in the state store is configured")
    return 1 if any(error for _, error in results) else 0


def status_command(settings: Settings, args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from tbmirror import app

    rows = app.status_rows(settings)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table()
    columns = ("source", "experiment", "runs", "points", "images", "tables", "last sync", "lag",
               "failed", "errors")  # fmt: skip
    for column in columns:
        table.add_column(column, overflow="fold")  # names wrap on a narrow terminal, not cut
    for row in rows:
        table.add_row(
            row["source"],
            row["experiment"],
            f"{row['runs']:,}",
            *(f"{row[k]:,}" if row[k] is not None else "-" for k in ("points", "images", "tables")),
            _local_time(row["last_sync"]),
            f"{row['lag_seconds']:.0f} s" if row["lag_seconds"] is not None else "-",
            f"{row['failed_runs']:,}",
            row["prune"]
            or f"{row['consecutive_errors']}"
            + (f": {row['last_error']}" if row["last_error"] else ""),
        )
    Console().print(table)
    if settings.tensorboard.enabled:
        print(f"TensorBoard: {settings.tensorboard.shown_url}")
        memory = app.tensorboard_memory(settings)
        print(f"TensorBoard memory: {memory.text}" if memory.ok else f"WARNING  {memory.text}")
    return 0


def _local_time(timestamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp)) if timestamp else "never"


def check_command(settings: Settings, args: argparse.Namespace) -> int:
    from tbmirror import app

    findings = app.check(settings, args.config, args.offline)
    for finding in findings:
        print(f"{'ok  ' if finding.ok else 'FAIL'}  {finding.subject}: {finding.text}")
    return 0 if all(finding.ok for finding in findings) else 1


def _summary(report: PassReport) -> str:
    if report.failure is not None:
        return f"FAIL  {report.source}: {report.failure}"
    listed = _count(report.runs_listed, report.unit)
    text = (
        f"{'ok  ' if report.ok else 'FAIL'}  {report.source}: {listed}, "
        f"{report.runs_written} written, {report.points} points, "
        + (f"{report.images} images, " if report.images else "")
        + (f"{report.tables} tables, " if report.tables else "")
        + f"{report.bytes_written} bytes, "
        + (f"{report.requests} requests, " if report.unit == "runs" else "")
        + f"{report.seconds:.1f} s"
    )
    if report.failed_runs:
        failed = ", ".join(report.failed_runs[:5])
        text += f"; {_count(len(report.failed_runs), report.unit)} failed: {failed}"
    if report.runs_retired:
        text += f"; {report.runs_retired} left the selection"
    if report.missing_experiments:
        text += f"; experiments not found: {', '.join(report.missing_experiments)}"
    return text


def _count(number: int, plural: str) -> str:
    """`1 run`, `2 runs` (`plural` ends in s)."""
    return f"{number:,} {plural[:-1] if number == 1 else plural}"


@contextmanager
def _progress(source: str) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar callback on a terminal; nothing otherwise."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

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


# The commands that end the program with _exit_now (`run`, the daemon, ends as usual).
ONE_SHOT = (sync_command, check_command, status_command, prune_command)
