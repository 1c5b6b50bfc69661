"""
The Lua scripts behind recovery, run in a real Redis: several instances
recovering at once, the recovery count carried in the entry, abandoning.
"""

from __future__ import annotations

import json

import pytest

from goophry_tx.keys import Keys
from goophry_tx.recovery import BEAT_SCRIPT, LEAVE_SCRIPT, RECOVER_SCRIPT
from tests.helpers import RedisServer

pytestmark = pytest.mark.integration

K = "rk"
#: The key layout the scripts take first; the tests name every key in full.
LAYOUT = Keys(K).script_layout


def register_dead(redis: RedisServer, name: str, types: list[str]) -> None:
    """An instance that registered and then died: no heartbeat key."""
    record = {"host": "h", "pid": 1, "start": None, "types": types}
    redis.cli("HSET", f"{K}:instances", name, json.dumps(record))


def recover(redis: RedisServer, dead: str, me: str, limit: int = 3, force: int = 0) -> object:
    return redis.cli("EVAL", RECOVER_SCRIPT, 0, *LAYOUT, dead, me, limit, force)


def test_entries_go_back_to_the_head_of_their_queue_in_order(redis: RedisServer) -> None:
    register_dead(redis, "dead", ["a"])
    redis.cli("RPUSH", f"{K}:a", b'{"Args":["queued"]}')
    redis.cli("RPUSH", f"{K}:a:inflight:dead", b'{"Args":["1"]}', b'{"Args":["2"]}')
    assert recover(redis, "dead", "me") == [b"2"]
    assert redis.cli("LRANGE", f"{K}:a", 0, -1) == [
        b'{"GoophryRecoveries":1,"Args":["1"]}',
        b'{"GoophryRecoveries":1,"Args":["2"]}',
        b'{"Args":["queued"]}',
    ]
    assert redis.cli("EXISTS", f"{K}:a:inflight:dead") == 0
    # Still registered: had it only been slow, it may have taken more since.
    assert redis.cli("HEXISTS", f"{K}:instances", "dead") == 1
    # The next recovery finds nothing and forgets it.
    assert recover(redis, "dead", "me") == []
    assert redis.cli("HEXISTS", f"{K}:instances", "dead") == 0


def test_entries_taken_by_a_slow_instance_after_its_recovery_are_still_found(
    redis: RedisServer,
) -> None:
    register_dead(redis, "slow", ["a"])
    redis.cli("RPUSH", f"{K}:a:inflight:slow", b'{"Args":["1"]}')
    assert recover(redis, "slow", "me") == [b"1"]
    # It was alive after all, took another entry, then died for real.
    redis.cli("RPUSH", f"{K}:a:inflight:slow", b'{"Args":["2"]}')
    assert recover(redis, "slow", "me") == [b"1"]
    assert redis.cli("LRANGE", f"{K}:a", 0, -1) == [
        b'{"GoophryRecoveries":1,"Args":["2"]}',
        b'{"GoophryRecoveries":1,"Args":["1"]}',
    ]


def test_two_instances_recovering_at_once_neither_duplicate_nor_drop(
    redis: RedisServer,
) -> None:
    register_dead(redis, "dead", ["a", "b"])
    entries = [f'{{"Args":["{n}"]}}'.encode() for n in range(20)]
    redis.cli("RPUSH", f"{K}:a:inflight:dead", *entries[:10])
    redis.cli("RPUSH", f"{K}:b:inflight:dead", *entries[10:])
    # Both recoverers' scripts sent together, as two live instances would.
    first, second = redis.pipeline(
        ["EVAL", RECOVER_SCRIPT, 0, *LAYOUT, "dead", "me", 3, 0],
        ["EVAL", RECOVER_SCRIPT, 0, *LAYOUT, "dead", "other", 3, 0],
    )
    assert sorted([first, second], key=len) == [[], [b"20"]]
    back = redis.cli("LRANGE", f"{K}:a", 0, -1) + redis.cli("LRANGE", f"{K}:b", 0, -1)
    assert sorted(json.loads(e)["Args"][0] for e in back) == sorted(str(n) for n in range(20))


