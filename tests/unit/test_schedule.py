"""Retries and scheduled entries: delays, entries, the recorder's choice, the mover's timer."""

from __future__ import annotations

import json

import pytest
from twisted.internet.task import Clock

from goophry_tx.keys import Keys
from goophry_tx.recovery import Abandoned
from goophry_tx.schedule import (
    BATCH,
    CHECK_INTERVAL,
    MOVE_DUE_SCRIPT,
    DueEntryMover,
    retry_delay,
    retry_payload,
)
from goophry_tx.store import RETRY_SCRIPT
from goophry_tx.task import Outcome, Task, parse_entry
from tests.unit.fakes import FakeRedisLink
from tests.unit.test_outcomes import FAILED, INFLIGHT, SCRIPT, make_rig

SCHEDULED = "q:mail:scheduled"


@pytest.mark.parametrize(
    ("attempt", "jitter", "expected"),
    [
        (1, 0.5, 10.0),
        (2, 0.5, 20.0),
        (3, 0.5, 40.0),
        (1, 0.0, 8.0),
        (2, 0.0, 16.0),
        (1, 1.0, 12.0),
        (9, 0.5, 1000.0),
        (5000, 0.5, 1000.0),
    ],
)
def test_each_attempt_waits_twice_as_long_with_jitter_up_to_the_cap(
    attempt: int, jitter: float, expected: float
) -> None:
    assert retry_delay(attempt, 10.0, 1000.0, lambda: jitter) == pytest.approx(expected)


def test_a_retry_entry_carries_its_attempt_and_an_id_and_the_producers_fields() -> None:
    first = retry_payload(b'{"Args":["a"],"Extra":1}', 2)
    second = retry_payload(b'{"Args":["a"],"Extra":1}', 2)
    assert first != second
    decoded = json.loads(first)
    assert list(decoded) == ["GoophryAttempt", "GoophryId", "Args", "Extra"]
    assert decoded["GoophryAttempt"] == 2
    again = json.loads(retry_payload(first, 3))
    assert (again["GoophryAttempt"], again["Args"]) == (3, ["a"])
    assert again["GoophryId"] != decoded["GoophryId"]
    entry = parse_entry("mail", first)
    assert isinstance(entry, Task)
    assert (entry.args, entry.attempt) == (("a",), 2)


def test_an_entry_without_a_valid_attempt_field_is_its_first_run() -> None:
    for payload in (
        b'{"Args":[]}',
        b'{"Args":[],"GoophryAttempt":"2"}',
        b'{"Args":[],"GoophryAttempt":0}',
    ):
        entry = parse_entry("mail", payload)
        assert isinstance(entry, Task) and entry.attempt == 1


def retried(rig_link: FakeRedisLink) -> tuple[bytes, float, bytes]:
    """Answer the pending retry move; its old entry, due time and new entry."""
    sent = rig_link.take("EVAL")
    assert sent.command[:5] == ("EVAL", RETRY_SCRIPT, 2, INFLIGHT, SCHEDULED)
    old, due, new = sent.command[5:]
    sent.answer(1)
    return old, float(due), new


def test_failing_twice_then_succeeding_runs_three_times_spaced_by_the_backoff() -> None:
    clock = Clock()
    clock.advance(1000)
    rig = make_rig(retries=3, backoff=10.0, clock=clock)
    entry = parse_entry("mail", b'{"Args":["a"]}')
    assert isinstance(entry, Task)
    runs = [clock.seconds()]
    for _ in range(2):
        rig.outcomes.started(entry)
        rig.outcomes.failed(entry, Outcome(exit_code=1, duration=0.0))
        old, due, new = retried(rig.link)
        assert old == entry.payload
        assert rig.dues[-1] == due
        # The mover brings it back at its due time.
        clock.advance(due - clock.seconds())
        entry = parse_entry("mail", new)
        assert isinstance(entry, Task)
        runs.append(clock.seconds())
    rig.outcomes.started(entry)
    rig.outcomes.succeeded(entry, Outcome(exit_code=0))
    assert rig.commands() == [("LREM", INFLIGHT, -1, entry.payload)]
    assert [b - a for a, b in zip(runs, runs[1:], strict=False)] == [10.0, 20.0]
    assert entry.attempt == 3
    assert (rig.mail.retried, rig.mail.failed, rig.mail.succeeded) == (2, 0, 1)
    assert rig.told() == []


def test_a_task_failing_every_time_is_stored_with_its_attempts_and_told_once() -> None:
    rig = make_rig(retries=2)
    entry = parse_entry("mail", b'{"Args":["a"]}')
    for attempt in (1, 2, 3):
        assert isinstance(entry, Task) and entry.attempt == attempt
        rig.outcomes.started(entry)
        rig.outcomes.failed(entry, Outcome(exit_code=attempt, duration=0.0))
        if attempt < 3:
            entry = parse_entry("mail", retried(rig.link)[2])
    [(multi, rpush, expire, lrem)] = rig.commands()
    assert rpush == (
        "RPUSH",
        FAILED,
        b'{"Args":["a"],"ErrorMessage":"exit status 3","Attempts":3,'
        b'"FailedAt":1764669185,"Instance":"me"}',
    )
    assert rig.told() == [f'{SCRIPT} "a"\n\nexit status 3']
    assert (rig.mail.retried, rig.mail.failed) == (2, 1)


