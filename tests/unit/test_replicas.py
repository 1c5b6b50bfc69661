"""goophry_tx.replicas, and the WAITs the consumer and the store send with RedisWaitReplicas."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.logger import Logger, LogLevel

from goophry_tx.config import Config, TaskType
from goophry_tx.redis import ResponseError
from goophry_tx.replicas import WAIT_TIMEOUT_MS, ReplicaWait
from goophry_tx.service import GoophryService
from tests.unit.fakes import FakeRedisLink, assert_no_result, success_result_of
from tests.unit.test_consumer import INFLIGHT, QUEUE, blmove, entry, evalsha, make_rig
from tests.unit.test_service import FakeReactor, LinkService, Spawner, Tree

WAIT = ("WAIT", 2, WAIT_TIMEOUT_MS)


def logged(wait: ReplicaWait) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    wait.log = Logger(observer=events.append)
    return events


# ReplicaWait


def test_after_fires_with_the_result_once_wait_answers() -> None:
    link = FakeRedisLink()
    d = ReplicaWait(2).after(link, "result")
    assert [p.command for p in link.pending] == [WAIT]
    assert_no_result(d)
    link.take("WAIT").answer(2)
    assert success_result_of(d) == "result"


def test_too_few_replicas_is_logged_once_and_once_when_back() -> None:
    link = FakeRedisLink()
    wait = ReplicaWait(2)
    events = logged(wait)
    for acknowledged in (1, 0, 2, 2, 1):
        d = wait.after(link, None)
        link.take("WAIT").answer(acknowledged)
        success_result_of(d)
    assert [(e["log_level"], e.get("acknowledged")) for e in events] == [
        (LogLevel.warn, 1),
        (LogLevel.info, None),
        (LogLevel.warn, 1),
    ]


def test_a_failed_wait_is_logged_and_the_result_goes_on() -> None:
    link = FakeRedisLink()
    wait = ReplicaWait(2)
    events = logged(wait)
    d = wait.after(link, "result")
    link.take("WAIT").refuse(ResponseError("ERR WAIT cannot be used with replica instances"))
    assert success_result_of(d) == "result"
    d = wait.after(link, "again")
    link.lose_connection()
    assert success_result_of(d) == "again"
    assert [e["log_level"] for e in events] == [LogLevel.warn, LogLevel.warn]
    assert "replica instances" in events[0]["error"]
    assert events[1]["error"].startswith("Lost connection")


def test_a_bug_after_wait_is_logged_as_a_failure() -> None:
    link = FakeRedisLink()
    wait = ReplicaWait(2)
    events = logged(wait)
    d = wait.after(link, "result")
    link.take("WAIT").refuse(ZeroDivisionError())
    assert success_result_of(d) == "result"
    [event] = events
    assert event["log_failure"].check(ZeroDivisionError)


# The consumer: WAIT on the taking link, after a take and before the run


def test_without_replicas_no_wait_is_sent() -> None:
    rig = make_rig()
    rig.start()
    rig.give(entry("a"))
    rig.scripts()[0].end(0)
    rig.control.take("LREM").answer(1)
    assert "WAIT" not in [c[0] for c in rig.blocking.sent + rig.control.sent]


def test_a_taken_entry_runs_once_wait_answers() -> None:
    rig = make_rig(replicas=ReplicaWait(2))
    rig.start()
    rig.give(entry("a"))
    assert [p.command for p in rig.blocking.pending] == [WAIT]
    assert rig.scripts() == []
    rig.blocking.take("WAIT").answer(2)
    assert [s.args[1:] for s in rig.scripts()] == [["a"]]
    assert rig.blocking.sent == [blmove(), WAIT]


def test_an_empty_take_sends_no_wait() -> None:
    rig = make_rig(replicas=ReplicaWait(2))
    rig.start()
    rig.give(None)
    assert [p.command for p in rig.blocking.pending] == [blmove()]


def test_a_batch_take_sends_one_wait() -> None:
    rig = make_rig(workers=3, replicas=ReplicaWait(2))
    rig.start()
    rig.give(entry("a"))
    rig.blocking.take("WAIT").answer(2)
    [script] = rig.blocking.pending
    assert script.command == evalsha(script.command[1], 2)
    script.answer([entry("b"), entry("c")])
    assert [p.command for p in rig.blocking.pending] == [WAIT]
    rig.blocking.take("WAIT").answer(2)
    assert [s.args[1] for s in rig.scripts()] == ["a", "b", "c"]


def test_a_stop_during_the_wait_puts_the_entry_back() -> None:
    rig = make_rig(replicas=ReplicaWait(2))
    rig.start()
    rig.give(entry("a"))
    stopped = rig.consumer.stop()
    # CLIENT UNBLOCK does not end a WAIT: it ends within its timeout, with
    # what it has, and what the take brought goes back unrun.
    rig.control.take("CLIENT").answer(1)
    rig.blocking.take("WAIT").answer(0)
    assert rig.scripts() == []
    assert rig.control.take("MULTI").command == (
        "MULTI",
        ("LREM", INFLIGHT, -1, entry("a")),
        ("LPUSH", QUEUE, entry("a")),
    )
    rig.control.take("MULTI").answer([1, 1])
    success_result_of(stopped)


# The store: WAIT on the control link, after each outcome write


def test_an_outcome_is_written_once_wait_answers() -> None:
    rig = make_rig(replicas=ReplicaWait(2))
    rig.start()
    payload = entry("a")
    rig.give(payload)
    rig.blocking.take("WAIT").answer(2)
    rig.scripts()[0].end(0)
    rig.control.take("LREM").answer(1)
    assert [p.command for p in rig.control.pending] == [WAIT]
    assert rig.store.pending == 1
    rig.control.take("WAIT").answer(2)
    assert rig.store.pending == 0
    assert rig.store.unwritten("t") == []


def test_a_failure_waits_after_its_transaction() -> None:
    rig = make_rig(ttl=60, replicas=ReplicaWait(2))
    rig.start()
    rig.give(entry("a"))
    rig.blocking.take("WAIT").answer(2)
    rig.scripts()[0].end(1)
    rig.control.take("MULTI").answer([1, 1, 1])
    assert [p.command for p in rig.control.pending] == [WAIT]
    flushed = rig.store.flush(5.0)
    assert_no_result(flushed)
    rig.control.take("WAIT").answer(1)
    assert success_result_of(flushed) == 0


def test_a_write_lost_with_the_connection_is_sent_again_then_waited_for() -> None:
    rig = make_rig(replicas=ReplicaWait(2))
    rig.start()
    rig.give(entry("a"))
    rig.blocking.take("WAIT").answer(2)
    rig.scripts()[0].end(0)
    rig.control.lose_connection()
    rig.control.reconnect()
    rig.control.take("LREM").answer(1)
    rig.control.take("WAIT").answer(2)
    assert rig.store.pending == 0
    assert [c[0] for c in rig.control.sent].count("LREM") == 2


# The service: one ReplicaWait for the takes and the outcomes, when asked for


def service_tree(wait_replicas: int) -> tuple[Tree, dict[str, LinkService]]:
    reactor = FakeReactor()
    journal: list[str] = []
    links: dict[str, LinkService] = {}

    def link(purpose: str) -> LinkService:
        links[purpose] = LinkService(purpose, journal)
        return links[purpose]

    config = Config(
        path="/etc/goophry.json",
        redis_queue_key="q",
        tasks=(TaskType("t", "/s/t.sh"), TaskType("u", "/s/u.sh")),
        redis_wait_replicas=wait_replicas,
    )
    service = GoophryService(
        config,
        reactor,
        instance="i1",
        links=link,  # type: ignore[arg-type]
        spawner=lambda: Spawner(journal),  # type: ignore[arg-type, return-value]
    )
    service.log = Logger(observer=lambda event: None)
    return Tree(reactor, service, journal), links


@pytest.mark.parametrize("wait_replicas", [0, 2])
def test_the_service_waits_after_a_take_only_when_asked(wait_replicas: int) -> None:
    t, links = service_tree(wait_replicas)
    t.started()
    taker = links["take:0"]
    taker.reconnect()
    t.control.take("EVAL").answer(0)
    taker.take("BLMOVE").answer(entry("a"))
    sent = [command[0] for command in taker.sent]
    # One worker: it runs the entry, and takes again only once it is free.
    assert sent == (["BLMOVE", "WAIT"] if wait_replicas else ["BLMOVE"])
