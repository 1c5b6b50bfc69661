"""The dashboard over real Redis: its history, the queue head, a long failed list."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from goophry_tx import operations
from goophry_tx.dashboard.history import TTL, HistoryWriter, read_history
from goophry_tx.keys import Keys
from goophry_tx.redis import RedisLink
from tests.helpers import DaemonProcess, RedisServer, free_port, wait_for
from tests.integration.conftest import Goophry, http_get

pytestmark = pytest.mark.integration

WAIT = 10.0


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


def test_ten_thousand_failed_entries_do_not_slow_the_page(
    goophry: Goophry,
    write_config: Callable[..., Path],
    run_daemon: Callable[..., DaemonProcess],
) -> None:
    address = f"127.0.0.1:{free_port()}"
    script = goophry.script("ok.sh", "true")
    config = write_config(
        Tasks=[{"Type": "t", "Script": str(script)}],
        StatsInterface=address,
        DashboardPattern="/ui/",
    )
    records = [
        json.dumps({"Args": [f"n{n}"], "ErrorMessage": "exit status 1"}) for n in range(10_000)
    ]
    for start in range(0, len(records), 1000):
        goophry.redis.cli("RPUSH", goophry.failed_key("t"), *records[start : start + 1000])
    goophry.started(run_daemon(config)).wait_for_log("dashboard at ")
    # Until the daemon's link to Redis is up, the page says Redis did not answer.
    wait_for(lambda: http_get(address, "/ui/type/t").status == 200, message="the page")
    timings = []
    for page in (1, 100, 200):
        started = time.monotonic()
        reply = http_get(address, f"/ui/type/t?page={page}")
        timings.append(time.monotonic() - started)
        assert reply.status == 200
        text = reply.body.decode()
        assert "Failed: 10000" in text and f"page {page} of 200" in text
        assert f'"n{(page - 1) * 50}"' in text and f'"n{page * 50 - 1}"' in text
        assert text.count('class="num">') >= 50
    # One page of 50 is read, never the whole list: well under a second each,
    # with margin for a loaded machine.
    assert max(timings) < 2.0, f"pages took {timings} s"