def test_without_retries_a_failed_entry_has_no_attempts_field() -> None:
    rig = make_rig()
    entry = Task("mail", ("a",), b'{"Args":["a"]}')
    rig.outcomes.started(entry)
    rig.outcomes.failed(entry, Outcome(exit_code=1))
    [(multi, rpush, expire, lrem)] = rig.commands()
    assert b"Attempts" not in rpush[2]


def test_a_retry_waiting_to_be_written_is_known_so_not_put_back() -> None:
    rig = make_rig(retries=1)
    entry = Task("mail", ("a",), b'{"Args":["a"]}')
    rig.outcomes.started(entry)
    rig.outcomes.failed(entry, Outcome(exit_code=1))
    assert rig.outcomes.known_payloads("mail") == [entry.payload]
    retried(rig.link)
    assert rig.outcomes.known_payloads("mail") == []


def test_invalid_and_abandoned_entries_are_not_retried() -> None:
    rig = make_rig(retries=3)
    entry = parse_entry("mail", b"not json")
    assert not isinstance(entry, Task)
    rig.outcomes.invalid(entry)
    rig.outcomes.abandoned(Abandoned("mail", b'{"Args":["b"]}', 3, "dead"))
    assert [c[0] for c in rig.commands()] == ["MULTI", "MULTI"]
    assert rig.mail.retried == 0
    assert len(rig.told()) == 1  # The second waits for the first: one at a time.


# The mover


def make_mover(clock: Clock) -> tuple[FakeRedisLink, DueEntryMover]:
    link = FakeRedisLink()
    return link, DueEntryMover(link, Keys("q"), ["a", "b"], clock)


def move(link: FakeRedisLink, earliest: bytes = b"", moved: tuple[int, int] = (0, 0)) -> float:
    """Answer the pending move; the time it was sent for."""
    sent = link.take("EVAL")
    assert sent.command[:7] == (
        "EVAL",
        MOVE_DUE_SCRIPT,
        4,
        "q:a:scheduled",
        "q:b:scheduled",
        "q:a",
        "q:b",
    )
    sent.answer([earliest, *moved])
    return float(sent.command[7])


def test_with_nothing_scheduled_the_mover_asks_once_per_interval() -> None:
    clock = Clock()
    link, mover = make_mover(clock)
    mover.start()
    assert move(link) == 0.0
    clock.advance(CHECK_INTERVAL - 0.01)
    assert link.pending == []
    clock.advance(0.01)
    assert move(link) == CHECK_INTERVAL
    assert len(link.sent) == 2


def test_the_mover_wakes_at_the_earliest_due_time() -> None:
    clock = Clock()
    link, mover = make_mover(clock)
    mover.start()
    move(link, b"0.25")
    clock.advance(0.24)
    assert link.pending == []
    clock.advance(0.01)
    assert move(link, moved=(1, 0)) == 0.25


def test_a_retry_due_sooner_wakes_the_mover_sooner() -> None:
    clock = Clock()
    link, mover = make_mover(clock)
    mover.start()
    move(link)
    mover.scheduled(0.5)
    clock.advance(0.5)
    move(link)
    # A retry due later than the next check changes nothing.
    mover.scheduled(100.0)
    clock.advance(CHECK_INTERVAL)
    assert len(link.pending) == 1


def test_a_retry_scheduled_during_a_move_reads_again_at_once() -> None:
    clock = Clock()
    link, mover = make_mover(clock)
    mover.start()
    mover.scheduled(0.0)
    move(link)
    clock.advance(0)
    move(link)


def test_a_full_batch_moves_again_at_once() -> None:
    clock = Clock()
    link, mover = make_mover(clock)
    mover.start()
    move(link, b"0", (BATCH, 0))
    clock.advance(0)
    move(link)


def test_a_stopped_mover_moves_nothing_more() -> None:
    clock = Clock()
    link, mover = make_mover(clock)
    mover.start()
    move(link)
    mover.stop()
    mover.scheduled(0.0)
    clock.advance(10 * CHECK_INTERVAL)
    assert link.pending == []


def test_the_mover_waits_for_a_lost_connection_to_come_back() -> None:
    clock = Clock()
    link, mover = make_mover(clock)
    mover.start()
    link.lose_connection()
    clock.advance(10 * CHECK_INTERVAL)
    assert link.pending == []
    link.reconnect()
    move(link)


def test_a_retry_scheduled_while_redis_is_away_is_looked_for_once_it_is_back() -> None:
    clock = Clock()
    link, mover = make_mover(clock)
    mover.start()
    link.lose_connection()
    mover.scheduled(0.0)
    assert clock.getDelayedCalls() == []
    link.reconnect()
    move(link)
    clock.advance(0)
    move(link)
    assert link.pending == []


def test_types_set_during_a_move_count_from_the_next_one() -> None:
    clock = Clock()
    link, mover = make_mover(clock)
    mover.start()
    # A reload adds a type while the first move is on its way: its reply
    # counts the two types it was sent for.
    mover.set_types(["a", "b", "c"])
    move(link, b"0.5", (1, 0))
    clock.advance(0.5)
    sent = link.take("EVAL")
    assert sent.command[2:9] == (
        6,
        "q:a:scheduled",
        "q:b:scheduled",
        "q:c:scheduled",
        "q:a",
        "q:b",
        "q:c",
    )
    sent.answer([b"", 0, 0, 1])
    clock.advance(CHECK_INTERVAL)
    assert len(link.pending) == 1
