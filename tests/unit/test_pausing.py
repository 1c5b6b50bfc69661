"""goophry_tx.pausing: the paused types as a daemon learns them, with a fake Redis."""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel
from zope.interface.verify import verifyObject

from goophry_tx.config import TaskType
from goophry_tx.consumer import Consumer
from goophry_tx.errorscript import ErrorNotifier
from goophry_tx.keys import Keys
from goophry_tx.outcomes import OutcomeRecorder, type_counters
from goophry_tx.pausing import PauseWatcher
from goophry_tx.process.runner import ScriptRunner
from goophry_tx.redis import ISubscriber, ResponseError
from goophry_tx.schedule import RetryTimes
from goophry_tx.store import OutcomeStore
from tests.unit.fakes import FakeRedisLink, MemoryProcessReactor, success_result_of

KEYS = Keys("q")


@attrs.define
class Rig:
    clock: Clock
    control: FakeRedisLink
    subscriber: FakeRedisLink
    watcher: PauseWatcher
    consumers: dict[str, Consumer]
    events: list[dict[str, Any]]

    def paused(self) -> dict[str, bool]:
        return {name: c.paused for name, c in self.consumers.items()}

    def logged(self) -> list[str]:
        return [
            f"{e['type']} {'paused' if 'paused' in e['log_format'] else 'resumed'}"
            for e in self.events
            if e["log_level"] is LogLevel.info
        ]


def make_rig() -> Rig:
    clock = Clock()
    control, subscriber = FakeRedisLink(), FakeRedisLink(connected=False)
    processes = MemoryProcessReactor()
    runner = ScriptRunner(processes, clock)
    tasks = [TaskType("t", "/s/t.sh"), TaskType("u", "/s/u.sh")]
    outcomes = OutcomeRecorder(
        tasks=tasks,
        counters=type_counters(["t", "u"]),
        store=OutcomeStore(control, KEYS, "i1", 0, clock),
        notifier=ErrorNotifier(runner, None),
        retry_times=RetryTimes(clock, 3600.0, lambda due: None),
    )
    consumers = {
        t.type: Consumer(
            task_type=t,
            keys=KEYS,
            instance="i1",
            blocking=FakeRedisLink(),
            control=control,
            outcomes=outcomes,
            runner=runner,
            clock=clock,
        )
        for t in tasks
    }
    events: list[dict[str, Any]] = []
    watcher = PauseWatcher(control, KEYS, set(), lambda: consumers.values(), clock)
    watcher.startService()
    watcher.log = Logger(observer=events.append)
    subscriber.subscribe(KEYS.paused_channel, watcher)
    return Rig(clock, control, subscriber, watcher, consumers, events)


def test_it_is_a_subscriber() -> None:
    assert verifyObject(ISubscriber, make_rig().watcher)


def test_a_read_pauses_the_types_in_the_set_and_resumes_those_gone() -> None:
    rig = make_rig()
    d = rig.watcher.read()
    assert rig.control.take("SMEMBERS").command == ("SMEMBERS", "q:paused")
    rig.control.take("SMEMBERS").answer([b"t", b"elsewhere"])
    success_result_of(d)
    assert rig.paused() == {"t": True, "u": False}
    # Types run elsewhere are shown too; only those run here are logged.
    assert rig.watcher.paused == {"t", "elsewhere"}
    assert rig.logged() == ["t paused"]

    rig.watcher.read()
    rig.control.take("SMEMBERS").answer([b"u"])
    assert rig.paused() == {"t": False, "u": True}
    assert rig.logged() == ["t paused", "u paused", "t resumed"]


def test_messages_pause_and_resume_at_once_and_log_each_change_once() -> None:
    rig = make_rig()
    rig.subscriber.reconnect()
    rig.control.take("SMEMBERS").answer([])
    rig.subscriber.publish(b"pause t")
    assert rig.paused() == {"t": True, "u": False}
    # Told twice (a pause already seen): one line.
    rig.subscriber.publish(b"pause t")
    rig.subscriber.publish(b"resume t")
    assert rig.paused() == {"t": False, "u": False}
    assert rig.logged() == ["t paused", "t resumed"]
    assert rig.control.pending == []


def test_every_resubscription_reads_the_set_again() -> None:
    rig = make_rig()
    rig.subscriber.reconnect()
    rig.control.take("SMEMBERS").answer([])
    rig.subscriber.lose_connection()
    # Paused while the link was down: the message is lost, the set is not.
    rig.subscriber.reconnect()
    rig.control.take("SMEMBERS").answer([b"u"])
    assert rig.paused() == {"t": False, "u": True}


def test_messages_heard_during_a_read_win_over_its_older_answer() -> None:
    rig = make_rig()
    rig.subscriber.reconnect()
    # SMEMBERS ran before the pause; its answer arrives after the message.
    rig.subscriber.publish(b"pause t")
    rig.control.take("SMEMBERS").answer([])
    assert rig.paused() == {"t": True, "u": False}
    # And in order: paused then resumed during the next read.
    rig.watcher.read()
    rig.subscriber.publish(b"pause u")
    rig.subscriber.publish(b"resume u")
    rig.control.take("SMEMBERS").answer([b"t", b"u"])
    assert rig.paused() == {"t": True, "u": False}


def test_a_read_that_meets_redis_away_is_made_again_once_it_is_back() -> None:
    rig = make_rig()
    rig.control.lose_connection()
    # The subscribing link came back before the one the set is read on.
    rig.subscriber.reconnect()
    rig.watcher.read()
    assert rig.control.names() == []
    rig.control.reconnect()
    rig.control.take("SMEMBERS").answer([b"t"])
    assert rig.paused() == {"t": True, "u": False}
    assert rig.events[-1]["type"] == "t"


def test_a_read_refused_for_a_while_is_made_again_shortly() -> None:
    rig = make_rig()
    d = rig.watcher.read()
    rig.control.take("SMEMBERS").refuse(ResponseError("LOADING Redis is loading"))
    success_result_of(d)
    # A second failure while the first waits adds no second retry.
    rig.watcher.read()
    rig.control.take("SMEMBERS").refuse(ResponseError("LOADING Redis is loading"))
    rig.clock.advance(0.5)
    assert rig.control.names() == ["SMEMBERS"]
    rig.control.take("SMEMBERS").answer([])
    assert rig.clock.getDelayedCalls() == []


def test_a_stop_forgets_the_read_waiting_to_be_made_again() -> None:
    rig = make_rig()
    rig.watcher.read()
    rig.control.take("SMEMBERS").refuse(ResponseError("LOADING Redis is loading"))
    rig.watcher.stopService()
    assert rig.clock.getDelayedCalls() == []


def test_a_failed_read_is_logged_unless_redis_is_away_and_never_fails() -> None:
    rig = make_rig()
    d = rig.watcher.read()
    rig.control.take("SMEMBERS").refuse(ResponseError("WRONGTYPE not a set"))
    success_result_of(d)
    [event] = rig.events
    assert event["log_failure"].check(ResponseError)
    assert rig.paused() == {"t": False, "u": False}


def test_an_unknown_message_is_logged_and_changes_nothing() -> None:
    rig = make_rig()
    rig.subscriber.reconnect()
    rig.control.take("SMEMBERS").answer([])
    rig.subscriber.publish(b"stop t")
    [event] = rig.events
    assert event["log_level"] is LogLevel.warn
    assert rig.paused() == {"t": False, "u": False}
