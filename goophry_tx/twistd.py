"""
What the daemon changes in twistd's ways, and why.

A Twisted service would need none of this.  Each adjustment keeps a promise
of the original daemon that twistd's defaults (shared by the command line,
which runs the same reactor) would break, and reaches into a private part
of Twisted to do it: they are kept here, together, so that a Twisted release
that changes those parts has one place to look.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.interfaces import IReactorCore


def fail_at_start(service: StreamServerEndpointService) -> StreamServerEndpointService:
    """
    Make a port that cannot be had stop the daemon at start, as the original
    did, rather than be logged while the daemon runs on without it.

    C{_raiseSynchronously} is Twisted's own switch for this (private, and
    read only by the service's first start): C{privilegedStartService} then
    raises instead of logging.
    """
    service._raiseSynchronously = True
    return service


def exit_zero_after_clean_stop(reactor: IReactorCore, clean: Callable[[], bool]) -> None:
    """
    Exit with status 0 after a stop by signal that finished its work, as
    the original did.

    The reactor remembers the signal that stopped it (C{_exitSignal}), and
    twistd then kills itself with that signal once the reactor has stopped,
    to exit as the signal would have (status -15 for SIGTERM).  Forgetting
    it after the shutdown, when C{clean()} says the stop was clean, makes
    twistd exit 0.
    """

    def forget_exit_signal() -> None:
        if clean() and hasattr(reactor, "_exitSignal"):
            reactor._exitSignal = None

    reactor.addSystemEventTrigger("after", "shutdown", forget_exit_signal)


def on_second_signal(reactor: Any, stopping: Callable[[], bool], act: Callable[[], None]) -> None:
    """
    Call C{act} in the reactor's thread when SIGTERM or SIGINT comes while
    C{stopping()}; the first one goes to the reactor, as before.

    To the reactor, a second signal only asks it to stop again, which it
    is already doing; to an operator, it is how running scripts are
    stopped at once (README.rst, "Lifecycle and signals").  The reactor
    installs its handlers as it starts, so they are wrapped once it runs;
    a handler that is not Python's (the signal ignored, or left to the
    system) is left alone.

    @param reactor: an L{IReactorCore} that is also an
        L{IReactorThreads<twisted.internet.interfaces.IReactorThreads>}.
    """

    def wrap() -> None:
        for number in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(number)
            if not callable(previous):
                continue

            def handler(
                num: int, frame: FrameType | None, previous: Callable[..., Any] = previous
            ) -> None:
                if stopping():
                    reactor.callFromThread(act)
                else:
                    previous(num, frame)

            signal.signal(number, handler)

    reactor.callWhenRunning(wrap)
