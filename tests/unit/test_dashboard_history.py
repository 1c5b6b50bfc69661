"""goophry_tx.dashboard.history: counts in memory, written once every few seconds."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from goophry_tx.dashboard.history import TTL, HistoryWriter, Minute, last_minute, read_history
from goophry_tx.keys import Keys
from goophry_tx.redis import ConnectionError
from tests.unit.fakes import FakeRedisLink, assert_no_result, success_result_of

KEYS = Keys("q")


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(60 * 1000 + 10)  # ten seconds into minute 1000
    return clock


@pytest.fixture
def link() -> FakeRedisLink:
    return FakeRedisLink()


@pytest.fixture
def writer(link: FakeRedisLink, clock: Clock) -> HistoryWriter:
    writer = HistoryWriter(link, KEYS, clock)  # type: ignore[arg-type]
    writer.startService()
    return writer


def test_counting_sends_nothing(writer: HistoryWriter, link: FakeRedisLink) -> None:
    for _ in range(100):
        writer.count("mail", "started")
        writer.count("mail", "succeeded")
    assert link.sent == []


def test_one_round_trip_every_few_seconds(
    writer: HistoryWriter, link: FakeRedisLink, clock: Clock
) -> None:
    for _ in range(3):
        writer.count("mail", "started")
    writer.count("mail", "failed")
    writer.count("odd:type", "started")
    clock.advance(5)
    assert link.sent == [
        (
            "MULTI",
            ("HINCRBY", "q:history:1000", "started:mail", 3),
            ("HINCRBY", "q:history:1000", "failed:mail", 1),
            ("HINCRBY", "q:history:1000", "started:odd:type", 1),
            ("EXPIRE", "q:history:1000", TTL),
        )
    ]
    link.take("MULTI").answer([1, 1, 1, 1])
    clock.advance(5)
    assert len(link.sent) == 1, "nothing counted since: nothing sent"


def test_a_failed_write_keeps_its_counts(
    writer: HistoryWriter, link: FakeRedisLink, clock: Clock
) -> None:
    writer.count("mail", "started")
    clock.advance(5)
    link.take("MULTI").refuse(ConnectionError("gone"))
    writer.count("mail", "started")
    clock.advance(5)
    assert link.sent[-1][1] == ("HINCRBY", "q:history:1000", "started:mail", 2)


def test_one_write_at_a_time(writer: HistoryWriter, link: FakeRedisLink, clock: Clock) -> None:
    writer.count("mail", "started")
    clock.advance(5)
    writer.count("mail", "started")
    clock.advance(5)
    assert link.names() == ["MULTI"], "the second waits for the first"
    link.take("MULTI").answer([1, 1])
    clock.advance(5)
    assert link.names() == ["MULTI"]
    assert link.sent[-1][1] == ("HINCRBY", "q:history:1000", "started:mail", 1)


def test_a_new_minute_writes_the_last_ones_counts_to_its_own_hash(
    writer: HistoryWriter, link: FakeRedisLink, clock: Clock
) -> None:
    writer.count("mail", "started")
    clock.advance(50)  # minute 1001 now
    link.take("MULTI").answer([1, 1])
    writer.count("mail", "succeeded")
    clock.advance(5)
    hashes = [command[1][1] for command in link.sent]
    assert hashes[-1] == "q:history:1001"
    assert all(h == "q:history:1000" for h in hashes[:-1])


def test_stopping_writes_what_is_left(
    writer: HistoryWriter, link: FakeRedisLink, clock: Clock
) -> None:
    writer.count("mail", "succeeded")
    stopped = writer.stopService()
    assert_no_result(stopped)
    link.take("MULTI").answer([1, 1])
    success_result_of(stopped)


def test_reading_the_last_hour(link: FakeRedisLink, clock: Clock) -> None:
    d = Deferred.fromCoroutine(
        read_history(link, KEYS, clock.seconds(), minutes=3)  # type: ignore[arg-type]
    )
    assert [c[1] for c in link.sent] == ["q:history:998", "q:history:999", "q:history:1000"]
    link.pending[0].answer([])
    link.pending[0].answer([b"started:a:b", b"4", b"failed:a:b", b"1", b"junk:x", b"NaN"])
    link.pending[0].answer([b"succeeded:mail", b"2"])
    history = success_result_of(d)
    assert [m.minute for m in history] == [998, 999, 1000]
    assert history[1].get("a:b", "started") == 4
    assert history[1].get("a:b", "failed") == 1
    assert history[2].get("mail", "succeeded") == 2
    assert history[0].get("mail", "succeeded") == 0


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(0, 10 + 4), (30, 10 + 2), (59.9, 10 + 0)],
)
def test_last_minute_takes_the_share_of_the_previous_one(seconds: float, expected: int) -> None:
    history = [Minute(9, {"mail": {"succeeded": 4}}), Minute(10, {"mail": {"succeeded": 10}})]
    assert last_minute(history, 600 + seconds, "mail", "succeeded") == expected
    assert last_minute(history, 600 + seconds, "other", "succeeded") == 0
