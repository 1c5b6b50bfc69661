"""
Where the log goes and how it reads: stdout, or a file opened for append that
is reopened on SIGUSR1, so that logrotate (or anything that moves the file
away) can rotate it without restarting the daemon; one line of text per
event, or one JSON object per line (C{LogFormat: "json"}) for a log
collector.
"""

from __future__ import annotations

import io
import json
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import ILogObserver, LogEvent, formatEvent, formatEventAsClassicLogText
from twisted.python.failure import Failure
from zope.interface import implementer

#: Turns an event into the text written for it (a line, with its newline), or
#: C{None} to write nothing.
Formatter = Callable[[LogEvent], "str | None"]

#: Keys that old-style C{twisted.python.log} events carry beside the message;
#: they repeat what the JSON line already says.
_LEGACY_KEYS = frozenset({"message", "isError", "system", "time", "format", "failure", "why"})

#: A field whose name holds one of these is never written, whatever it holds.
_SECRET_NAMES = ("password", "secret", "token")

#: What L{_json_value} gives for a value that is left out.
_OMIT = object()


def _text(value: bytes) -> str:
    """Bytes as text: what a reader wants to see, not a Python repr."""
    return value.decode("utf-8", "backslashreplace")


def _json_value(value: object) -> object:
    """
    A field's value as JSON: numbers, booleans and None as they are, bytes
    and strings as text, sequences as lists of those; anything else is left
    out (L{_OMIT} is returned), since its repr may say more than it should.
    """
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes | bytearray):
        return _text(bytes(value))
    if isinstance(value, Sequence):
        items = [_json_value(item) for item in value]
        return _OMIT if _OMIT in items else items
    return _OMIT


def format_event_as_json(event: LogEvent) -> str | None:
    """
    One JSON object on one line: C{time} (ISO 8601, UTC), C{level},
    C{message}, then the event's own fields (C{type}, C{args}, C{duration},
    C{error}, C{instance}, ...), with bytes written as text.  A failure adds
    C{error} (when the event has none) and C{traceback}.
    """
    when = datetime.fromtimestamp(event.get("log_time", 0.0), UTC)
    level = event.get("log_level")
    record: dict[str, object] = {
        "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "level": level.name if level is not None else "info",
        "message": formatEvent(event),
    }
    legacy = event.get("log_namespace") == "log_legacy" or "log_legacy" in event
    for key, value in event.items():
        if key.startswith("log_") or key in record or (legacy and key in _LEGACY_KEYS):
            continue
        if any(secret in key.lower() for secret in _SECRET_NAMES):
            continue
        shown = _json_value(value)
        if shown is not _OMIT:
            record[key] = shown
    failure = event.get("log_failure")
    if isinstance(failure, Failure):
        record.setdefault("error", failure.getErrorMessage())
        record["traceback"] = failure.getTraceback()
    return json.dumps(record, ensure_ascii=False) + "\n"


#: The formatter of each LogFormat.
FORMATTERS: Mapping[str, Formatter] = {
    "text": formatEventAsClassicLogText,
    "json": format_event_as_json,
}


@implementer(ILogObserver)
class ReopeningFileObserver:
    """Writes one line per event to a file it can reopen (or to stdout)."""

    def __init__(
        self,
        path: str | None,
        stream: IO[str] | None = None,
        formatter: Formatter = formatEventAsClassicLogText,
    ) -> None:
        self.path = path
        self.formatter = formatter
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
        text = self.formatter(event)
        if text is None:
            return
        try:
            self._file.write(text)
            self._file.flush()
        except (OSError, ValueError, io.UnsupportedOperation):
            # Nowhere left to say it: a log that cannot be written must not
            # stop the daemon.
            pass


def make_observer(
    path: str | None, log_format: str, call_from_thread: Callable[..., Any]
) -> ReopeningFileObserver:
    """
    The observer every command line logs to: C{path} (or stdout) in
    C{log_format}, reopened on SIGUSR1.
    """
    observer = ReopeningFileObserver(path, formatter=FORMATTERS[log_format])
    install_reopen_signal(observer, call_from_thread)
    return observer


#: The log file and format named on the twistd plugin's command line or in
#: the config, for L{plugin_observer}: twistd's C{--logger} names a callable
#: and gives it no arguments.
plugin_logfile: str | None = None
plugin_log_format: str = "text"


def plugin_observer() -> ReopeningFileObserver:
    """twistd's C{--logger}: log to L{plugin_logfile} in L{plugin_log_format}."""
    from twisted.internet import reactor

    return make_observer(plugin_logfile, plugin_log_format, reactor.callFromThread)  # type: ignore[attr-defined]


def install_reopen_signal(
    observer: ReopeningFileObserver, call_from_thread: Callable[..., Any]
) -> None:
    """Reopen the log file on SIGUSR1 (from the reactor's thread)."""
    if observer.path is None:
        return
    signal.signal(signal.SIGUSR1, lambda *_: call_from_thread(observer.reopen))
