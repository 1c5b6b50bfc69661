"""
Telling systemd how the daemon is doing (C{sd_notify}), for C{Type=notify}
units: C{READY=1} once it takes entries, C{RELOADING=1} around a reload,
C{STOPPING=1} at shutdown, and C{STATUS=} lines for C{systemctl status}.

The protocol is one datagram to the socket named by C{NOTIFY_SOCKET}; a few
lines of C{socket} do it, so there is no dependency on libsystemd.  Without
C{NOTIFY_SOCKET} (not under systemd) every call does nothing.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping

from twisted.application.internet import TimerService
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger


class SystemdNotifier:
    """
    Sends state changes to the service manager's notification socket.

    @ivar address: the socket's address, C{None} when there is none to tell.
    """

    log = Logger()

    def __init__(self, address: str | None) -> None:
        if address and address.startswith("@"):
            # An abstract socket: its name starts with a NUL byte.
            address = "\0" + address[1:]
        self.address = address or None
        self._warned = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> SystemdNotifier:
        """The notifier for the socket named by C{NOTIFY_SOCKET}, if any."""
        return cls(environ.get("NOTIFY_SOCKET"))

    def notify(self, **fields: str) -> None:
        """
        Send C{fields} as C{KEY=value} lines in one datagram.

        A failure to send is logged once and otherwise ignored: the daemon's
        work does not depend on systemd hearing about it.
        """
        if self.address is None:
            return
        message = "\n".join(f"{key}={value}" for key, value in fields.items())
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message.encode("utf-8"), self.address)
        except OSError as e:
            if not self._warned:
                self._warned = True
                self.log.warn(
                    "cannot notify systemd at {address}: {error}",
                    address=self.address.replace("\0", "@"),
                    error=e.strerror or str(e),
                )

    def ready(self, status: str | None = None) -> None:
        """The daemon takes entries (at start, or after a reload)."""
        self.notify(READY="1", **({"STATUS": status} if status else {}))

    def reloading(self) -> None:
        """A reload begins; L{ready} ends it."""
        # systemd 253 and later want the time the reload began with it.
        self.notify(RELOADING="1", MONOTONIC_USEC=str(time.monotonic_ns() // 1000))

    def stopping(self) -> None:
        """The daemon stops: no more entries are taken."""
        self.notify(STOPPING="1")

    def status(self, text: str) -> None:
        """A line for C{systemctl status}, such as C{"3 types, 5 running"}."""
        self.notify(STATUS=text)


class StatusService(TimerService):
    """
    Tells systemd how the daemon is doing (C{STATUS=}), every few seconds,
    only when that has changed since it was last said: a datagram is cheap,
    and none at all is sent while nothing moves.  Run it (as a child
    service) only when there is a socket to tell.
    """

    def __init__(
        self,
        notifier: SystemdNotifier,
        status: Callable[[], str],
        clock: IReactorTime,
        interval: float = 5.0,
    ) -> None:
        """
        @param status: the line to show, such as C{"3 types, 5 running"}.
        """
        super().__init__(interval, self._tick)
        self.clock = clock
        self._notifier = notifier
        self._status = status
        #: The line last sent, with C{READY=1} or on its own.
        self.said: str | None = None

    def ready(self) -> None:
        """C{READY=1} with the status line: the daemon takes entries (again)."""
        self.said = self._status()
        self._notifier.ready(self.said)

    def _tick(self) -> None:
        text = self._status()
        if text != self.said:
            self.said = text
            self._notifier.status(text)
