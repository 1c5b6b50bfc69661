"""TLS to Redis: a real TLS-only redis-server, certificates made by trustme.

A certificate that does not verify is refused with its reason, logged once,
and retried like any other failure to connect: once the server's side is
put right, the daemon connects without a restart.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.helpers import DaemonProcess, TLSRedisServer, wait_for, write_config
from tests.integration.conftest import Goophry

pytestmark = pytest.mark.integration

MakeTLSServer = Callable[..., TLSRedisServer]
RunDaemon = Callable[..., DaemonProcess]

UNREACHABLE = "unreachable: connection lost: TLS: "
BACK = "is back after"


def _config(goophry: Goophry, server: TLSRedisServer, marks: Path, **settings: Any) -> Path:
    """A config for ``server`` with its CA and client certificate, and ``settings`` over them."""
    script = goophry.script("task.sh", f'echo "$1" >> {marks}\n')
    config: dict[str, Any] = {
        "RedisAddress": server.address,
        "RedisQueueKey": goophry.key,
        "Tasks": [{"Type": "work", "Script": str(script)}],
        "RedisTLS": True,
        "RedisTLSCAFile": str(server.ca_file),
        "RedisTLSCertFile": str(server.client_cert),
        "RedisTLSKeyFile": str(server.client_key),
        **settings,
    }
    return write_config(goophry.tmp_path, **config)


def _ran(marks: Path) -> list[str]:
    return marks.read_text().splitlines() if marks.exists() else []


def test_a_verified_certificate_and_a_client_certificate_connect(
    make_tls_redis_server: MakeTLSServer, queue_key: str, tmp_path: Path, run_daemon: RunDaemon
) -> None:
    server = make_tls_redis_server(auth_clients=True)
    goophry = Goophry(server, queue_key, tmp_path)
    marks = tmp_path / "ran"
    daemon = Goophry.started(run_daemon(_config(goophry, server, marks)))
    goophry.push_args("work", "over-tls")
    wait_for(lambda: _ran(marks) == ["over-tls"], 15, message=daemon.log_text)
    assert "unreachable" not in daemon.log_text()
    # The daemon's connections are the server's TLS clients (it has no plain port).
    clients = server.cli("CLIENT", "LIST")
    assert isinstance(clients, bytes)
    assert b"name=goophry:control" in clients


def _server_cert(server: TLSRedisServer, ca: trustme.CA, *names: str) -> None:
    """Make ``server`` present a certificate from ``ca`` for ``names`` from now on."""
    leaf = ca.issue_cert(*names)
    cert, key = server.dir / "fixed.pem", server.dir / "fixed.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    server.cli("CONFIG", "SET", "tls-cert-file", str(cert), "tls-key-file", str(key))


def _trust_other_ca(server: TLSRedisServer, other: trustme.CA) -> dict[str, Any]:
    other_file = server.dir / "other-ca.pem"
    other.cert_pem.write_to_path(str(other_file))
    return {"RedisTLSCAFile": str(other_file)}


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("wrong CA", "certificate verify failed"),
        ("wrong name", "the server's certificate is not for redis.example.com"),
        ("no client certificate", "alert certificate required"),
    ],
)
def test_a_certificate_that_does_not_verify_is_refused_logged_once_and_retried(
    make_tls_redis_server: MakeTLSServer,
    queue_key: str,
    tmp_path: Path,
    run_daemon: RunDaemon,
    tls_ca: trustme.CA,
    case: str,
    reason: str,
) -> None:
    server = make_tls_redis_server(auth_clients=True)
    goophry = Goophry(server, queue_key, tmp_path)
    marks = tmp_path / "ran"
    other = trustme.CA()
    settings, fix = {
        "wrong CA": (
            _trust_other_ca(server, other),
            lambda: _server_cert(server, other, "127.0.0.1"),
        ),
        "wrong name": (
            {"RedisTLSServerName": "redis.example.com"},
            lambda: _server_cert(server, tls_ca, "redis.example.com"),
        ),
        "no client certificate": (
            {"RedisTLSCertFile": None, "RedisTLSKeyFile": None},
            lambda: server.cli("CONFIG", "SET", "tls-auth-clients", "no"),
        ),
    }[case]
    goophry.push_args("work", "waits")
    daemon = run_daemon(_config(goophry, server, marks, **settings))
    log = daemon.wait_for_log(reason, timeout=15)
    [line] = [line for line in log.splitlines() if reason in line]
    assert UNREACHABLE in line, line
    assert _ran(marks) == []
    assert goophry.llen(goophry.queue("work")) == 1

    # Retried with backoff: the server's side put right is picked up.
    fix()
    daemon.wait_for_log(BACK, timeout=15)
    wait_for(lambda: _ran(marks) == ["waits"], 15, message=daemon.log_text)
    log = daemon.log_text()
    assert log.count(reason) == 1, log
    assert log.count("unreachable") == 1, log
