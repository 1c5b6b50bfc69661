"""
What the three ways of starting the daemon share (C{goophry}, C{twistd
goophry}, C{twistd -y goophry.tac}): the configuration check that C{-t} and
C{--check} run, the warnings logged before the start-up line, and one line
on stderr, not a traceback, when the start fails for a reason the operator
fixes (a port in use).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReactorCore
from twisted.logger import Logger

from goophry_tx import __version__
from goophry_tx.config import Config, ConfigError, check_config

log = Logger()


def version_text() -> str:
    """What C{-V} prints."""
    return f"Goophry version {__version__}"


def check(
    path: str,
    logfile: str | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
    program: str = "goophry",
) -> int:
    """
    Check the configuration at C{path} as a start would, without Redis.
    The daemon's C{-t} and C{goophry-ctl check} both run it.

    @param logfile: the log file given on the command line, if any.
    @param program: the name that starts each line printed.
    @return: the exit status: 0 after one "configuration OK" line on C{out},
        2 after the message a start prints on C{err}.  Warnings go to C{err}.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        config = check_config(path, logfile)
    except ConfigError as e:
        print(config_error_text(e, program), file=err)
        return 2
    for warning in config.warnings:
        print(f"{program}: warning: {warning}", file=err)
    print(f"{program}: {path}: configuration OK", file=out)
    return 0


def config_error_text(error: ConfigError, program: str = "goophry") -> str:
    """The one line a start prints for a configuration it refuses."""
    return f"{program}: {error}"


def listen_error_text(error: CannotListenError) -> str:
    """The one line a start prints for a port it cannot have."""
    reason = getattr(error.socketError, "strerror", None) or str(error.socketError)
    return f"goophry: StatsInterface {error.interface}:{error.port}: cannot listen: {reason}"


def log_warnings(config: Config) -> None:
    """
    Log the configuration's warnings; called before the service starts, so
    that they come before its start-up line.
    """
    for warning in config.warnings:
        log.warn("{warning}", warning=warning)


ExceptHook = Callable[[type[BaseException], BaseException, TracebackType | None], object]


def report_listen_errors_in_one_line(err: TextIO | None = None) -> ExceptHook:
    """
    Under twistd, a port that cannot be had is raised out of twistd itself
    (it removes its pid file first, then lets the exception go): print it in
    one line as C{goophry} does, and leave every other exception to Python.
    The line goes to the process's own stderr (C{sys.__stderr__}): twistd
    has sent C{sys.stderr} into the log by then.

    @return: the hook installed as C{sys.excepthook}.
    """
    previous = sys.excepthook

    def hook(
        kind: type[BaseException], value: BaseException, traceback: TracebackType | None
    ) -> None:
        if isinstance(value, CannotListenError):
            print(listen_error_text(value), file=err or sys.__stderr__)
        else:
            previous(kind, value, traceback)

    sys.excepthook = hook
    return hook


def when_running(reactor: IReactorCore) -> None:
    """
    What the daemon's process does once C{reactor} runs, the same for the
    three ways of starting it, and never done by the service itself (a test
    process builds many services): freeze the start-up heap
    (L{goophry_tx.heap}) and leave C{SIGCHLD} to the kernel
    (L{goophry_tx.process.spawn.discard_child_signals}).
    """
    # Imported here: C{-t} and C{-V} need neither.
    from goophry_tx.heap import freeze_when_running
    from goophry_tx.process.spawn import discard_child_signals

    freeze_when_running(reactor)
    discard_child_signals(reactor)
