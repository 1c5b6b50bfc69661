"""
Where the log goes: stdout, or a file opened for append that is reopened on
SIGUSR1, so that logrotate (or anything that moves the file away) can rotate
it without restarting the daemon.
"""

from __future__ import annotations

import io
import signal
import sys
from collections.abc import Callable
from typing import IO, Any

from twisted.logger import ILogObserver, LogEvent, formatEventAsClassicLogText
from zope.interface import implementer


@implementer(ILogObserver)
class ReopeningFileObserver:
    """Writes one line per event, with a timestamp, to a file it can reopen."""

    def __init__(self, path: str | None, stream: IO[str] | None = None) -> None:
        self.path = path
        self._file: IO[str] = stream if stream is not None else self._open()

    def _open(self) -> IO[str]:
        if self.path is None:
            return sys.stdout
        return open(self.path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115

    def reopen(self) -> None:
        """Close and open the file again, under the same name."""
        if self.path is None:
            return
        old, self._file = self._file, self._open()
        old.close()

    def __call__(self, event: LogEvent) -> None:
        text = formatEventAsClassicLogText(event)
        if text is None:
            return
        try:
            self._file.write(text)
            self._file.flush()
        except (OSError, ValueError, io.UnsupportedOperation):
            pass


#: The log file named on the twistd plugin's command line or in the config.
plugin_logfile: str | None = None


def plugin_observer() -> ReopeningFileObserver:
    """twistd's C{--logger}: log to L{plugin_logfile}, reopened on SIGUSR1."""
    from twisted.internet import reactor

    observer = ReopeningFileObserver(plugin_logfile)
    install_reopen_signal(observer, reactor.callFromThread)  # type: ignore[attr-defined]
    return observer


def install_reopen_signal(
    observer: ReopeningFileObserver, call_from_thread: Callable[..., Any]
) -> None:
    """Reopen the log file on SIGUSR1 (from the reactor's thread)."""
    if observer.path is None:
        return
    signal.signal(signal.SIGUSR1, lambda *_: call_from_thread(observer.reopen))
