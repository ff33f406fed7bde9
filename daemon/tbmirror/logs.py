"""Structured logging (structlog): JSON lines when stderr is not a terminal, colours when it is.

Libraries that log through the standard `logging` module (APScheduler, httpx) are rendered the
same way; their chatty INFO lines are held back.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

# Library loggers and the lowest level of theirs that we show.
QUIET_LIBRARIES = {
    "apscheduler": logging.ERROR,  # "skipped: maximum number of running instances" is by design
    "httpx": logging.WARNING,  # one INFO line per request
    "httpcore": logging.WARNING,
    "azure": logging.WARNING,  # azure-identity logs every token request
    # watchdog logs each inotify event at debug: with the daemon's log in the config's watched
    # directory, each line was an event that logged a line (a loop that filled the disk)
    "watchdog": logging.INFO,
    "tzlocal": logging.INFO,  # (APScheduler's time zone lookup)
}


def configure(level: str = "info", stream: TextIO | None = None) -> None:
    """Route every structlog event to `stream` (stderr by default) at `level` and above."""
    stream = stream or sys.stderr
    renderer: structlog.typing.Processor
    if stream.isatty():
        renderer = structlog.dev.ConsoleRenderer()
    else:
        renderer = structlog.processors.JSONRenderer(default=str)
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                timestamper,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.getLevelNamesMapping()[level.upper()])
    for name, quiet in QUIET_LIBRARIES.items():
        logging.getLogger(name).setLevel(quiet)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            timestamper,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
