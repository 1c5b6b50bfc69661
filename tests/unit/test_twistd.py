"""goophry_tx.twistd: what the daemon changes in twistd's ways, each on its own."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import pytest
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.protocol import Factory
from zope.interface import implementer

from goophry_tx.twistd import exit_zero_after_clean_stop, fail_at_start, on_second_signal


class Reactor:
    """Just what the adjustments use: triggers, callWhenRunning, callFromThread."""

    def __init__(self) -> None:
        self._exitSignal: int | None = signal.SIGTERM
        self.triggers: list[tuple[str, str, Callable[[], None]]] = []
        self.when_running: list[Callable[[], None]] = []
        self.from_thread: list[Callable[[], None]] = []

    def addSystemEventTrigger(self, phase: str, event: str, f: Callable[[], None]) -> None:
        self.triggers.append((phase, event, f))

    def callWhenRunning(self, f: Callable[[], None]) -> None:
        self.when_running.append(f)

    def callFromThread(self, f: Callable[[], None]) -> None:
        self.from_thread.append(f)


@implementer(IStreamServerEndpoint)
class TakenPort:
    def listen(self, factory: object) -> Deferred[Any]:
        return fail(CannotListenError("127.0.0.1", 8080, OSError("Address already in use")))


def test_a_port_that_cannot_be_had_fails_the_start() -> None:
    service = fail_at_start(StreamServerEndpointService(TakenPort(), Factory()))
    with pytest.raises(CannotListenError):
        service.privilegedStartService()


@pytest.mark.parametrize("clean", [True, False])
def test_the_exit_signal_is_forgotten_after_a_clean_stop_only(clean: bool) -> None:
    reactor = Reactor()
    exit_zero_after_clean_stop(reactor, lambda: clean)  # type: ignore[arg-type]
    [(phase, event, forget)] = reactor.triggers
    assert (phase, event) == ("after", "shutdown")
    forget()
    assert reactor._exitSignal == (None if clean else signal.SIGTERM)


@pytest.fixture
def handlers() -> Iterator[list[int]]:
    """Python handlers for SIGTERM and SIGINT that note their signal; put back after."""
    previous = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
    received: list[int] = []

    def note(number: int, frame: FrameType | None) -> None:
        received.append(number)

    for number in previous:
        signal.signal(number, note)
    try:
        yield received
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def test_a_second_signal_while_stopping_acts_instead_of_stopping_again(
    handlers: list[int],
) -> None:
    reactor = Reactor()
    stopping = False
    acted: list[str] = []
    on_second_signal(reactor, lambda: stopping, lambda: acted.append("now"))
    # Nothing is wrapped until the reactor runs and has installed its handlers.
    assert signal.getsignal(signal.SIGTERM).__name__ == "note"  # type: ignore[union-attr]
    [wrap] = reactor.when_running
    wrap()

    for number in (signal.SIGTERM, signal.SIGINT):
        handler = signal.getsignal(number)
        assert callable(handler)
        handler(number, None)
    assert handlers == [signal.SIGTERM, signal.SIGINT]
    assert reactor.from_thread == []

    stopping = True
    handler = signal.getsignal(signal.SIGTERM)
    assert callable(handler)
    handler(signal.SIGTERM, None)
    assert handlers == [signal.SIGTERM, signal.SIGINT]
    [act] = reactor.from_thread
    act()
    assert acted == ["now"]


def test_a_signal_left_to_the_system_is_left_alone(handlers: list[int]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    reactor = Reactor()
    on_second_signal(reactor, lambda: True, lambda: None)
    reactor.when_running[0]()
    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
