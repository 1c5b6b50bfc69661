"""goophry-ctl's parts and the operations, with a fake Redis link and a Clock."""

from __future__ import annotations

import json

from twisted.internet.task import Clock

from goophry_tx import operations
from goophry_tx.ctl import FirstAttempt, build_parser, table
from goophry_tx.keys import Keys
from goophry_tx.redis import ConnectionError
from tests.unit.fakes import FakeRedisLink, failure_result_of, success_result_of

KEYS = Keys("q")


def test_a_table_aligns_text_left_and_numbers_right() -> None:
    text = table(["NAME", "N", "NOTE"], [["a", 1, None], ["long name", 200, "x"]])
    assert text.splitlines() == [
        "NAME         N  NOTE",
        "a            1  -",
        "long name  200  x",
    ]


def test_the_first_attempt_decides() -> None:
    health = FirstAttempt(Clock(), "127.0.0.1:1")
    health.down("goophry-ctl", "Connection refused")
    health.up("goophry-ctl")
    failure = failure_result_of(health.ready, ConnectionError)
    assert failure.getErrorMessage() == "Connection refused"

    health = FirstAttempt(Clock(), "127.0.0.1:1")
    health.up("goophry-ctl")
    health.down("goophry-ctl", "later")
    assert success_result_of(health.ready) is None


def test_json_and_config_are_read_before_or_after_the_command() -> None:
    parser = build_parser()
    before = parser.parse_args(["-c", "x.json", "--json", "stats"])
    after = parser.parse_args(["stats", "--json", "-c", "x.json"])
    assert (before.config, before.json) == (after.config, after.json) == ("x.json", True)
    assert parser.parse_args(["stats"]).json is False


def test_stats_asks_every_instance_list_at_once() -> None:
    link = FakeRedisLink()
    d = operations.stats(link, KEYS, ["t"])
    link.take("HGETALL").answer([b"a", b'{"types":["t"]}', b"b", b"not json"])
    assert [c.command for c in link.pending] == [
        ("EXISTS", "q:instance:a"),
        ("EXISTS", "q:instance:b"),
    ]
    link.take("EXISTS").answer(1)
    link.take("EXISTS").answer(0)
    # The queue figures as the metrics read them, then the paused types.
    figures = link.take("MULTI")
    assert figures.command == (
        "MULTI",
        ("LLEN", "q:t"),
        ("LLEN", "q:t:failed"),
        ("ZCARD", "q:t:scheduled"),
        ("LLEN", "q:t:inflight:a"),
        ("LLEN", "q:t:inflight:b"),
    )
    figures.answer([5, 2, 6, 3, 4])
    assert link.take("SMEMBERS").command == ("SMEMBERS", "q:paused")
    link.take("SMEMBERS").answer([b"t", b"other"])
    overview = success_result_of(d)
    assert overview.as_json() == {
        "types": {"t": {"queued": 5, "inflight": 7, "failed": 2, "paused": True, "scheduled": 6}},
        "instances": {"alive": 1, "dead": 1},
    }


def test_pause_publishes_in_the_same_transaction() -> None:
    link = FakeRedisLink()
    d = operations.pause(link, KEYS, "t")
    sent = link.take("MULTI")
    assert sent.command == ("MULTI", ("SADD", "q:paused", "t"), ("PUBLISH", "q:paused", "pause t"))
    sent.answer([1, 2])
    assert success_result_of(d).as_json() == {"type": "t", "paused": True, "changed": True}


def test_a_connection_lost_midway_fails_the_operation() -> None:
    link = FakeRedisLink()
    d = operations.failed_list(link, KEYS, "t", 0, 10)
    assert [c.command for c in link.pending] == [
        ("LLEN", "q:t:failed"),
        ("LRANGE", "q:t:failed", 0, 9),
    ]
    link.lose_connection()
    failure_result_of(d, ConnectionError)


def test_retry_sends_each_entry_with_its_value_and_producer_form() -> None:
    link = FakeRedisLink()
    d = operations.failed_retry(link, KEYS, "t", [operations.EntryRef(2), operations.EntryRef(0)])
    assert [c.command for c in link.pending] == [
        ("LLEN", "q:t:failed"),
        ("LINDEX", "q:t:failed", 0),
        ("LINDEX", "q:t:failed", 2),
    ]
    first = json.dumps({"Args": ["a"], "ErrorMessage": "x", "FailedAt": 1}).encode()
    third = json.dumps({"GoophryRecoveries": 1, "Args": ["c"], "ErrorMessage": "y"}).encode()
    for reply in (3, first, third):
        link.pending[0].answer(reply)
    script = link.take("EVAL")
    name, _, keys, failed, queue, marker, *moves = script.command
    assert (keys, failed, queue) == (2, "q:t:failed", "q:t")
    assert marker.startswith("goophry-ctl: removed ")
    assert moves == [0, first, b'{"Args":["a"]}', 2, third, b'{"Args":["c"]}']
    script.answer([1, 0])
    moved = success_result_of(d)
    assert moved.done == (0,)
    assert [(s.index, s.reason) for s in moved.skipped] == [
        (2, "changed or gone since it was read")
    ]


def test_show_of_a_missing_index_is_an_operation_error() -> None:
    link = FakeRedisLink()
    d = operations.failed_entry(link, KEYS, "t", 7)
    link.pending[0].answer(2)
    link.pending[0].answer(None)
    failure = failure_result_of(d, operations.OperationError)
    assert failure.getErrorMessage() == "no entry at index 7 of q:t:failed (it holds 2)"
