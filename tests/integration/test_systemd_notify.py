"""NOTIFY_SOCKET: READY=1 once the daemon takes entries, STOPPING=1 at SIGTERM."""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import DaemonProcess, RedisServer, notify_socket, wait_for
from tests.integration.conftest import STARTED, Goophry

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(name="notify_socket")
def notify_socket_fixture() -> Iterator[tuple[socket.socket, str]]:
    with notify_socket() as made:
        yield made


def pending(sock: socket.socket) -> list[str]:
    """The datagrams already there, without waiting."""
    messages = []
    sock.setblocking(False)
    try:
        while True:
            messages.append(sock.recv(4096).decode())
    except BlockingIOError:
        return messages
    finally:
        sock.setblocking(True)


def next_message(sock: socket.socket, timeout: float = 15.0) -> str:
    sock.settimeout(timeout)
    return sock.recv(4096).decode()


@pytest.mark.parametrize("how", ["cli", "twistd"])
def test_ready_after_redis_answers_and_stopping_at_sigterm(
    goophry: Goophry,
    make_redis_server: Callable[..., RedisServer],
    write_config: Callable[..., Path],
    run_daemon: Callable[..., DaemonProcess],
    notify_socket: tuple[socket.socket, str],
    tmp_path: Path,
    how: str,
) -> None:
    sock, path = notify_socket
    redis = make_redis_server()
    redis.stop()
    ran = tmp_path / "ran"
    script = goophry.script("t.sh", f"touch {ran}")
    cfg = write_config(RedisAddress=redis.address, Tasks=[{"Type": "t", "Script": str(script)}])
    daemon = goophry.started(run_daemon(cfg, how=how, env={"NOTIFY_SOCKET": path}))
    daemon.wait_for_log("unreachable", timeout=15)
    # Started, but Redis is away: not ready.
    assert pending(sock) == [], daemon.log_text()

    redis.start()
    assert next_message(sock) == "READY=1\nSTATUS=1 types", daemon.log_text()
    redis.cli("RPUSH", goophry.queue("t"), '{"Args":[]}')
    wait_for(ran.exists, message=daemon.log_text)

    daemon.signal(signal.SIGTERM)
    assert next_message(sock) == "STOPPING=1", daemon.log_text()
    assert daemon.wait(15) == 0, daemon.log_text()
    assert STARTED in daemon.log_text()
