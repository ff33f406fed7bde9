"""sd_notify: tell systemd (Type=notify) that we are ready, alive, reloading or stopping.

A no-op when $NOTIFY_SOCKET is unset (not started by systemd). The protocol is one datagram of
newline-separated KEY=VALUE lines to the unix socket named in $NOTIFY_SOCKET ('@' = abstract).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import structlog

log = structlog.get_logger(__name__)


class Notifier:
    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        address = environ.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        watched = usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid()))
        self.watchdog_interval = int(usec) / 2e6 if watched else None
        """Seconds between WATCHDOG=1 pings (half systemd's WatchdogSec), or None."""

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def notify(self, **fields: str) -> None:
        """Send fields, e.g. notify(READY="1", STATUS="..."); errors are logged, never raised."""
        if not self._address:
            return
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, self._address)
        except OSError as error:
            log.warning("sd_notify_failed", error=str(error))
