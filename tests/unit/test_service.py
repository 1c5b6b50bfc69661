"""The daemon's service tree: what it decides from Redis's answers, its start and its stop."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel
from zope.interface import implementer

from goophry_tx.config import Config, TaskType
from goophry_tx.consumer import AtMostOnceTake, AtomicTake, State
from goophry_tx.recovery import BEAT_SCRIPT, LEAVE_SCRIPT, RECOVER_SCRIPT
from goophry_tx.redis import ConnectionError, RedisHealth, RedisLink
from goophry_tx.schedule import MOVE_DUE_SCRIPT
from goophry_tx.service import GoophryService, Phase, parse_redis_version
from tests.unit.fakes import (
    FakeRedisLink,
    MemoryProcessReactor,
    assert_no_result,
    success_result_of,
)


def test_the_version_is_read_from_info_server() -> None:
    info = b"# Server\r\nredis_git_sha1:00000000\r\nredis_version:6.0.16\r\nos:Linux\r\n"
    assert parse_redis_version(info) == (6, 0, 16)
    assert parse_redis_version(b"# Server\r\nredis_version:7.2.4\r\n") == (7, 2, 4)
    assert parse_redis_version(b"nothing here") == ()


def _check(info: bytes) -> tuple[SimpleNamespace, list[dict[str, object]]]:
    events: list[dict[str, object]] = []
    fake = SimpleNamespace(take=None, log=Logger(observer=events.append))
    GoophryService._check_version(fake, info)  # type: ignore[arg-type]
    return fake, events


def test_redis_older_than_6_2_falls_back_to_blpop_and_says_so() -> None:
    service, events = _check(b"redis_version:6.0.16\r\n")
    assert service.take is AtMostOnceTake
    assert [e["log_level"] for e in events] == [LogLevel.warn]
    assert "BLPOP" in str(events[0]["log_format"])
    assert events[0]["version"] == "6.0.16"


def test_redis_6_2_and_newer_keeps_blmove() -> None:
    for info in (b"redis_version:6.2.0\r\n", b"redis_version:7.0.15\r\n", b"no version\r\n"):
        service, events = _check(info)
        assert service.take is AtomicTake
        assert events == []


# --------------------------------------------------------------------------
# The service tree: what starts and stops, in which order


class FakeReactor(Clock):
    """A Clock that also notes what the service asks of a running reactor."""

    def __init__(self) -> None:
        super().__init__()
        self.when_running: list[Callable[[], object]] = []
        self.triggers: list[tuple[str, str]] = []

    def callWhenRunning(self, f: Callable[..., object], *args: object) -> None:
        # Not run: one of them wraps this process's signal handlers.
        self.when_running.append(lambda: f(*args))

    def addSystemEventTrigger(
        self, phase: str, event: str, f: Callable[..., object], *args: object
    ) -> None:
        self.triggers.append((phase, event))


class LinkService(FakeRedisLink, Service):
    """A fake Redis link that is a child service too; notes its start, stop and commands."""

    def __init__(self, purpose: str, journal: list[str]) -> None:
        FakeRedisLink.__init__(self, connected=False)
        self.purpose = purpose
        self._journal = journal

    def startService(self) -> None:
        Service.startService(self)
        self._journal.append(f"start {self.purpose}")

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        self._journal.append(f"stop {self.purpose}")
        return succeed(None)

    def execute(self, *command: Any) -> Deferred[Any]:
        name = SCRIPTS.get(command[1], command[0]) if command[0] == "EVAL" else command[0]
        self._journal.append(f"{self.purpose}: {name}")
        return super().execute(*command)


SCRIPTS = {
    BEAT_SCRIPT: "BEAT",
    RECOVER_SCRIPT: "RECOVER",
    LEAVE_SCRIPT: "LEAVE",
    MOVE_DUE_SCRIPT: "MOVE",
}
INFO = b"# Server\r\nredis_version:7.2.4\r\nuptime_in_seconds:3600\r\n"


class Spawner(MemoryProcessReactor):
    def __init__(self, journal: list[str]) -> None:
        super().__init__()
        self._journal = journal

    def close(self) -> None:
        self._journal.append("close spawner")


@attrs.define
class Tree:
    reactor: FakeReactor
    service: GoophryService
    journal: list[str]

    @property
    def control(self) -> LinkService:
        return self.service.control  # type: ignore[return-value]

    def started(self) -> list[str]:
        """Start, and answer Redis until the consumers start."""
        self.service.startService()
        self.control.reconnect()
        self.control.take("INFO").answer(INFO)
        self.control.take("HGETALL").answer([])
        self.control.take("EVAL").answer([])
        self.control.take("SMEMBERS").answer([])
        assert self.service.phase is Phase.CONSUMING
        # The due-entry mover's first look: nothing scheduled.
        self.control.take("EVAL").answer([b"", 0, 0])
        return self.take()

    def take(self) -> list[str]:
        """The journal so far, emptied."""
        taken, self.journal[:] = list(self.journal), []
        return taken


def tree(shutdown_timeout: float = 0.0) -> Tree:
    reactor = FakeReactor()
    journal: list[str] = []
    config = Config(
        path="/etc/goophry.json",
        redis_queue_key="q",
        tasks=(TaskType("t", "/s/t.sh"), TaskType("u", "/s/u.sh")),
        shutdown_timeout=shutdown_timeout,
    )
    service = GoophryService(
        config,
        reactor,
        instance="i1",
        links=lambda purpose: LinkService(purpose, journal),  # type: ignore[arg-type, return-value]
        spawner=lambda: Spawner(journal),  # type: ignore[arg-type, return-value]
    )
    service.log = Logger(observer=lambda event: None)
    return Tree(reactor, service, journal)


def test_the_links_start_then_redis_is_asked_then_the_heartbeat_then_the_consumers() -> None:
    t = tree()
    t.service.startService()
    assert t.take() == ["start control", "start take:0", "start take:1", "start pause"]
    assert t.service.phase is Phase.STARTING
    # Nothing is asked before the control link is up.
    t.reactor.advance(10)
    assert t.take() == []

    t.control.reconnect()
    assert t.take() == ["control: INFO"]
    t.control.take("INFO").answer(INFO)
    assert t.take() == ["control: HGETALL"]
    t.control.take("HGETALL").answer([])
    # The heartbeat is a child now; its first beat registers this instance
    # and reads the paused types.
    assert t.take() == ["control: BEAT", "control: SMEMBERS"]
    assert t.service.heartbeat.parent is t.service
    assert t.service.phase is Phase.STARTING
    t.control.take("EVAL").answer([])
    assert t.service.phase is Phase.STARTING
    t.control.take("SMEMBERS").answer([b"u"])
    assert t.service.phase is Phase.CONSUMING
    # A type paused when the daemon starts is held from the first.
    held = {c.task_type.type: c.state for c in t.service.consumers}
    assert held == {"t": State.RECONCILING, "u": State.RECONCILING}
    assert [c.paused for c in t.service.consumers] == [False, True]
    assert t.service.stats.paused == {"u"}
    # The heartbeat's timer, nothing else.
    [beat] = t.reactor.getDelayedCalls()
    assert beat.getTime() == t.reactor.seconds() + t.service.heartbeat.interval


def test_the_stop_goes_consumers_heartbeat_links_spawner_and_leaves_no_timer() -> None:
    t = tree(shutdown_timeout=30)
    t.started()
    stopped = t.service.stopService()
    assert t.service.phase is Phase.STOPPING
    # The consumers had nothing running; the heartbeat unregisters while
    # the links are still up.
    assert t.take() == ["control: LEAVE"]
    assert_no_result(stopped)
    t.control.take("EVAL").answer(1)
    assert t.take() == ["stop pause", "stop take:1", "stop take:0", "stop control", "close spawner"]
    success_result_of(stopped)
    assert t.service.phase is Phase.IDLE
    assert t.service.heartbeat.parent is None
    assert t.reactor.getDelayedCalls() == []


def test_a_stop_while_the_first_beat_is_under_way_waits_for_it_then_unregisters() -> None:
    t = tree()
    t.service.startService()
    t.control.reconnect()
    t.control.take("INFO").answer(INFO)
    t.control.take("HGETALL").answer([])
    t.take()
    stopped = t.service.stopService()
    assert t.take() == []
    t.control.take("EVAL").answer([])
    t.control.take("SMEMBERS").answer([])
    # The consumers never started.
    assert t.service.phase is Phase.STOPPING
    assert t.take() == ["control: LEAVE"]
    t.control.take("EVAL").answer(1)
    assert t.take() == ["stop pause", "stop take:1", "stop take:0", "stop control", "close spawner"]
    success_result_of(stopped)
    assert t.reactor.getDelayedCalls() == []


def test_a_stop_before_redis_answers_cancels_the_wait_and_never_registers() -> None:
    t = tree()
    t.service.startService()
    t.control.reconnect()
    t.take()
    stopped = t.service.stopService()
    # The INFO still waiting for its answer is given up.
    assert t.control.pending == []
    assert t.take() == ["stop pause", "stop take:1", "stop take:0", "stop control", "close spawner"]
    success_result_of(stopped)
    assert t.reactor.getDelayedCalls() == []


def test_a_failed_start_is_tried_again_until_a_stop_cancels_the_next_try() -> None:
    t = tree()
    t.service.startService()
    t.control.reconnect()
    t.control.take("INFO").refuse(ConnectionError("Lost connection"))
    t.take()
    [retry] = t.reactor.getDelayedCalls()
    t.reactor.advance(0.5)
    assert t.take() == ["control: INFO"]
    t.control.take("INFO").refuse(ConnectionError("Lost connection"))
    assert len(t.reactor.getDelayedCalls()) == 1

    success_result_of(t.service.stopService())
    assert t.reactor.getDelayedCalls() == []
    t.reactor.advance(10)
    assert "control: INFO" not in t.take()


def test_the_second_signal_and_the_exit_status_are_set_up_at_start() -> None:
    t = tree()
    t.service.startService()
    assert t.reactor.triggers == [("after", "shutdown")]
    # Once the reactor runs: SIGTERM's and SIGINT's handlers are wrapped,
    # SIGHUP's installed, and the start announced.
    assert len(t.reactor.when_running) == 3


# --------------------------------------------------------------------------
# A Redis link's reconnect timer


@implementer(IStreamClientEndpoint)
class RefusingEndpoint:
    def __init__(self) -> None:
        self.attempts = 0

    def connect(self, factory: object) -> Deferred[Any]:
        self.attempts += 1
        return fail(ConnectionRefusedError("Connection refused"))


def test_a_redis_link_stopped_between_attempts_cancels_the_next_one() -> None:
    clock = Clock()
    endpoint = RefusingEndpoint()
    health = RedisHealth(clock, "127.0.0.1:1")
    health.log = Logger(observer=lambda event: None)
    link = RedisLink(clock, endpoint, health, name="control")
    link.startService()
    assert endpoint.attempts == 1
    [retry] = clock.getDelayedCalls()
    clock.advance(retry.getTime())
    assert endpoint.attempts == 2
    success_result_of(link.stopService())
    assert clock.getDelayedCalls() == []
    clock.advance(60)
    assert endpoint.attempts == 2


# --------------------------------------------------------------------------
# What the service wires together: pausing, the metrics' readers and counters


def test_pause_messages_reach_the_consumers_and_every_beat_reads_the_set() -> None:
    t = tree()
    t.started()
    [pause] = [s for s in t.service if getattr(s, "purpose", None) == "pause"]
    assert isinstance(pause, LinkService)
    assert pause.subscription is not None and pause.subscription[0] == "q:paused"
    pause.reconnect()
    # Subscribed (again): what was missed meanwhile is read from the set.
    assert t.take() == ["control: SMEMBERS"]
    t.control.take("SMEMBERS").answer([])
    pause.publish(b"pause u")
    assert [c.paused for c in t.service.consumers] == [False, True]
    assert t.service.stats.as_json()["Paused"] == {"t": False, "u": True}
    pause.publish(b"resume u")
    assert t.service.stats.as_json()["Paused"] == {"t": False, "u": False}
    # The backstop: one read per beat.
    t.reactor.advance(t.service.heartbeat.interval)
    # The due-entry mover looks on its own timer (answered in started()).
    assert t.take() == ["control: MOVE", "control: BEAT", "control: SMEMBERS"]


def test_the_queue_figures_are_read_for_the_configured_types() -> None:
    t = tree()
    t.started()
    assert t.service.stats.read_queues is not None
    d = t.service.stats.read_queues()
    t.control.take("HKEYS").answer([b"i1"])
    figures = t.control.take("MULTI")
    assert figures.command == (
        "MULTI",
        ("LLEN", "q:t"),
        ("LLEN", "q:t:failed"),
        ("ZCARD", "q:t:scheduled"),
        ("LLEN", "q:t:inflight:i1"),
        ("LLEN", "q:u"),
        ("LLEN", "q:u:failed"),
        ("ZCARD", "q:u:scheduled"),
        ("LLEN", "q:u:inflight:i1"),
    )
    figures.answer([1, 2, 7, 3, 4, 5, 8, 6])
    read = success_result_of(d)
    assert {name: f.queued for name, f in read.items()} == {"t": 1, "u": 4}
    assert {name: f.scheduled for name, f in read.items()} == {"t": 7, "u": 8}


def test_redis_coming_back_is_counted() -> None:
    t = tree()
    t.service.health.log = Logger(observer=lambda event: None)
    t.service.health.down("control", "refused")
    t.service.health.up("control")
    assert t.service.stats.redis_reconnects == 1
