"""
Connections to Redis that come back by themselves.

Each L{RedisLink} is one connection (txredisapi's protocol, without its
pool) kept up by a L{ClientService}: reconnecting with capped exponential
backoff and jitter, authenticating and selecting the database itself on
every connect, so that a wrong password fixed on the server's side is picked
up (txredisapi gives up for good after a failed AUTH, its issue #146).  A
blocking command gets a link of its own, so it never holds up the others.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import txredisapi
from twisted.application.internet import ClientService
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

ConnectionError = txredisapi.ConnectionError
ResponseError = txredisapi.ResponseError

Command = Sequence[str | bytes | int | float]


class RedisHealth:
    """
    Whether Redis can be reached, over every link: logs once when the first
    link loses it and once when the last one has it back.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, address: str) -> None:
        self._clock = clock
        self.address = address
        self._down: set[str] = set()
        self._since: float | None = None
        self.outages = 0

    @property
    def connected(self) -> bool:
        return not self._down and self._since is None

    def down(self, link: str, reason: str) -> None:
        self._down.add(link)
        if self._since is None:
            self._since = self._clock.seconds()
            self.outages += 1
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


class _Protocol(txredisapi.BaseRedisProtocol):  # type: ignore[misc]
    """txredisapi's protocol, telling its link when the connection goes."""

    link: RedisLink

    def connectionLost(self, why: Failure) -> None:  # noqa: N802 (Twisted's name)
        self.link._lost(self, why)
        super().connectionLost(why)


class _Factory(Factory):
    noisy = False

    def __init__(self, link: RedisLink) -> None:
        self.link = link

    def buildProtocol(self, addr: object) -> _Protocol:  # noqa: N802
        # Replies as bytes, numbers left alone: task payloads are bytes.
        protocol = _Protocol(charset=None, convertNumbers=False)
        protocol.link = self.link
        protocol.factory = self
        return protocol


@implementer(IStreamClientEndpoint)
class _ReportingEndpoint:
    """An endpoint that tells the link why a connection attempt failed."""

    def __init__(self, endpoint: IStreamClientEndpoint, report: Callable[[Failure], None]):
        self._endpoint = endpoint
        self._report = report

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        d: Deferred[IProtocol] = self._endpoint.connect(factory)

        def failed(failure: Failure) -> Failure:
            self._report(failure)
            return failure

        return d.addErrback(failed)


def backoff(initial: float = 0.1, maximum: float = 5.0) -> Callable[[int], float]:
    """Capped exponential backoff with jitter, for ClientService's retryPolicy."""

    def policy(attempt: int) -> float:
        delay = min(maximum, initial * 2.0 ** min(attempt, 32))
        return delay * random.uniform(0.5, 1.0)

    return policy


class RedisLink(Service):
    """
    One connection to Redis, kept up for as long as the service runs.

    Commands sent while it is down fail with L{ConnectionError}; callers
    that must not lose a write wait with L{when_connected} and send again.
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
    ) -> None:
        self._clock = clock
        self._endpoint = _ReportingEndpoint(endpoint, self._attempt_failed)
        self._health = health
        self.link_name = name
        self._password = password
        self._username = username
        self._db = db
        self._client_name = client_name
        self._retry_policy = retry_policy or backoff()
        self._protocol: _Protocol | None = None
        self._client: ClientService | None = None
        self._waiting: list[Deferred[None]] = []
        #: Redis's id for this connection (CLIENT ID), for CLIENT UNBLOCK.
        self.client_id: bytes | None = None

    def startService(self) -> None:  # noqa: N802
        super().startService()
        self._client = ClientService(
            self._endpoint,
            _Factory(self),
            retryPolicy=self._retry_policy,
            clock=self._clock,
            prepareConnection=self._prepare,
        )
        self._client.startService()

    def stopService(self) -> Deferred[None]:  # noqa: N802
        super().stopService()
        client, self._client = self._client, None
        if client is None:
            return succeed(None)
        return client.stopService()

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
        if protocol is None:
            return fail(ConnectionError(f"not connected to Redis ({self.link_name})"))
        try:
            d: Deferred[Any] = protocol.execute_command(*command, apply_timeout=False)
        except Exception:
            return fail()
        return d

    def transaction(self, commands: Sequence[Command]) -> Deferred[list[Any]]:
        """
        Run commands in one MULTI/EXEC, written in a single send so that
        nothing else on this link can come in between.
        """
        protocol = self._protocol
        if protocol is None:
            return fail(ConnectionError(f"not connected to Redis ({self.link_name})"))
        protocol.pipelining = True
        try:
            queued_replies = [protocol.execute_command("MULTI", apply_timeout=False)]
            for command in commands:
                queued_replies.append(protocol.execute_command(*command, apply_timeout=False))
            result: Deferred[Any] = protocol.execute_command("EXEC", apply_timeout=False)
        finally:
            protocol.pipelining = False
            queued, protocol.pipelined_commands = protocol.pipelined_commands, []
            protocol.pipelined_replies = []
        if protocol.transport is not None:
            protocol.transport.write(b"".join(queued))
        # Their answers are QUEUED, or an error that EXEC reports again.
        for reply in queued_replies:
            reply.addErrback(lambda _: None)

        def check(replies: Any) -> list[Any]:
            if replies is None:
                raise ResponseError("transaction aborted")
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
            return list(replies)

        return result.addCallback(check)

    def _prepare(self, proxy: IProtocol) -> Deferred[None]:
        protocol: _Protocol = getattr(proxy, "_protocol", proxy)  # type: ignore[arg-type]
        transport = protocol.transport
        if transport is not None and hasattr(transport, "setTcpKeepAlive"):
            transport.setTcpKeepAlive(1)

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
        if self._client_name:
            d.addCallback(lambda _: run("CLIENT", "SETNAME", self._client_name or ""))
        d.addCallback(lambda _: run("CLIENT", "ID"))

        def ready(client_id: bytes) -> None:
            self.client_id = client_id
            self._protocol = protocol
            self._health.up(self.link_name)
            waiting, self._waiting = self._waiting, []
            for w in waiting:
                w.callback(None)

        def refused(failure: Failure) -> Failure:
            # A wrong password or database: drop this connection and let
            # the service try again later, as for any other failure.
            self._health.down(self.link_name, failure.getErrorMessage())
            if protocol.transport is not None:
                protocol.transport.loseConnection()
            return failure

        return d.addCallbacks(ready, refused)

    def _attempt_failed(self, failure: Failure) -> None:
        self._health.down(self.link_name, failure.getErrorMessage())

    def _lost(self, protocol: _Protocol, why: Failure) -> None:
        if self._protocol is protocol:
            self._protocol = None
            self.client_id = None
            if self.running:
                self._health.down(self.link_name, f"connection lost: {why.getErrorMessage()}")
