"""Fixtures shared by the whole suite.

Every pytest-xdist worker is its own session, so each worker starts its own
redis-server on a free port: tests never touch a Redis they did not start
(in particular not the one on 127.0.0.1:6379).
"""

from __future__ import annotations

import hashlib
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import trustme

from tests import helpers
from tests.helpers import DaemonProcess, RedisServer, SentinelGroup, TLSRedisServer


def pytest_configure(config: pytest.Config) -> None:
    # A shell without job control starts a command in the background with
    # SIGINT ignored, and every daemon the suite starts would inherit that:
    # twistd then leaves SIGINT alone, and the tests of Ctrl-C cannot pass.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server for this worker's whole session."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.kill()


@pytest.fixture
def redis(redis_server: RedisServer) -> RedisServer:
    """The session's server, running and empty at the start of the test.

    A test that killed or stopped it does not break the tests after it.
    """
    if not redis_server.running():
        redis_server.start()
    redis_server.cli("FLUSHALL")
    return redis_server


@pytest.fixture
def make_redis_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., RedisServer]]:
    """Factory for a test's own redis-server, e.g. C{make_redis_server(appendonly="yes")}.

    Keyword arguments become redis-server options (C{_} is written C{-});
    C{port=} fixes the port. Every server made is killed at teardown.
    """
    servers: list[RedisServer] = []

    def make(port: int | None = None, **config: str) -> RedisServer:
        server = RedisServer(tmp_path_factory.mktemp("redis-own"), port=port, **config)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.kill()


@pytest.fixture
def make_tls_redis_server(
    tmp_path_factory: pytest.TempPathFactory, tls_ca: trustme.CA
) -> Iterator[Callable[..., TLSRedisServer]]:
    """Factory for a test's own TLS-only redis-server, its certificates issued by ``tls_ca``.

    ``make_tls_redis_server(auth_clients=True)`` demands a client certificate;
    other keyword arguments are as for ``make_redis_server``.  The server's
    ``ca_file``, ``client_cert`` and ``client_key`` are what a client needs.
    """
    servers: list[TLSRedisServer] = []

    def make(auth_clients: bool = False, port: int | None = None, **config: str) -> TLSRedisServer:
        directory = tmp_path_factory.mktemp("redis-tls")
        server = TLSRedisServer(directory, tls_ca, auth_clients, port=port, **config)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.kill()


@pytest.fixture
def sentinel_group(
    tmp_path_factory: pytest.TempPathFactory,
    make_redis_server: Callable[..., RedisServer],
) -> Iterator[SentinelGroup]:
    """A master, its replica and three sentinels (master name ``goophry``), for one test."""
    group = SentinelGroup(make_redis_server, lambda: tmp_path_factory.mktemp("sentinel"))
    yield group
    group.kill()


@pytest.fixture
def tls_sentinel_group(
    tmp_path_factory: pytest.TempPathFactory,
    make_tls_redis_server: Callable[..., TLSRedisServer],
) -> Iterator[SentinelGroup]:
    """As ``sentinel_group``, every server and sentinel speaking TLS only (``tls_ca``'s).

    Clients must present a certificate: the master's ``client_cert`` and ``client_key``.
    """

    def make(**config: str) -> TLSRedisServer:
        return make_tls_redis_server(auth_clients=True, tls_replication="yes", **config)

    group = SentinelGroup(make, lambda: tmp_path_factory.mktemp("sentinel"))
    yield group
    group.kill()


@pytest.fixture
def queue_key(request: pytest.FixtureRequest) -> str:
    """A RedisQueueKey no other test uses (short, readable in redis-cli)."""
    digest = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:10]
    return f"gt-{digest}"


@pytest.fixture
def write_config(tmp_path: Path, redis: RedisServer, queue_key: str) -> Callable[..., Path]:
    """C{write_config(Tasks=[...], **settings) -> path}, pointing at the test's Redis.

    RedisAddress and RedisQueueKey default to the C{redis} fixture's address
    and C{queue_key}; pass a setting as None to leave it out. A first
    positional argument, when given, is the directory (default C{tmp_path}).
    """

    def write(directory: Path | None = None, /, **settings: Any) -> Path:
        settings.setdefault("RedisAddress", redis.address)
        settings.setdefault("RedisQueueKey", queue_key)
        return helpers.write_config(directory or tmp_path, **settings)

    return write


@pytest.fixture
def run_daemon(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    """Start the real daemon: C{run_daemon(cfg, "-v", how="twistd"|"tac"|"cli")}.

    Optional keywords: C{cwd} (default: a fresh directory under tmp_path),
    C{env} (added to the environment), C{twistd_args} (options before the
    plugin name, e.g. C{["--pidfile="]}). Output goes to C{daemon-N.log},
    read with C{.log_text()}. Everything still running at teardown, scripts
    included, is killed.
    """
    started: list[DaemonProcess] = []

    def run(
        config_path: Path,
        *extra_args: str,
        how: str = "twistd",
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        twistd_args: tuple[str, ...] | list[str] = (),
    ) -> DaemonProcess:
        n = len(started) + 1
        if cwd is None:
            cwd = tmp_path / f"daemon-{n}"
            cwd.mkdir(exist_ok=True)
        daemon = helpers.start_daemon_process(
            config_path,
            *extra_args,
            log_path=tmp_path / f"daemon-{n}.log",
            cwd=cwd,
            how=how,
            env=env,
            twistd_args=twistd_args,
        )
        started.append(daemon)
        return daemon

    yield run
    for daemon in started:
        daemon.kill_session()


@pytest.fixture(scope="session")
def tls_ca() -> trustme.CA:
    """A throwaway root CA, for this worker's session."""
    return trustme.CA()


class TLSFiles(NamedTuple):
    cert: Path
    key: Path
    ca: Path


@pytest.fixture
def tls_files(tmp_path: Path, tls_ca: trustme.CA) -> TLSFiles:
    """Server certificate files for 127.0.0.1 and localhost: (cert, key, ca).

    The certificate is issued by an intermediate CA and C{cert} holds the
    chain (leaf, then intermediate), so a client that trusts only C{ca}
    checks that the server sends the whole chain.
    """
    leaf = tls_ca.create_child_ca().issue_cert("127.0.0.1", "localhost")
    files = TLSFiles(tmp_path / "stats.crt", tmp_path / "stats.key", tmp_path / "ca.pem")
    files.cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(files.key))
    tls_ca.cert_pem.write_to_path(str(files.ca))
    return files
