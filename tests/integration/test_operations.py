"""The operations module over a real Redis link, in this process."""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted

from goophry_tx import operations
from goophry_tx.keys import Keys
from goophry_tx.operations import EntryRef, FailedEntry, OperationError
from goophry_tx.redis import RedisLink
from tests.helpers import RedisServer

pytestmark = pytest.mark.integration

WAIT = 10.0


def failed_record(*args: str, **fields: Any) -> bytes:
    return json.dumps({"Args": list(args), "ErrorMessage": "exit status 1", **fields}).encode()


def lrange(redis: RedisServer, key: str) -> list[Any]:
    entries = redis.cli("LRANGE", key, 0, -1)
    assert isinstance(entries, list)
    return entries


@pytest_twisted.ensureDeferred
async def test_retry_all_keeps_the_order_across_chunks(
    link: RedisLink, redis: RedisServer, queue_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks after the first are shifted by what the earlier ones moved."""
    monkeypatch.setattr(operations, "CHUNK", 3)
    keys = Keys(queue_key)
    records = []
    for n in range(10):
        if n % 4 == 1:
            records.append(json.dumps({"Args": None, "ErrorMessage": "x", "Payload": f"p{n}"}))
        else:
            records.append(failed_record(f"a{n}").decode())
    redis.cli("RPUSH", keys.failed("t"), *records)

    moved = await operations.failed_retry(link, keys, "t", None)

    kept = [n for n in range(10) if n % 4 == 1]
    assert moved.done == tuple(n for n in range(10) if n not in kept)
    assert [s.index for s in moved.skipped] == kept
    queued = [json.loads(e) for e in lrange(redis, keys.queue("t"))]
    assert queued == [{"Args": [f"a{n}"]} for n in moved.done]
    assert [json.loads(e)["Payload"] for e in lrange(redis, keys.failed("t"))] == [
        f"p{n}" for n in kept
    ]


@pytest_twisted.ensureDeferred
async def test_retry_puts_back_the_producer_form(
    link: RedisLink, redis: RedisServer, queue_key: str
) -> None:
    keys = Keys(queue_key)
    record = failed_record(
        "x",
        FailedAt=1700000000,
        Instance="h:1:ab",
        Attempts=3,
        GoophryRecoveries=1,
        GoophryAttempt=2,
        GoophryId="abc",
        Env={"A": "b"},
    )
    redis.cli("RPUSH", keys.failed("t"), record)
    moved = await operations.failed_retry(link, keys, "t", [EntryRef(0)])
    assert moved.done == (0,)
    assert lrange(redis, keys.queue("t")) == [b'{"Args":["x"],"Env":{"A":"b"}}']
    assert redis.cli("EXISTS", keys.failed("t")) == 0


@pytest_twisted.ensureDeferred
async def test_an_entry_changed_since_it_was_read_stays(
    link: RedisLink, redis: RedisServer, queue_key: str
) -> None:
    """The script compares the value: what another command changed meanwhile stays put."""
    keys = Keys(queue_key)
    first, second = failed_record("1"), failed_record("2")
    redis.cli("RPUSH", keys.failed("t"), first, second)
    listed = operations.entry_id(first)
    redis.cli("LPOP", keys.failed("t"))
    moved = await operations.failed_purge(link, keys, "t", [EntryRef(0, listed)])
    assert moved.done == ()
    assert "changed since it was listed" in moved.skipped[0].reason
    assert lrange(redis, keys.failed("t")) == [second]


@pytest_twisted.ensureDeferred
async def test_show_out_of_range_says_how_long_the_list_is(
    link: RedisLink, redis: RedisServer, queue_key: str
) -> None:
    keys = Keys(queue_key)
    redis.cli("RPUSH", keys.failed("t"), failed_record("1"))
    with pytest.raises(OperationError, match=r"no entry at index 4 of .*:t:failed \(it holds 1\)"):
        await operations.failed_entry(link, keys, "t", 4)


@pytest_twisted.ensureDeferred
async def test_pause_publishes_beside_the_set(
    link: RedisLink, redis: RedisServer, queue_key: str
) -> None:
    keys = Keys(queue_key)
    paused = await operations.pause(link, keys, "t")
    again = await operations.pause(link, keys, "t")
    assert (paused.changed, again.changed) == (True, False)
    assert redis.cli("SMEMBERS", keys.paused) == [b"t"]
    overview = await operations.stats(link, keys, ["t", "u"])
    assert overview.types["t"].paused and not overview.types["u"].paused
    resumed = await operations.resume(link, keys, "t")
    assert resumed.changed and not resumed.paused
    assert redis.cli("EXISTS", keys.paused) == 0


@pytest.mark.parametrize(
    "raw, problem, invalid",
    [
        (b"garbage", "not JSON", False),
        (b"[1]", "not a JSON object", False),
        (b'{"Args":null,"ErrorMessage":"x","Payload":"p"}', None, True),
    ],
)
def test_failed_entries_that_cannot_run_again_say_why(
    raw: bytes, problem: str | None, invalid: bool
) -> None:
    entry = FailedEntry.decode(0, raw)
    assert entry.problem == problem
    assert entry.invalid is invalid
    with pytest.raises(OperationError):
        entry.producer_form()


@pytest.mark.parametrize("text", ["x", "-1", "3@", "@ab", ""])
def test_an_entry_ref_is_an_index_and_maybe_an_id(text: str) -> None:
    with pytest.raises(ValueError):
        EntryRef.parse(text)


def test_entry_refs_parse() -> None:
    assert EntryRef.parse("3") == EntryRef(3)
    assert EntryRef.parse("3@AB12cd34") == EntryRef(3, "ab12cd34")
