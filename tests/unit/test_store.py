"""OutcomeStore: what reaches Redis for each outcome, and waiting for it."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel

from goophry_tx.keys import Keys
from goophry_tx.redis import ResponseError
from goophry_tx.store import REMOVE_DELAY, REMOVE_SCRIPT, OutcomeStore
from goophry_tx.task import Task
from tests.unit.fakes import FakeRedisLink, assert_no_result, success_result_of

INFLIGHT = "k:t:inflight:me"


def make_store(link: FakeRedisLink, clock: Clock, ttl: int = 60) -> OutcomeStore:
    return OutcomeStore(link, Keys("k"), "me", ttl, clock)


def task(name: str) -> Task:
    return Task("t", (name,), f'{{"Args":["{name}"]}}'.encode())


def test_a_success_alone_is_one_lrem() -> None:
    link, clock = FakeRedisLink(), Clock()
    store = make_store(link, clock)
    store.succeeded(task("a"))
    assert [p.command for p in link.pending] == [("LREM", INFLIGHT, -1, task("a").payload)]


def test_successes_while_a_removal_is_on_its_way_go_together() -> None:
    link, clock = FakeRedisLink(), Clock()
    store = make_store(link, clock)
    store.succeeded(task("a"))
    store.succeeded(task("b"))
    store.succeeded(task("c"))
    # Only the first is sent; the others wait for it.
    assert link.names() == ["LREM"]
    assert store.unwritten("t") == [t.payload for t in (task("a"), task("b"), task("c"))]
    link.take("LREM").answer(1)
    assert [p.command for p in link.pending] == [
        ("EVAL", REMOVE_SCRIPT, 1, INFLIGHT, task("b").payload, task("c").payload)
    ]
    link.take("EVAL").answer(2)
    assert link.pending == []
    assert store.unwritten("t") == []


def test_with_a_delay_what_finishes_meanwhile_goes_in_one_removal() -> None:
    link, clock = FakeRedisLink(), Clock()
    store = OutcomeStore(link, Keys("k"), "me", 60, clock, remove_delay=REMOVE_DELAY)
    store.succeeded(task("a"))
    clock.advance(REMOVE_DELAY / 2)
    store.succeeded(task("b"))
    # Nothing sent yet, but both count as on their way.
    assert link.pending == []
    assert store.pending == 1
    clock.advance(REMOVE_DELAY / 2)
    assert [p.command for p in link.pending] == [
        ("EVAL", REMOVE_SCRIPT, 1, INFLIGHT, task("a").payload, task("b").payload)
    ]
    # What finishes while it is on its way goes as soon as it is back, not later.
    store.succeeded(task("c"))
    link.take("EVAL").answer(2)
    assert [p.command for p in link.pending] == [("LREM", INFLIGHT, -1, task("c").payload)]
    link.take("LREM").answer(1)
    assert (store.pending, clock.getDelayedCalls()) == (0, [])


def test_flush_sends_a_removal_waiting_for_its_delay_at_once() -> None:
    link, clock = FakeRedisLink(), Clock()
    store = OutcomeStore(link, Keys("k"), "me", 60, clock, remove_delay=REMOVE_DELAY)
    store.succeeded(task("a"))
    flushed = store.flush(timeout=10)
    assert [p.command for p in link.pending] == [("LREM", INFLIGHT, -1, task("a").payload)]
    # Its delay is cancelled: only the flush's own timeout is left.
    assert [call.getTime() for call in clock.getDelayedCalls()] == [10]
    link.take("LREM").answer(1)
    assert success_result_of(flushed) == 0


def test_flush_waits_for_the_batch_that_a_finished_write_starts() -> None:
    link, clock = FakeRedisLink(), Clock()
    store = make_store(link, clock)
    store.succeeded(task("a"))
    store.succeeded(task("b"))
    flushed = store.flush(timeout=10)
    link.take("LREM").answer(1)
    # "b" is on its way now: the flush must not be over yet.
    assert_no_result(flushed)
    link.take("LREM").answer(1)
    assert success_result_of(flushed) == 0


def test_flush_gives_up_after_its_timeout_with_the_count_left() -> None:
    link, clock = FakeRedisLink(), Clock()
    store = make_store(link, clock)
    store.failed(task("a"), "exit status 1")
    flushed = store.flush(timeout=5)
    clock.advance(5)
    assert success_result_of(flushed) == 1


def test_removals_lost_with_the_connection_are_sent_again_when_it_is_back() -> None:
    link, clock = FakeRedisLink(), Clock()
    store = make_store(link, clock)
    store.succeeded(task("a"))
    link.lose_connection()
    assert link.pending == []
    link.reconnect()
    assert [p.command for p in link.pending] == [("LREM", INFLIGHT, -1, task("a").payload)]


def test_a_loading_redis_is_waited_for() -> None:
    link, clock = FakeRedisLink(), Clock()
    store = make_store(link, clock)
    store.failed(task("a"), "exit status 1")
    first: Any = link.take("MULTI")
    first.refuse(ResponseError("LOADING Redis is loading the dataset in memory"))
    assert link.pending == []
    clock.advance(1)
    assert link.names() == ["MULTI"]


def test_a_refused_write_is_logged_in_full_and_not_sent_again() -> None:
    link, clock = FakeRedisLink(), Clock()
    store = make_store(link, clock)
    events: list[dict[str, Any]] = []
    store.log = Logger(observer=events.append)
    done = store.failed(task("a"), "exit status 1")
    link.take("MULTI").refuse(ResponseError("WRONGTYPE Operation against a key"))
    success_result_of(done)
    [event] = [e for e in events if e["log_level"] is LogLevel.error]
    assert "WRONGTYPE" in event["error"]
    assert '"ErrorMessage":"exit status 1"' in event["record"]
    clock.advance(60)
    assert link.pending == []
    assert store.unwritten("t") == []
