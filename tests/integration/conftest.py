"""
Fixtures for the integration tests: the real daemon, real scripts, real Redis.

Everything here builds on the suite's shared fixtures (C{redis},
C{write_config}, C{run_daemon}, C{queue_key}) and on the harness in
L{tests.helpers}: write a script, start a daemon and wait until it is up
(L{Harness.launch} does all of it), push entries, read what landed in Redis,
and ask the stats server over HTTP(S).
"""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import endpoints, reactor

from goophry_tx.ctl import FirstAttempt
from goophry_tx.redis import RedisLink
from tests.helpers import (
    STARTED,
    DaemonProcess,
    Harness,
    RedisServer,
    free_port,
    http_get,
    wait_for,
    wait_started,
)

__all__ = ["STARTED", "Goophry", "http_get", "next_message", "stats_when"]


def stats_when(
    address: str,
    predicate: Callable[[dict[str, Any]], object],
    path: str = "/",
    context: ssl.SSLContext | None = None,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """Poll the stats JSON until C{predicate(stats)} holds; return those stats."""
    last: list[object] = [None]

    def check() -> dict[str, Any] | None:
        try:
            stats = http_get(address, path, context, timeout=2.0).json()
        except (OSError, ValueError, http.client.HTTPException) as e:
            last[0] = e
            return None
        last[0] = stats
        return stats if predicate(stats) else None

    return wait_for(check, timeout, message=lambda: f"stats to match; last seen: {last[0]!r}")


class Goophry(Harness):
    """What a test needs to drive one daemon: its queue keys and helpers."""

    def push(self, task_type: str, *payloads: str | bytes) -> None:
        """RPUSH raw entries, in order."""
        self.push_payloads(task_type, *payloads)

    @staticmethod
    def started(daemon: DaemonProcess, timeout: float = 15.0) -> DaemonProcess:
        """Wait until the daemon has loaded its config and started its service."""
        return wait_started(daemon, timeout)


@pytest.fixture
def goophry(
    redis: RedisServer,
    queue_key: str,
    tmp_path: Path,
    run_daemon: Callable[..., DaemonProcess],
) -> Goophry:
    return Goophry(redis, queue_key, tmp_path, run_daemon)


@pytest.fixture
def stats_address() -> str:
    """A free C{127.0.0.1:port} for StatsInterface."""
    return f"127.0.0.1:{free_port()}"


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket of the test's own, as systemd would make (short path)."""
    with tempfile.TemporaryDirectory(prefix="gn-") as folder:
        path = os.path.join(folder, "notify")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(path)
            yield sock, path


def next_message(sock: socket.socket, timeout: float = 15.0) -> str:
    """
    The next datagram on C{sock} that is not a lone C{STATUS=} line (those
    come every few seconds while scripts run), waiting at most C{timeout}
    seconds for each.
    """
    sock.settimeout(timeout)
    while True:
        message = sock.recv(4096).decode()
        if not message.startswith("STATUS=") or "\n" in message:
            return message


@pytest_twisted.async_yield_fixture
async def link(redis: RedisServer) -> AsyncIterator[RedisLink]:
    """A started link to the test's Redis, ready when the test starts."""
    health = FirstAttempt(reactor, redis.address)
    endpoint = endpoints.HostnameEndpoint(reactor, redis.host, redis.port, timeout=5)
    new = RedisLink(reactor, endpoint, health, name="test")
    new.startService()
    await health.ready.addTimeout(10.0, reactor)
    yield new
    await new.stopService()
