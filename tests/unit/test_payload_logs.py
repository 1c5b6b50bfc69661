"""Entries in text logs read as the producer pushed them, never as Python bytes reprs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogEvent, formatEvent, globalLogPublisher

from goophry_tx.keys import Keys
from goophry_tx.recovery import Abandoned
from goophry_tx.redis import ResponseError
from goophry_tx.store import OutcomeStore
from goophry_tx.task import InvalidEntry, Task, payload_text
from tests.unit.fakes import FakeRedisLink
from tests.unit.test_consumer import entry, make_rig
from tests.unit.test_outcomes import make_rig as make_outcomes_rig

PAYLOAD = b'{"Args":["caf\xc3\xa9", "\xff"]}'
SHOWN = '{"Args":["café", "\\xff"]}'


@pytest.fixture
def events() -> Iterator[list[LogEvent]]:
    """Every event logged during the test."""
    logged: list[LogEvent] = []
    globalLogPublisher.addObserver(logged.append)
    yield logged
    globalLogPublisher.removeObserver(logged.append)


def _texts(events: list[LogEvent]) -> list[str]:
    return [formatEvent(e) for e in events]


def test_a_payload_is_text_with_its_undecodable_bytes_escaped() -> None:
    assert payload_text(PAYLOAD) == SHOWN


def test_a_taken_entry(events: list[LogEvent]) -> None:
    rig = make_rig()
    # What -v turns on.
    rig.consumer._verbose = True
    rig.start()
    rig.give(entry("a"))
    assert 'task t taken: {"Args": ["a"]}' in _texts(events)


def test_an_invalid_entry_and_an_abandoned_one(events: list[LogEvent]) -> None:
    rig = make_outcomes_rig()
    rig.outcomes.invalid(InvalidEntry("mail", PAYLOAD, "invalid task entry: not valid UTF-8"))
    rig.outcomes.abandoned(Abandoned("mail", PAYLOAD, 3, "dead:1"))
    invalid, abandoned = _texts(events)
    assert invalid == f"mail: invalid task entry: not valid UTF-8; entry: {SHOWN}"
    assert abandoned.startswith(f"mail entry {SHOWN} abandoned after 3 recoveries")


def test_an_outcome_redis_refused(events: list[LogEvent]) -> None:
    link = FakeRedisLink()
    store = OutcomeStore(link, Keys("q"), "me", 60, Clock())
    store.failed(Task("mail", ("café",), PAYLOAD), "exit status 1")
    link.take("MULTI").refuse(ResponseError("WRONGTYPE"))
    [refused] = _texts(events)
    assert f"entry {SHOWN}, outcome " in refused
    assert "b'" not in refused
