"""goophry_tx.connect: which endpoint a config gives, and the Sentinel endpoint with fakes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
import trustme
from twisted.internet import endpoints
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import ConnectError, ConnectionDone
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from goophry_tx.config import Config, TaskType
from goophry_tx.connect import SentinelEndpoint, connection_check, describe, redis_endpoint
from goophry_tx.redis import ResponseError, encode_command
from goophry_tx.tls import client_tls_options
from tests.unit.fakes import FakeEndpoint, assert_no_result, failure_result_of, success_result_of

CONFIG = Config(
    path="goophry.config.json",
    redis_queue_key="q",
    tasks=(TaskType("t", "/bin/true"),),
    redis_address="127.0.0.1:6390",
)


def connected_factory(reactor: MemoryReactorClock, config: Config) -> tuple[str, int, Any]:
    """Connect to C{config}'s Redis on C{reactor}: the host, port and factory of the attempt."""
    endpoint = redis_endpoint(reactor, config)
    verifyObject(IStreamClientEndpoint, endpoint)
    endpoint.connect(Factory.forProtocol(Protocol))
    host, port, factory, timeout, _ = reactor.tcpClients[-1]
    assert timeout == 5.0
    return host, port, factory._wrappedFactory


def test_tcp() -> None:
    host, port, factory = connected_factory(MemoryReactorClock(), CONFIG)
    assert (host, port) == ("127.0.0.1", 6390)
    assert not isinstance(factory, TLSMemoryBIOFactory)


def test_unix() -> None:
    reactor = MemoryReactorClock()
    config = attrs.evolve(CONFIG, redis_network="unix", redis_address="/run/redis.sock")
    redis_endpoint(reactor, config).connect(Factory.forProtocol(Protocol))
    assert reactor.unixClients[-1][0] == "/run/redis.sock"


@pytest.mark.parametrize(
    ("server_name", "checked"), [(None, "127.0.0.1"), ("redis.lan", "redis.lan")]
)
def test_tls_checks_the_address_or_the_server_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server_name: str | None, checked: str
) -> None:
    ca_file = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca_file))
    config = attrs.evolve(
        CONFIG, redis_tls=True, redis_tls_ca_file=str(ca_file), redis_tls_server_name=server_name
    )
    names: list[str] = []

    def spy(name: str, *args: Any) -> Any:
        names.append(name)
        return client_tls_options(name, *args)

    monkeypatch.setattr("goophry_tx.connect.client_tls_options", spy)
    _, _, factory = connected_factory(MemoryReactorClock(), config)
    assert isinstance(factory, TLSMemoryBIOFactory)
    assert names == [checked]


def test_describe() -> None:
    assert describe(CONFIG) == "127.0.0.1:6390"
    config = attrs.evolve(
        CONFIG,
        redis_sentinels=(("10.0.0.1", 26379), ("10.0.0.2", 26379)),
        redis_sentinel_master="m",
    )
    assert describe(config) == "master m (Sentinel 10.0.0.1:26379, 10.0.0.2:26379)"


# The Sentinel endpoint


def bulk_array(*items: bytes) -> bytes:
    return b"*%d\r\n" % len(items) + b"".join(b"$%d\r\n%s\r\n" % (len(i), i) for i in items)


@attrs.define
class Rig:
    sentinels: list[FakeEndpoint]
    endpoint: SentinelEndpoint
    clock: MemoryReactorClock
    masters: list[tuple[str, int]]
    master: FakeEndpoint


def rig(*refuse: bool, username: str | None = None, password: str | None = None) -> Rig:
    clock = MemoryReactorClock()
    sentinels = [FakeEndpoint(refuse=r) for r in refuse]
    masters: list[tuple[str, int]] = []
    master = FakeEndpoint()

    def master_endpoint(host: str, port: int) -> IStreamClientEndpoint:
        masters.append((host, port))
        return master

    endpoint = SentinelEndpoint(
        clock,
        [(f"s{index}:26379", s) for index, s in enumerate(sentinels)],
        "jobs",
        master_endpoint,
        username=username,
        password=password,
    )
    verifyObject(IStreamClientEndpoint, endpoint)
    return Rig(sentinels, endpoint, clock, masters, master)


