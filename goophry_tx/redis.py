"""
Connections to Redis that come back by themselves.

Each L{RedisLink} is one connection (txredisapi's protocol, without its
pool), reconnected with capped exponential backoff and jitter whenever it is
lost or cannot be made.  It authenticates and selects the database itself on
every connect, so that a wrong password fixed on the server's side is picked
up (txredisapi gives up for good after a failed AUTH, its issue #146), and
it is only ready once Redis has finished loading its data.  A blocking
command gets a link of its own, so it never holds up the others, and so
does a subscription to a pub/sub channel (L{RedisLink.subscribe}), made
again on every connect.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Callable, Sequence
from typing import Any

import txredisapi
from twisted.application.service import Service
from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

from goophry_tx.tls import lost_reason

ConnectionError = txredisapi.ConnectionError
ResponseError = txredisapi.ResponseError

Command = Sequence[str | bytes | int | float]

#: Sends one command on a connection being set up and fires with its reply.
Run = Callable[..., Deferred[Any]]

#: Replies that mean "not now" rather than "never": retry after a while.
#: (NOREPLICAS: a master with min-replicas-to-write that lost its replicas.)
TRANSIENT_ERRORS = ("LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "NOREPLICAS")

#: Replies that mean the server is no longer the master (a failover): the
#: connection is dropped, so that the next one finds the new master.
DEMOTED_ERRORS = (b"READONLY", b"UNBLOCKED")


def is_transient(failure: Failure) -> bool:
    """Whether a failed command may succeed if sent again later."""
    if failure.check(ConnectionError):
        return True
    return bool(failure.check(ResponseError)) and failure.getErrorMessage().startswith(
        TRANSIENT_ERRORS
    )


class IRedisLink(Interface):
    """
    One connection to Redis that comes back by itself, as the rest of the
    package uses it.
    """

    client_id = Attribute("Redis's id for the connection (CLIENT ID), or None while it is down.")
    connected = Attribute("Whether the link is up and ready for commands.")

    def when_connected() -> Deferred[None]:
        """Fires once the link is up and ready for commands; cancellable."""

    def execute(*command: str | bytes | int | float) -> Deferred[Any]:
        """
        Send one command; fires with its reply, or fails with L{ResponseError}
        (Redis refused it) or L{ConnectionError} (the link is or went down).
        """

    def transaction(commands: Sequence[Command]) -> Deferred[list[Any]]:
        """Run commands in one MULTI/EXEC; fires with their replies."""

    def abort() -> None:
        """Drop the connection now (a command that will not end); it comes back."""


class ISubscriber(Interface):
    """What a subscribing link tells of its channel."""

    def subscribed() -> None:
        """
        (Re)subscribed, after a connect or a reconnect: messages from now on
        arrive; those published while the link was down are lost.
        """

    def message(channel: bytes, data: bytes) -> None:
        """A message published on the channel."""


class ISubscribingLink(IRedisLink):
    """A link that can be given over to one pub/sub channel."""

    def subscribe(channel: str, subscriber: ISubscriber) -> None:
        """
        Before the link starts: on every connect, once ready, subscribe to
        C{channel} and tell C{subscriber} of it and of each message.  The
        link then takes no other commands.
        """


class Retry:
    """
    The one policy for a Redis command that failed: a lost connection waits
    for the link to come back, a transient error (L{TRANSIENT_ERRORS}) tries
    again shortly, anything else is the caller's to log.  What is waiting can
    be cancelled at once, on stop.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, delay: float = 0.5) -> None:
        self._clock = clock
        self.delay = delay
        self._calls: set[IDelayedCall] = set()
        self._waits: set[Deferred[None]] = set()

    def later(self, failure: Failure, link: IRedisLink, again: Callable[[], object]) -> bool:
        """
        Call C{again} when sending the command again may help; False, and
        nothing scheduled, when it will not.
        """
        if failure.check(ConnectionError):
            self.when_connected(link, again)
            return True
        if is_transient(failure):
            # Redis is loading its data, busy with a script, ...
            self.after(self.delay, again)
            return True
        return False

    def when_connected(self, link: IRedisLink, again: Callable[[], object]) -> None:
        """Call C{again} once C{link} is up (at once if it is)."""
        wait = link.when_connected()
        self._waits.add(wait)
        wait.addCallback(self._connected, wait, again).addErrback(self._not_called)

    def _connected(self, _: None, wait: Deferred[None], again: Callable[[], object]) -> None:
        self._waits.discard(wait)
        again()

    def _not_called(self, failure: Failure) -> None:
        # Cancelled by L{cancel}: nothing more to do.  Anything else is a bug.
        if not failure.check(CancelledError):
            self.log.failure("retrying a Redis command failed", failure)

    def after(self, delay: float, again: Callable[[], object]) -> None:
        """Call C{again} in C{delay} seconds."""
        call: IDelayedCall

        def fire() -> None:
            self._calls.discard(call)
            again()

        call = self._clock.callLater(delay, fire)
        self._calls.add(call)

    def cancel(self) -> None:
        """Forget every retry still to come."""
        calls, self._calls = self._calls, set()
        for call in calls:
            call.cancel()
        waits, self._waits = self._waits, set()
        for wait in waits:
            wait.cancel()