def test_a_live_instance_is_left_alone_unless_forced(redis: RedisServer) -> None:
    register_dead(redis, "alive", ["a"])
    redis.cli("SET", f"{K}:instance:alive", "1")
    redis.cli("RPUSH", f"{K}:a:inflight:alive", b'{"Args":[]}')
    assert recover(redis, "alive", "me") == []
    assert redis.cli("LLEN", f"{K}:a:inflight:alive") == 1
    # Forced: its host says its process is gone.
    assert recover(redis, "alive", "me", force=1) == [b"1"]
    assert redis.cli("LLEN", f"{K}:a") == 1


def test_the_count_grows_with_each_recovery_and_abandons_at_the_limit(
    redis: RedisServer,
) -> None:
    entry = b'{ "Args" : ["x"], "Extra": 1 }'
    for count in (1, 2):
        register_dead(redis, f"d{count}", ["a"])
        redis.cli("RPUSH", f"{K}:a:inflight:d{count}", entry)
        assert recover(redis, f"d{count}", "me") == [b"1"]
        entry = redis.cli("LPOP", f"{K}:a")
        assert json.loads(entry) == {"GoophryRecoveries": count, "Args": ["x"], "Extra": 1}
    register_dead(redis, "d3", ["a"])
    redis.cli("RPUSH", f"{K}:a:inflight:d3", entry)
    # Third recovery of three: not put back, handed to "me" to store as failed.
    assert recover(redis, "d3", "me") == [b"0", b"a", entry, b"3"]
    assert redis.cli("LLEN", f"{K}:a") == 0
    assert redis.cli("LRANGE", f"{K}:a:inflight:me", 0, -1) == [entry]


def test_entries_that_are_not_objects_go_back_unchanged(redis: RedisServer) -> None:
    register_dead(redis, "dead", ["a"])
    odd = [b"not json", b"[1,2]", b"\xff\xfe", b"{}"]
    redis.cli("RPUSH", f"{K}:a:inflight:dead", *odd)
    assert recover(redis, "dead", "me") == [b"4"]
    assert redis.cli("LRANGE", f"{K}:a", 0, -1) == [
        b"not json",
        b"[1,2]",
        b"\xff\xfe",
        b'{"GoophryRecoveries":1}',
    ]


def test_a_beat_registers_and_names_the_instances_whose_heartbeat_lapsed(
    redis: RedisServer,
) -> None:
    register_dead(redis, "dead", ["a"])
    record = json.dumps({"host": "h", "pid": 2, "types": ["a"]})
    # Told not to look (Redis was just away): no one is declared dead.
    assert redis.cli("EVAL", BEAT_SCRIPT, 0, *LAYOUT, "me", 5000, record, "0") == []
    assert redis.cli("EVAL", BEAT_SCRIPT, 0, *LAYOUT, "me", 5000, record, "1") == [b"dead"]
    assert 0 < redis.cli("PTTL", f"{K}:instance:me") <= 5000
    assert redis.cli("HGET", f"{K}:instances", "me") == record.encode()


def test_leaving_keeps_the_registration_while_entries_are_in_flight(
    redis: RedisServer,
) -> None:
    record = json.dumps({"host": "h", "pid": 2, "types": ["a"]})
    redis.cli("EVAL", BEAT_SCRIPT, 0, *LAYOUT, "me", 5000, record, "1")
    redis.cli("RPUSH", f"{K}:a:inflight:me", b'{"Args":[]}')
    assert redis.cli("EVAL", LEAVE_SCRIPT, 0, *LAYOUT, "me", "a") == 0
    assert redis.cli("HEXISTS", f"{K}:instances", "me") == 1
    redis.cli("DEL", f"{K}:a:inflight:me")
    assert redis.cli("EVAL", LEAVE_SCRIPT, 0, *LAYOUT, "me", "a") == 1
    assert redis.cli("HEXISTS", f"{K}:instances", "me") == 0
    assert redis.cli("EXISTS", f"{K}:instance:me") == 0
