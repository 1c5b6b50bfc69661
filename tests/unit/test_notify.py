"""goophry_tx.notify: sd_notify datagrams, sent to a socket the test owns."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.logger import LogEvent, Logger, formatEvent

from goophry_tx.notify import SystemdNotifier
from tests.helpers import notify_socket


@pytest.fixture
def listener() -> Iterator[tuple[socket.socket, str]]:
    with notify_socket() as (sock, path):
        sock.settimeout(5.0)
        yield sock, path


def received(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode("utf-8").split("\n")


def test_each_state_is_one_datagram(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": path})
    notifier.ready()
    assert received(sock) == ["READY=1"]
    notifier.ready("2 types, 0 running")
    assert received(sock) == ["READY=1", "STATUS=2 types, 0 running"]
    notifier.status("2 types, 3 running")
    assert received(sock) == ["STATUS=2 types, 3 running"]
    notifier.reloading()
    reloading, usec = received(sock)
    assert reloading == "RELOADING=1"
    assert usec.startswith("MONOTONIC_USEC=") and int(usec.split("=")[1]) > 0
    notifier.stopping()
    assert received(sock) == ["STOPPING=1"]


def test_an_abstract_socket_is_named_with_an_at_sign() -> None:
    name = f"goophry-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5.0)
        SystemdNotifier.from_environment({"NOTIFY_SOCKET": "@" + name}).stopping()
        assert received(sock) == ["STOPPING=1"]


@pytest.mark.parametrize("environ", [{}, {"NOTIFY_SOCKET": ""}])
def test_without_notify_socket_nothing_is_sent(environ: dict[str, str]) -> None:
    notifier = SystemdNotifier.from_environment(environ)
    assert notifier.address is None
    # Nothing to send to, and nothing raised.
    notifier.ready()
    notifier.stopping()


def test_a_socket_that_is_gone_is_logged_once(tmp_path: Path) -> None:
    events: list[LogEvent] = []
    notifier = SystemdNotifier(str(tmp_path / "gone"))
    notifier.log = Logger(observer=events.append)
    notifier.ready()
    notifier.stopping()
    assert [formatEvent(e) for e in events] == [
        f"cannot notify systemd at {tmp_path / 'gone'}: No such file or directory"
    ]