class RedisHealth:
    """
    Whether Redis can be reached, over every link: logs once when the first
    link loses it and once when the last one has it back.
    """

    log = Logger()

    def __init__(
        self, clock: IReactorTime, address: str, on_back: Callable[[], object] | None = None
    ) -> None:
        """
        @param on_back: called each time Redis is back after it was
            unreachable (counted in the metrics).
        """
        self._clock = clock
        self.address = address
        self._on_back = on_back
        self._down: set[str] = set()
        self._since: float | None = None

    @property
    def connected(self) -> bool:
        return not self._down and self._since is None

    def down(self, link: str, reason: str) -> None:
        self._down.add(link)
        if self._since is None:
            self._since = self._clock.seconds()
            self.log.warn(
                "Redis at {address} unreachable: {reason}; retrying with backoff",
                address=self.address,
                reason=reason,
            )

    def up(self, link: str) -> None:
        self._down.discard(link)
        if not self._down and self._since is not None:
            away = self._clock.seconds() - self._since
            self._since = None
            self.log.info(
                "Redis at {address} is back after {away:.1f}s", address=self.address, away=away
            )
            if self._on_back is not None:
                self._on_back()


def encode_command(command: Sequence[str | bytes | int | float]) -> bytes:
    """A command in RESP, as txredisapi would write it, only quicker."""
    parts = [b"*%d\r\n" % len(command)]
    for arg in command:
        if isinstance(arg, str):
            data = arg.encode("utf-8")
        elif isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, float):
            data = repr(arg).encode("ascii")
        else:
            data = b"%d" % arg
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _keep_alive(transport: Any) -> None:
    """
    TCP keepalive probes after 5 s of silence, every 2 s, 3 of them: a
    Redis that vanished without closing (a failover, a lost network path)
    is noticed in about 11 s, even under a blocking command.
    """
    if transport is None or not hasattr(transport, "setTcpKeepAlive"):
        return
    transport.setTcpKeepAlive(1)
    sock = getattr(transport, "socket", None)
    if sock is None:
        return
    for option, value in (("TCP_KEEPIDLE", 5), ("TCP_KEEPINTVL", 2), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, option):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
            except OSError:
                pass


def _reply(reply: Any) -> Any:
    if isinstance(reply, Exception):
        raise reply
    return reply


def _transaction_replies(replies: Any) -> list[Any]:
    if replies is None:
        raise ResponseError("transaction aborted")
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return list(replies)