ASK = encode_command(["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "jobs"])


def test_asks_the_sentinels_in_turn_and_connects_to_the_master() -> None:
    r = rig(True, False)
    d = r.endpoint.connect(Factory.forProtocol(Protocol))
    assert_no_result(d)
    assert r.sentinels[1].sent() == ASK
    r.sentinels[1].answer(bulk_array(b"10.0.0.9", b"6379"))
    protocol = success_result_of(d)
    assert r.masters == [("10.0.0.9", 6379)]
    assert protocol is r.master.connections[0][0]
    # The question's connection is closed; the one that answered is asked first next time.
    assert r.sentinels[1].connections[0][1].disconnecting
    r.endpoint.connect(Factory.forProtocol(Protocol))
    assert len(r.sentinels[1].connections) == 2


def test_authenticates_to_the_sentinels() -> None:
    r = rig(False, username="watcher", password="pw")
    d = r.endpoint.connect(Factory.forProtocol(Protocol))
    assert r.sentinels[0].sent() == encode_command(["AUTH", "watcher", "pw"])
    r.sentinels[0].answer(b"+OK\r\n")
    assert r.sentinels[0].sent().endswith(ASK)
    r.sentinels[0].answer(bulk_array(b"10.0.0.9", b"6379"))
    success_result_of(d)


def test_when_no_sentinel_names_the_master_the_connect_fails_saying_why() -> None:
    r = rig(True, False, False)
    d = r.endpoint.connect(Factory.forProtocol(Protocol))
    r.sentinels[1].answer(b"*-1\r\n")
    r.sentinels[2].answer(b"-NOAUTH Authentication required.\r\n")
    failure = failure_result_of(d, ConnectError)
    message = failure.getErrorMessage()
    assert "no sentinel named the master" in message
    assert "s0:26379: " in message and "refused" in message
    assert "s1:26379: does not know a master named jobs" in message
    assert "s2:26379: NOAUTH Authentication required." in message
    assert r.masters == []


def test_a_sentinel_that_does_not_answer_is_given_up_after_the_timeout() -> None:
    r = rig(False, False)
    d = r.endpoint.connect(Factory.forProtocol(Protocol))
    r.clock.advance(5.0)
    assert r.sentinels[1].sent() == ASK
    r.sentinels[1].answer(bulk_array(b"10.0.0.9", b"6379"))
    success_result_of(d)
    assert r.masters == [("10.0.0.9", 6379)]


def run_replying(reply: Any) -> Any:
    sent: list[Sequence[Any]] = []

    def run(*command: Any) -> Deferred[Any]:
        sent.append(command)
        return succeed(reply)

    run.sent = sent  # type: ignore[attr-defined]
    return run


def test_role_master_passes() -> None:
    r = rig(False, False)
    run = run_replying([b"master", 10, []])
    check = connection_check(r.endpoint)
    assert check is not None
    success_result_of(check(run))
    assert run.sent == [("ROLE",)]


def test_a_replica_is_refused_and_its_sentinel_asked_last_next_time() -> None:
    r = rig(False, False)
    d = r.endpoint.connect(Factory.forProtocol(Protocol))
    r.sentinels[0].answer(bulk_array(b"10.0.0.9", b"6379"))
    success_result_of(d)
    check = connection_check(r.endpoint)
    assert check is not None
    failure = failure_result_of(check(run_replying([b"slave", b"10.0.0.8", 6379])), ResponseError)
    assert failure.getErrorMessage() == "ROLE is slave, not master: asking the sentinels again"
    r.endpoint.connect(Factory.forProtocol(Protocol))
    assert len(r.sentinels[0].connections) == 1
    assert r.sentinels[1].sent() == ASK


def test_no_check_without_sentinels() -> None:
    assert connection_check(endpoints.HostnameEndpoint(MemoryReactorClock(), "h", 1)) is None


def test_a_master_that_refuses_is_named_in_the_failure() -> None:
    r = rig(False)
    r.master.refuse = True
    d = r.endpoint.connect(Factory.forProtocol(Protocol))
    r.sentinels[0].answer(bulk_array(b"10.0.0.9", b"6379"))
    failure = failure_result_of(d, ConnectError)
    assert failure.getErrorMessage().startswith("master 10.0.0.9:6379: ")


def test_cancelling_a_connect_closes_the_question() -> None:
    r = rig(False)
    d = r.endpoint.connect(Factory.forProtocol(Protocol))
    d.cancel()
    failure_result_of(d, CancelledError)
    assert r.sentinels[0].connections[0][1].disconnecting
    assert r.masters == []


def test_connections_to_a_master_no_longer_named_are_dropped() -> None:
    r = rig(False)
    d = r.endpoint.connect(Factory.forProtocol(Protocol))
    r.sentinels[0].answer(bulk_array(b"10.0.0.9", b"6379"))
    _, master_transport = r.master.connections[0]
    success_result_of(d)

    # Asked again while the connection is open: the same master, nothing happens.
    r.clock.advance(1.0)
    assert len(r.sentinels[0].connections) == 2
    r.sentinels[0].answer(bulk_array(b"10.0.0.9", b"6379"))
    assert not master_transport.disconnecting

    # A failover: the connection to the old master is dropped.
    r.clock.advance(1.0)
    r.sentinels[0].answer(bulk_array(b"10.0.0.8", b"6379"))
    assert master_transport.disconnecting


class Closing(Protocol):
    """Says when its connection is gone, as txredisapi's protocol does."""

    def connectionLost(self, reason: Failure = ConnectionDone) -> None:  # noqa: N802
        self.connected = False


def test_no_questions_once_the_connections_are_closed() -> None:
    r = rig(False)
    d = r.endpoint.connect(Factory.forProtocol(Closing))
    r.sentinels[0].answer(bulk_array(b"10.0.0.9", b"6379"))
    protocol = success_result_of(d)
    protocol.connectionLost(Failure(ConnectionDone()))
    r.clock.advance(10.0)
    assert len(r.sentinels[0].connections) == 1
    assert r.clock.getDelayedCalls() == []
