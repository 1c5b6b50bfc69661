"""The dashboard's history over a real Redis link: written by one writer, read back."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_twisted
from twisted.internet import endpoints, reactor

from goophry_tx import operations
from goophry_tx.ctl import FirstAttempt
from goophry_tx.dashboard.history import TTL, HistoryWriter, read_history
from goophry_tx.keys import Keys
from goophry_tx.redis import RedisLink
from tests.helpers import RedisServer

pytestmark = pytest.mark.integration

WAIT = 10.0


@pytest_twisted.async_yield_fixture
async def link(redis: RedisServer) -> AsyncIterator[RedisLink]:
    health = FirstAttempt(reactor, redis.address)
    endpoint = endpoints.HostnameEndpoint(reactor, redis.host, redis.port, timeout=5)
    new = RedisLink(reactor, endpoint, health, name="test")
    new.startService()
    await health.ready.addTimeout(WAIT, reactor)
    yield new
    await new.stopService()


@pytest_twisted.ensureDeferred
async def test_two_writers_add_up_in_one_minute(
    link: RedisLink, redis: RedisServer, queue_key: str
) -> None:
    keys = Keys(queue_key)
    writers = [HistoryWriter(link, keys, reactor, interval=3600) for _ in range(2)]
    for writer in writers:
        for _ in range(3):
            writer.count("mail", "started")
        writer.count("mail", "failed")
    await writers[0].flush().addTimeout(WAIT, reactor)
    await writers[1].flush().addTimeout(WAIT, reactor)
    # Two minutes: the writes may straddle a minute's end.
    history = await read_history(link, keys, reactor.seconds(), minutes=2)
    assert sum(m.get("mail", "started") for m in history) == 6
    assert sum(m.get("mail", "failed") for m in history) == 2
    written = redis.cli("KEYS", f"{queue_key}:history:*")
    assert isinstance(written, list) and written
    for key in written:
        ttl = redis.cli("TTL", key)
        assert isinstance(ttl, int) and TTL - 60 < ttl <= TTL


@pytest_twisted.ensureDeferred
async def test_the_queue_head(link: RedisLink, redis: RedisServer, queue_key: str) -> None:
    keys = Keys(queue_key)
    redis.cli("RPUSH", keys.queue("t"), *[f'{{"Args":["{n}"]}}' for n in range(60)])
    head = await operations.queue_head(link, keys, "t", 50)
    assert head.total == 60
    assert len(head.entries) == 50
    assert head.entries[0] == b'{"Args":["0"]}'
    assert head.as_json()["entries"][49] == '{"Args":["49"]}'