def write_now(transport: Any, data: bytes) -> None:
    """
    Write C{data} on C{transport}, at once when it is a socket's with
    nothing buffered.

    Twisted's C{write} only buffers, and sends on the reactor's next turn:
    per round trip to Redis that is two C{epoll_ctl} calls and one more
    event to dispatch, about 6 % of the daemon's CPU per task at Workers 8.
    Anything buffered goes first, so then this buffers too; what the socket
    does not take now (or an error, which Twisted then meets and reports as
    the connection's loss) is left to C{write}.  Only a socket's own
    transport (a L{FileDescriptor}) is written to directly: a TLS wrapper
    hands unknown attributes on to the transport under it, whose socket
    must never see plain text.
    """
    if (
        not isinstance(transport, FileDescriptor)
        or transport.dataBuffer
        or transport._tempDataBuffer
        or not transport.connected
        or transport.disconnecting
    ):
        transport.write(data)
        return
    try:
        sent = transport.socket.send(data)  # type: ignore[attr-defined]
    except OSError:
        sent = 0
    if sent < len(data):
        transport.write(data[sent:])


class _Protocol(txredisapi.RedisProtocol):  # type: ignore[misc]
    """
    txredisapi's protocol, telling its link when the connection goes.

    The only place that reaches into txredisapi's internals (its reply
    queue's C{waiting} list, its C{pipelining} attributes, the
    C{replyReceived} every reply goes through);
    C{tests/unit/test_redis.py} fails when a release changes them.
    """

    link: RedisLink
    pipelining: bool
    pipelined_commands: list[bytes]
    pipelined_replies: list[Any]
    #: Told of each pub/sub message once the connection has sent SUBSCRIBE.
    listener: ISubscriber | None = None
    #: Told it is no longer the master: being dropped.
    demoted = False

    def replyReceived(self, reply: Any) -> None:
        if isinstance(reply, ResponseError) and str(reply).encode().startswith(DEMOTED_ERRORS):
            # Whoever sent the command waits for the link to come back, as
            # after any lost connection, and sends it again to the new master.
            if not self.demoted:
                self.demoted = True
                self.link.log.warn(
                    "Redis answered {error!r}: reconnecting to find the master", error=str(reply)
                )
                self.transport.abortConnection()
            reply = ConnectionError(f"no longer the master: {reply}")
        # A subscribed connection gets messages it did not ask for; the
        # rest (SUBSCRIBE's own answer) are replies, in order.
        if (
            self.listener is not None
            and isinstance(reply, list)
            and len(reply) == 3
            and reply[0] == b"message"
        ):
            self.listener.message(reply[1], reply[2])
            return
        super().replyReceived(reply)

    def connectionLost(self, why: Failure) -> None:
        self.link._lost(self, why)
        super().connectionLost(why)

    def send(self, command: bytes) -> Deferred[Any]:
        """
        Write an encoded command; its reply fires the result.  The hot path
        of every task: one Deferred in the reply queue that txredisapi fills
        in order (an error reply, or the connection's loss, as a failure),
        instead of the three of C{execute_command}.
        """
        d: Deferred[Any] = Deferred()
        self.replyQueue.waiting.append(d)
        write_now(self.transport, command)
        return d.addCallback(_reply)

    def send_transaction(self, commands: Sequence[Command]) -> Deferred[list[Any]]:
        """
        Write MULTI, the commands and EXEC in one write; fires with the
        commands' replies, or fails with the first error among them.
        """
        self.pipelining = True
        try:
            queued_replies = [self.execute_command("MULTI", apply_timeout=False)]
            for command in commands:
                queued_replies.append(self.execute_command(*command, apply_timeout=False))
            result: Deferred[Any] = self.execute_command("EXEC", apply_timeout=False)
        finally:
            self.pipelining = False
            queued, self.pipelined_commands = self.pipelined_commands, []
            self.pipelined_replies = []
        if self.transport is not None:
            write_now(self.transport, b"".join(queued))
        # Their answers are QUEUED, or an error that EXEC reports again.
        for reply in queued_replies:
            reply.addErrback(lambda _: None)
        return result.addCallback(_transaction_replies)


class _Factory(Factory):
    noisy = False

    def __init__(self, link: RedisLink) -> None:
        self.link = link

    def buildProtocol(self, addr: object) -> _Protocol:
        # Replies as bytes, numbers left alone: task payloads are bytes.
        protocol = _Protocol(charset=None, convertNumbers=False)
        protocol.link = self.link
        protocol.factory = self
        return protocol


