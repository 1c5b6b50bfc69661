"""goophry_tx.redis: the link's connection check, replies from a demoted master, TLS reasons."""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from service_identity import VerificationError
from service_identity.hazmat import DNS_ID, DNSMismatch
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from goophry_tx.redis import (
    ConnectionError,
    RedisHealth,
    RedisLink,
    ResponseError,
    Run,
    is_transient,
)
from goophry_tx.tls import lost_reason
from tests.unit.fakes import failure_result_of
from tests.unit.test_connect import FakeEndpoint


def ready_link(check: Any = None) -> tuple[RedisLink, FakeEndpoint, RedisHealth, Clock]:
    """A link connected over a L{FakeEndpoint}, INFO answered: the check, if any, is next."""
    clock = Clock()
    endpoint = FakeEndpoint()
    health = RedisHealth(clock, "redis:6379")
    link = RedisLink(clock, endpoint, health, "control", check=check)
    link.startService()
    assert endpoint.sent() == b"*2\r\n$4\r\nINFO\r\n$11\r\npersistence\r\n"
    endpoint.answer(b"$9\r\nloading:0\r\n")
    return link, endpoint, health, clock


def test_the_check_runs_before_the_link_is_ready() -> None:
    checked: list[Run] = []
    gate: Deferred[None] = Deferred()

    def check(run: Run) -> Deferred[None]:
        checked.append(run)
        return gate

    link, endpoint, health, _ = ready_link(check)
    assert len(checked) == 1
    assert not link.connected
    gate.callback(None)
    endpoint.answer(b":12\r\n")  # CLIENT ID
    assert link.connected
    assert link.client_id == 12
    assert health.connected


def test_a_failed_check_drops_the_connection_and_tries_again() -> None:
    def check(run: Run) -> Deferred[None]:
        return fail(ResponseError("ROLE is slave, not master"))

    link, endpoint, health, clock = ready_link(check)
    protocol, transport = endpoint.connections[0]
    assert transport.disconnecting
    assert not link.connected
    assert not health.connected
    protocol.connectionLost(Failure(ConnectionError("closed")))
    clock.advance(10)
    assert len(endpoint.connections) == 2


def test_a_readonly_reply_drops_the_connection_and_fails_as_a_lost_one() -> None:
    link, endpoint, _, _ = ready_link()
    endpoint.answer(b":12\r\n")
    assert link.connected
    protocol, transport = endpoint.connections[0]
    d = link.execute("LREM", "q", 1, "x")
    again = link.execute("RPUSH", "q", "y")
    endpoint.answer(b"-READONLY You can't write against a read only replica.\r\n" * 2)
    failure = failure_result_of(d, ConnectionError)
    assert "no longer the master" in failure.getErrorMessage()
    failure_result_of(again, ConnectionError)
    assert transport.disconnecting


def test_an_unblocked_reply_drops_the_connection_too() -> None:
    link, endpoint, _, _ = ready_link()
    endpoint.answer(b":12\r\n")
    d = link.execute("BLMOVE", "q", "q:inflight", "LEFT", "RIGHT", 10)
    endpoint.answer(b"-UNBLOCKED force unblock from blocking operation\r\n")
    failure_result_of(d, ConnectionError)
    assert endpoint.connections[0][1].disconnecting


def test_other_error_replies_leave_the_connection_alone() -> None:
    link, endpoint, _, _ = ready_link()
    endpoint.answer(b":12\r\n")
    d = link.execute("INCR", "q")
    endpoint.answer(b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n")
    failure_result_of(d, ResponseError)
    assert not endpoint.connections[0][1].disconnecting
    assert link.connected


def test_tls_reasons_are_said_plainly() -> None:
    ssl_error = SSL.Error([("SSL routines", "", "certificate verify failed")])
    assert lost_reason(Failure(ssl_error)) == "TLS: certificate verify failed"
    mismatch = VerificationError(errors=[DNSMismatch(mismatched_id=DNS_ID("redis.lan"))])
    assert lost_reason(Failure(mismatch)) == "TLS: the server's certificate is not for redis.lan"
    assert lost_reason(Failure(ConnectionError("gone"))) == "gone"


def test_noreplicas_is_not_now() -> None:
    error = ResponseError("NOREPLICAS Not enough good replicas to write.")
    assert is_transient(Failure(error))
