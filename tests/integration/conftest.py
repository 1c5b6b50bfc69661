"""Fixtures for the integration tests: the real daemon, real scripts, real Redis.

Everything here builds on the suite's shared fixtures (``redis``,
``write_config``, ``run_daemon``, ``queue_key``); the additions are small
conveniences for what nearly every test does: write a script, start a daemon
and wait until it is up, push entries, read what landed in Redis, and ask the
stats server over HTTP(S).
"""

from __future__ import annotations

import http.client
import json
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from goophry_tx import __version__
from tests.helpers import DaemonProcess, RedisServer, free_port, wait_for, write_script

#: Logged once the configuration is loaded and the service has started.
STARTED = f"Goophry {__version__} instance "


class Response(NamedTuple):
    status: int
    content_type: str
    body: bytes
    headers: http.client.HTTPMessage

    def json(self) -> Any:
        return json.loads(self.body)


def http_get(
    address: str, path: str, context: ssl.SSLContext | None = None, timeout: float = 5.0
) -> Response:
    """One GET to ``host:port``, without following redirects (HTTPS with a context)."""
    host, _, port = address.rpartition(":")
    conn: http.client.HTTPConnection
    if context is None:
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    else:
        conn = http.client.HTTPSConnection(host, int(port), timeout=timeout, context=context)
    try:
        conn.request("GET", path)
        reply = conn.getresponse()
        body = reply.read()
        return Response(reply.status, reply.getheader("Content-Type", ""), body, reply.msg)
    finally:
        conn.close()


def stats_when(
    address: str,
    predicate: Callable[[dict[str, Any]], object],
    path: str = "/",
    context: ssl.SSLContext | None = None,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """Poll the stats JSON until ``predicate(stats)`` holds; return those stats."""
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


class Goophry:
    """What a test needs to drive one daemon: its queue keys and helpers."""

    def __init__(self, redis: RedisServer, queue_key: str, tmp_path: Path) -> None:
        self.redis = redis
        self.key = queue_key
        self.tmp_path = tmp_path

    def queue(self, task_type: str) -> str:
        return f"{self.key}:{task_type}"

    def failed_key(self, task_type: str) -> str:
        return f"{self.key}:{task_type}:failed"

    def push(self, task_type: str, *payloads: str | bytes) -> None:
        self.redis.cli("RPUSH", self.queue(task_type), *payloads)

    def push_args(self, task_type: str, *args: str) -> None:
        self.push(task_type, json.dumps({"Args": list(args)}))

    def llen(self, key: str) -> int:
        length = self.redis.cli("LLEN", key)
        assert isinstance(length, int)
        return length

    def failed(self, task_type: str) -> list[dict[str, Any]]:
        """The failed list of a type, decoded."""
        entries = self.redis.cli("LRANGE", self.failed_key(task_type), 0, -1)
        assert isinstance(entries, list)
        return [json.loads(entry) for entry in entries]  # type: ignore[arg-type]

    def wait_failed(self, task_type: str, count: int = 1, timeout: float = 10.0) -> list[Any]:
        wait_for(
            lambda: self.llen(self.failed_key(task_type)) >= count,
            timeout,
            message=f"{count} entries in {self.failed_key(task_type)}",
        )
        return self.failed(task_type)

    def inflight_keys(self) -> list[bytes]:
        keys = self.redis.cli("KEYS", f"{self.key}:*:inflight:*")
        assert isinstance(keys, list)
        return keys  # type: ignore[return-value]

    def script(self, name: str, body: str) -> Path:
        return write_script(self.tmp_path / "scripts", name, body)

    @staticmethod
    def started(daemon: DaemonProcess, timeout: float = 15.0) -> DaemonProcess:
        """Wait until the daemon has loaded its config and started its service."""
        daemon.wait_for_log(STARTED, timeout)
        return daemon


@pytest.fixture
def goophry(redis: RedisServer, queue_key: str, tmp_path: Path) -> Goophry:
    return Goophry(redis, queue_key, tmp_path)


@pytest.fixture
def stats_address() -> str:
    """A free ``127.0.0.1:port`` for StatsInterface."""
    return f"127.0.0.1:{free_port()}"