def backoff(initial: float = 0.1, maximum: float = 5.0) -> Callable[[int], float]:
    """Capped exponential backoff with jitter: seconds before attempt N."""

    def policy(attempt: int) -> float:
        delay = min(maximum, initial * 2.0 ** min(attempt, 32))
        return delay * random.uniform(0.5, 1.0)

    return policy


@implementer(ISubscribingLink)
class RedisLink(Service):
    """
    One connection to Redis, kept up for as long as the service runs.

    Commands sent while it is down fail with L{ConnectionError}; callers
    that must not lose a write wait with L{when_connected} and send again.

    Not Twisted's C{ClientService}, which leaves the socket open and then raises C{NoTransition}
    when a stop or a refused AUTH meets a pending C{prepareConnection}.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        endpoint: IStreamClientEndpoint,
        health: RedisHealth,
        name: str,
        password: str | None = None,
        username: str | None = None,
        db: int = 0,
        client_name: str | None = None,
        retry_policy: Callable[[int], float] | None = None,
        check: Callable[[Run], Deferred[None]] | None = None,
    ) -> None:
        """
        @param check: run on each new connection once authenticated, before
            it is used; a failure drops it (a replica where the master was
            expected, say) and the link tries again.
        """
        self._clock = clock
        self._endpoint = endpoint
        self._health = health
        self.link_name = name
        self._password = password
        self._username = username
        self._db = db
        self._client_name = client_name
        self._retry_policy = retry_policy or backoff()
        self._check = check
        self._failures = 0
        self._attempt: Deferred[Any] | None = None
        self._retry: IDelayedCall | None = None
        self._connection: _Protocol | None = None
        self._protocol: _Protocol | None = None
        self._waiting: list[Deferred[None]] = []
        self._closed: list[Deferred[None]] = []
        #: Redis's id for this connection (CLIENT ID), for CLIENT UNBLOCK.
        self.client_id: bytes | None = None
        #: The channel this link subscribes to, and who is told, if any.
        self._subscription: tuple[str, ISubscriber] | None = None

    def subscribe(self, channel: str, subscriber: ISubscriber) -> None:
        self._subscription = (channel, subscriber)

    def startService(self) -> None:
        super().startService()
        self._connect()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._attempt is not None:
            self._attempt.cancel()
        connection = self._connection
        if connection is None or connection.transport is None:
            return succeed(None)
        closed: Deferred[None] = Deferred()
        self._closed.append(closed)
        transport = connection.transport
        transport.loseConnection()
        # A Redis that stopped answering may never finish the close.
        timer = self._clock.callLater(2.0, transport.abortConnection)

        def done(result: None) -> None:
            if timer.active():
                timer.cancel()

        closed.addBoth(done)
        return closed

    def abort(self) -> None:
        """Drop the connection now (a command that will not end); it comes back."""
        connection = self._connection
        if connection is not None and connection.transport is not None:
            connection.transport.abortConnection()

    # Connecting

    def _connect(self) -> None:
        self._retry = None
        if not self.running:
            return
        attempt: Deferred[Any] = self._endpoint.connect(_Factory(self))
        self._attempt = attempt
        attempt.addCallbacks(self._connected, self._connect_failed)

    def _connect_failed(self, failure: Failure) -> None:
        self._attempt = None
        if failure.check(CancelledError) or not self.running:
            return
        self._health.down(self.link_name, failure.getErrorMessage())
        self._schedule()

    def _schedule(self) -> None:
        if self.running and self._retry is None:
            self._failures += 1
            delay = self._retry_policy(self._failures)
            self._retry = self._clock.callLater(delay, self._connect)

    def _connected(self, protocol: _Protocol) -> Deferred[None]:
        self._attempt = None
        self._connection = protocol
        _keep_alive(protocol.transport)
        d = self._prepare(protocol)
        d.addCallbacks(
            self._ready, self._refused, callbackArgs=(protocol,), errbackArgs=(protocol,)
        )
        return d

    def _prepare(self, protocol: _Protocol) -> Deferred[Any]:
        """AUTH, SELECT, name the connection, learn its id; wait out LOADING."""

        def run(*command: str | bytes | int) -> Deferred[Any]:
            d: Deferred[Any] = protocol.execute_command(*command, apply_timeout=False)
            return d

        d: Deferred[Any] = succeed(None)
        if self._password is not None:
            if self._username is not None:
                d.addCallback(lambda _: run("AUTH", self._username or "", self._password or ""))
            else:
                d.addCallback(lambda _: run("AUTH", self._password or ""))
        if self._db:
            d.addCallback(lambda _: run("SELECT", self._db))
        d.addCallback(lambda _: run("INFO", "persistence"))

        def loaded(info: bytes) -> None:
            if b"loading:1" in info:
                raise ResponseError("LOADING Redis is loading the dataset in memory")

        d.addCallback(loaded)
        if self._check is not None:
            check = self._check
            d.addCallback(lambda _: check(run))
        if self._client_name:
            # Only a help for operators (CLIENT LIST): never a reason to fail.
            d.addCallback(
                lambda _: run("CLIENT", "SETNAME", self._client_name or "").addErrback(
                    lambda f: None
                )
            )
        d.addCallback(lambda _: run("CLIENT", "ID"))
        if self._subscription is not None:
            channel, subscriber = self._subscription

            def subscribe(client_id: bytes) -> Deferred[bytes]:
                protocol.listener = subscriber
                return run("SUBSCRIBE", channel).addCallback(lambda _: client_id)

            d.addCallback(subscribe)
        return d

    def _ready(self, client_id: bytes, protocol: _Protocol) -> None:
        if protocol is not self._connection or not self.running:
            return
        self.client_id = client_id
        self._protocol = protocol
        self._failures = 0
        self._health.up(self.link_name)
        waiting, self._waiting = self._waiting, []
        for w in waiting:
            w.callback(None)
        if self._subscription is not None:
            self._subscription[1].subscribed()

    def _refused(self, failure: Failure, protocol: _Protocol) -> None:
        # A wrong password or database, Redis still loading: drop this
        # connection; losing it schedules the next attempt.
        if self.running:
            self._health.down(self.link_name, failure.getErrorMessage())
        if protocol.transport is not None:
            protocol.transport.loseConnection()

    def _lost(self, protocol: _Protocol, why: Failure) -> None:
        if protocol is not self._connection:
            return
        self._connection = None
        self._protocol = None
        self.client_id = None
        closed, self._closed = self._closed, []
        for d in closed:
            d.callback(None)
        if not self.running:
            return
        # Before it was ready too: a certificate refused in the TLS handshake
        # ends the connection here, and this is where its reason is told.
        self._health.down(self.link_name, f"connection lost: {lost_reason(why)}")
        self._schedule()

    # Using it

    @property
    def connected(self) -> bool:
        return self._protocol is not None

    def when_connected(self) -> Deferred[None]:
        """Fires once the link is up and ready for commands."""
        if self._protocol is not None:
            return succeed(None)
        d: Deferred[None] = Deferred(lambda d: self._waiting.remove(d))
        self._waiting.append(d)
        return d

    def execute(self, *command: str | bytes | int | float) -> Deferred[Any]:
        """Send one command; blocking commands never time out on our side."""
        protocol = self._protocol
        if protocol is None or not protocol.connected:
            return fail(ConnectionError(f"not connected to Redis ({self.link_name})"))
        return protocol.send(encode_command(command))

    def transaction(self, commands: Sequence[Command]) -> Deferred[list[Any]]:
        """
        Run commands in one MULTI/EXEC, written in a single send so that
        nothing else on this link can come in between.
        """
        protocol = self._protocol
        if protocol is None:
            return fail(ConnectionError(f"not connected to Redis ({self.link_name})"))
        return protocol.send_transaction(commands)
