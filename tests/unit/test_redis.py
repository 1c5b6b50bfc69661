"""goophry_tx.redis: the link interface, the retry policy, and what it takes from txredisapi."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import txredisapi
from twisted.internet.abstract import FileDescriptor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from goophry_tx.redis import (
    ConnectionError,
    IRedisLink,
    ISubscriber,
    ISubscribingLink,
    RedisHealth,
    RedisLink,
    ResponseError,
    Retry,
    _Protocol,
    encode_command,
    write_now,
)
from tests.unit.fakes import FakeRedisLink, failure_result_of, success_result_of

# The link and its fake


def _link() -> RedisLink:
    """A link that is not started: it never connects."""
    reactor = MemoryReactorClock()
    return RedisLink(
        reactor,
        TCP4ClientEndpoint(reactor, "127.0.0.1", 6379),
        RedisHealth(reactor, "127.0.0.1:6379"),
        name="control",
    )


def test_the_link_and_its_fake_provide_the_interface() -> None:
    assert verifyObject(IRedisLink, _link())
    assert verifyObject(IRedisLink, FakeRedisLink())
    assert verifyObject(ISubscribingLink, _link())
    assert verifyObject(ISubscribingLink, FakeRedisLink())


def test_a_link_that_is_down_fails_commands_with_connection_error() -> None:
    link = _link()
    assert not link.connected
    failure_result_of(link.execute("PING"), ConnectionError)
    failure_result_of(link.transaction([("PING",)]), ConnectionError)


# txredisapi's internals, which _Protocol alone reaches into


def _protocol() -> tuple[_Protocol, StringTransport]:
    """A connected protocol; it has no link, as no test here loses the connection."""
    protocol = _Protocol(charset=None, convertNumbers=False)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def test_txredisapi_still_has_the_internals_this_package_uses() -> None:
    """
    If this fails, a txredisapi release changed what C{_Protocol.send} and
    C{_Protocol.send_transaction} rely on: rewrite those two, nothing else.
    """
    protocol = _Protocol(charset=None, convertNumbers=False)
    missing = [
        name
        for name, holder in (
            ("replyQueue.waiting", getattr(protocol, "replyQueue", None)),
            ("pipelining", protocol),
            ("pipelined_commands", protocol),
            ("pipelined_replies", protocol),
        )
        if holder is None or not hasattr(holder, name.split(".")[-1])
    ]
    assert not missing, (
        f"txredisapi {getattr(txredisapi, '__version__', '?')} no longer has {missing}: "
        "goophry_tx.redis._Protocol must be rewritten for it"
    )
    assert isinstance(protocol.replyQueue.waiting, list)


@implementer(ISubscriber)
class Listener:
    def __init__(self) -> None:
        self.messages: list[tuple[bytes, bytes]] = []

    def subscribed(self) -> None:
        raise AssertionError("the protocol never says so: its link does")

    def message(self, channel: bytes, data: bytes) -> None:
        self.messages.append((channel, data))


def test_a_subscribed_connection_passes_messages_on_and_replies_in_order() -> None:
    protocol, transport = _protocol()
    # Before SUBSCRIBE, a reply that looks like a message is a reply.
    d = protocol.send(encode_command(("LRANGE", "k", 0, -1)))
    protocol.dataReceived(b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nx\r\n")
    assert success_result_of(d) == [b"message", b"c", b"x"]
    listener = Listener()
    protocol.listener = listener
    subscribed = protocol.send(encode_command(("SUBSCRIBE", "q:paused")))
    protocol.dataReceived(
        b"*3\r\n$9\r\nsubscribe\r\n$8\r\nq:paused\r\n:1\r\n"
        b"*3\r\n$7\r\nmessage\r\n$8\r\nq:paused\r\n$7\r\npause t\r\n"
    )
    assert success_result_of(subscribed) == [b"subscribe", b"q:paused", 1]
    assert listener.messages == [(b"q:paused", b"pause t")]


def test_health_tells_when_redis_is_back_after_an_outage() -> None:
    clock = Clock()
    back: list[None] = []
    health = RedisHealth(clock, "127.0.0.1:6379", on_back=lambda: back.append(None))
    health.log = Logger(observer=lambda event: None)
    health.up("control")
    assert back == []
    health.down("control", "refused")
    health.down("take:0", "refused")
    health.up("control")
    assert back == []
    health.up("take:0")
    assert back == [None]


def test_send_writes_the_command_and_fires_with_its_reply() -> None:
    protocol, transport = _protocol()
    d = protocol.send(encode_command(("BLMOVE", "q", "i", "LEFT", "RIGHT", 0.5)))
    assert transport.value() == (
        b"*6\r\n$6\r\nBLMOVE\r\n$1\r\nq\r\n$1\r\ni\r\n$4\r\nLEFT\r\n$5\r\nRIGHT\r\n$3\r\n0.5\r\n"
    )
    protocol.dataReceived(b"$5\r\nentry\r\n")
    assert success_result_of(d) == b"entry"


def test_send_fails_with_an_error_reply() -> None:
    protocol, _ = _protocol()
    d = protocol.send(encode_command(("GET", "k")))
    protocol.dataReceived(b"-WRONGTYPE not a string\r\n")
    assert "WRONGTYPE" in failure_result_of(d, ResponseError).getErrorMessage()


def test_a_transaction_is_one_write_and_fires_with_the_replies() -> None:
    protocol, transport = _protocol()
    d = protocol.send_transaction([("RPUSH", "f", b"x"), ("EXPIRE", "f", 60)])
    assert transport.value() == b"".join(
        encode_command(c)
        for c in (("MULTI",), ("RPUSH", "f", b"x"), ("EXPIRE", "f", 60), ("EXEC",))
    )
    assert protocol.pipelining is False
    assert protocol.pipelined_commands == []
    protocol.dataReceived(b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n:1\r\n:1\r\n")
    assert success_result_of(d) == [1, 1]


def test_a_transaction_fails_with_the_error_exec_reports() -> None:
    protocol, _ = _protocol()
    d = protocol.send_transaction([("LPUSH", "k", b"x")])
    protocol.dataReceived(b"+OK\r\n+QUEUED\r\n*1\r\n-WRONGTYPE not a list\r\n")
    assert "WRONGTYPE" in failure_result_of(d, ResponseError).getErrorMessage()


# The retry policy


def test_a_lost_connection_waits_for_the_link() -> None:
    clock, link = Clock(), FakeRedisLink(connected=False)
    retry = Retry(clock)
    calls: list[str] = []
    assert retry.later(Failure(ConnectionError("lost")), link, lambda: calls.append("again"))
    clock.advance(60)
    assert calls == []
    link.reconnect()
    assert calls == ["again"]


@pytest.mark.parametrize("error", ["LOADING Redis is loading", "BUSY running a script"])
def test_a_transient_error_tries_again_shortly(error: str) -> None:
    clock, link = Clock(), FakeRedisLink()
    retry = Retry(clock, delay=0.5)
    calls: list[str] = []
    assert retry.later(Failure(ResponseError(error)), link, lambda: calls.append("again"))
    clock.advance(0.4)
    assert calls == []
    clock.advance(0.1)
    assert calls == ["again"]


def test_any_other_error_is_left_to_the_caller() -> None:
    clock, link = Clock(), FakeRedisLink()
    retry = Retry(clock)
    assert not retry.later(Failure(ResponseError("WRONGTYPE")), link, lambda: None)
    assert not retry.later(Failure(ValueError("bug")), link, lambda: None)
    assert clock.getDelayedCalls() == []


def test_cancel_forgets_every_retry_to_come() -> None:
    clock, link = Clock(), FakeRedisLink(connected=False)
    retry = Retry(clock)
    calls: list[str] = []
    retry.later(Failure(ConnectionError("lost")), link, lambda: calls.append("waited"))
    retry.later(Failure(ResponseError("LOADING")), link, lambda: calls.append("timed"))
    retry.cancel()
    assert clock.getDelayedCalls() == []
    link.reconnect()
    clock.advance(10)
    assert calls == []


# Writing at once (write_now)


class SocketTransport(FileDescriptor):
    """A socket's own transport, as Twisted's TCP and unix ones are, over one end of a pair."""

    def __init__(self, sock: socket.socket, reactor: MemoryReactorClock) -> None:
        super().__init__(reactor)
        self.socket = sock
        self.connected = True

    def fileno(self) -> int:
        return self.socket.fileno()

    def writeSomeData(self, data: bytes) -> int:
        return self.socket.send(data)


@pytest.fixture
def pair() -> Iterator[tuple[SocketTransport, socket.socket, MemoryReactorClock]]:
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    peer.settimeout(5)
    reactor = MemoryReactorClock()
    yield SocketTransport(ours, reactor), peer, reactor
    ours.close()
    peer.close()


def test_a_command_goes_out_at_once_when_nothing_is_buffered(
    pair: tuple[SocketTransport, socket.socket, MemoryReactorClock],
) -> None:
    transport, peer, reactor = pair
    write_now(transport, b"*1\r\n$4\r\nPING\r\n")
    assert peer.recv(100) == b"*1\r\n$4\r\nPING\r\n"
    # Nothing left for the reactor's next turn.
    assert reactor.getWriters() == []


def test_what_is_buffered_goes_first(
    pair: tuple[SocketTransport, socket.socket, MemoryReactorClock],
) -> None:
    transport, peer, reactor = pair
    transport.write(b"first ")
    write_now(transport, b"second")
    # Both wait for the reactor, in order.
    assert reactor.getWriters() == [transport]
    transport.doWrite()
    assert peer.recv(100) == b"first second"


def test_what_the_socket_does_not_take_is_buffered_in_order(
    pair: tuple[SocketTransport, socket.socket, MemoryReactorClock],
) -> None:
    transport, peer, reactor = pair
    transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    data = bytes(range(256)) * 4096
    write_now(transport, data)
    # The socket took what it could; the rest waits for the reactor.
    assert reactor.getWriters() == [transport]
    received = b""
    while len(received) < len(data):
        received += peer.recv(65536)
        transport.doWrite()
    assert received == data


def test_an_error_is_left_to_twisted(
    pair: tuple[SocketTransport, socket.socket, MemoryReactorClock],
) -> None:
    transport, peer, reactor = pair
    peer.close()
    write_now(transport, b"*1\r\n$4\r\nPING\r\n")
    # Buffered: Twisted's own write meets the error and reports the loss.
    assert reactor.getWriters() == [transport]


def test_a_wrapper_is_never_written_under(
    pair: tuple[SocketTransport, socket.socket, MemoryReactorClock],
) -> None:
    # A TLS wrapper hands unknown attributes (socket, dataBuffer) on to the
    # transport under it: plain text must not reach that socket.
    transport, peer, _ = pair
    wrapper = ProtocolWrapper(WrappingFactory(Factory()), Protocol())
    wrapper.makeConnection(transport)
    written: list[bytes] = []
    wrapper.write = written.append  # type: ignore[method-assign]
    write_now(wrapper, b"secret")
    assert written == [b"secret"]
    peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        peer.recv(100)
