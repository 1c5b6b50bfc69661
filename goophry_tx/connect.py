"""
Where the Redis links connect to, built from the configuration: a unix
socket, a TCP address, either over verified TLS, or whichever server the
Sentinels name as the master at the moment of each connection.

Built here, not in the service, so that every program that talks to Redis
(the daemon, goophry-ctl) connects the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import txredisapi
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import (
    IDelayedCall,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from goophry_tx.config import Config
from goophry_tx.redis import ConnectionError, ResponseError, Run
from goophry_tx.tls import client_tls_options, lost_reason

#: Seconds to connect to a server, or to wait for a sentinel's answer.
CONNECT_TIMEOUT = 5.0


def redis_endpoint(reactor: Any, config: Config) -> IStreamClientEndpoint:
    """
    The endpoint that reaches the Redis master of C{config}.

    @param reactor: an L{IReactorTCP<twisted.internet.interfaces.IReactorTCP>}
        and L{IReactorTime<twisted.internet.interfaces.IReactorTime>} (and
        L{IReactorUNIX<twisted.internet.interfaces.IReactorUNIX>} for a socket).
    """
    if config.redis_sentinels:
        return SentinelEndpoint(
            reactor,
            [
                (f"{host}:{port}", tcp_endpoint(reactor, config, host, port))
                for host, port in config.redis_sentinels
            ],
            config.redis_sentinel_master or "",
            lambda host, port: tcp_endpoint(reactor, config, host, port),
            username=config.redis_sentinel_username,
            password=config.redis_sentinel_password,
        )
    if config.redis_network == "unix":
        return endpoints.UNIXClientEndpoint(reactor, config.redis_address, timeout=CONNECT_TIMEOUT)
    host, port = config.redis_host_port
    return tcp_endpoint(reactor, config, host, port)


def tcp_endpoint(reactor: Any, config: Config, host: str, port: int) -> IStreamClientEndpoint:
    """
    A TCP endpoint to C{host:port}, over TLS when RedisTLS is set: the
    server's certificate must chain to RedisTLSCAFile (or the system's
    trust store) and name RedisTLSServerName, or else C{host}.
    """
    endpoint = endpoints.HostnameEndpoint(reactor, host, port, timeout=CONNECT_TIMEOUT)
    if not config.redis_tls:
        return endpoint
    options = client_tls_options(
        config.redis_tls_server_name or host,
        config.redis_tls_ca_file,
        config.redis_tls_cert_file,
        config.redis_tls_key_file,
    )
    return endpoints.wrapClientTLS(options, endpoint)


def connection_check(endpoint: IStreamClientEndpoint) -> Callable[[Run], Deferred[None]] | None:
    """
    What a Redis link to C{endpoint} checks on each new connection before
    using it: with Sentinel, that the server is the master.
    """
    return endpoint.check_master if isinstance(endpoint, SentinelEndpoint) else None


def describe(config: Config) -> str:
    """Where Redis is, in words for the log: its address, or the sentinels' master."""
    if config.redis_sentinels:
        sentinels = ", ".join(f"{host}:{port}" for host, port in config.redis_sentinels)
        return f"master {config.redis_sentinel_master} (Sentinel {sentinels})"
    return config.redis_address


class NoMaster(ConnectError):
    """The sentinels named no master, or the one they named cannot be reached."""

    def __str__(self) -> str:
        return str(self.args[0])


class _Query(txredisapi.RedisProtocol):  # type: ignore[misc]
    """A short connection to a sentinel, that remembers why it ended."""

    why: Failure | None = None

    def connectionLost(self, why: Failure) -> None:  # noqa: N802 (Twisted's name)
        self.why = why
        super().connectionLost(why)


class _QueryFactory(Factory):
    """Hands out one L{_Query}, quietly: one is made on every connect."""

    noisy = False

    def __init__(self, query: _Query) -> None:
        self.query = query

    def buildProtocol(self, addr: object) -> _Query:  # noqa: N802
        self.query.factory = self
        return self.query


@implementer(IStreamClientEndpoint)
class SentinelEndpoint:
    """
    Connects to whichever server the sentinels name as the master now.

    Each L{connect} asks them again, one after the other, so that a link
    that lost its master (a failover) finds the new one when it
    reconnects.  The sentinel that answered is asked first next time.

    While connections are open it asks again every C{poll} seconds, and
    drops those to a server that is no longer the one named: in a failover
    the sentinels make while the master runs, the old master goes on
    accepting writes until they demote it, and those writes are lost when
    it becomes a replica.
    """

    log = Logger()

    def __init__(
        self,
        clock: Any,
        sentinels: Sequence[tuple[str, IStreamClientEndpoint]],
        master_name: str,
        master_endpoint: Callable[[str, int], IStreamClientEndpoint],
        username: str | None = None,
        password: str | None = None,
        timeout: float = CONNECT_TIMEOUT,
        poll: float = 1.0,
    ) -> None:
        """
        @param clock: an L{IReactorTime<twisted.internet.interfaces.IReactorTime>}.
        @param sentinels: each sentinel's address (for messages) and endpoint.
        @param master_name: the name the sentinels monitor the master under.
        @param master_endpoint: makes the endpoint of the master's host and port.
        @param username: with C{password}, the sentinels' AUTH.
        @param poll: seconds between questions while connections are open.
        """
        self._clock = clock
        self._sentinels = list(sentinels)
        self._master_name = master_name
        self._master_endpoint = master_endpoint
        self._username = username
        self._password = password
        self._timeout = timeout
        #: The master named last, and the sentinel that named it.
        self._named: tuple[str, int] | None = None
        self._named_by: tuple[str, IStreamClientEndpoint] | None = None
        self._poll = poll
        #: The connections made, each with the master it was made to.
        self._open: list[tuple[tuple[str, int], IProtocol]] = []
        self._polling: IDelayedCall | None = None

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:  # noqa: N803
        return Deferred.fromCoroutine(self._connect(protocolFactory))

    async def _connect(self, factory: IProtocolFactory) -> IProtocol:
        host, port = await self.master()
        try:
            protocol: IProtocol = await self._master_endpoint(host, port).connect(factory)
        except ConnectError as e:
            raise NoMaster(string=f"master {host}:{port}: {e}") from None
        self._open.append(((host, port), protocol))
        if self._polling is None:
            self._polling = self._clock.callLater(self._poll, self._check_named)
        return protocol

    def _check_named(self) -> None:
        """Ask the sentinels again, while connections are open."""
        self._polling = None
        # Our links' protocols (txredisapi's) say when they are gone.
        self._open = [(named, p) for named, p in self._open if getattr(p, "connected", False)]
        if not self._open:
            return
        d = Deferred.fromCoroutine(self.master())
        d.addCallbacks(self._drop_others, self._not_named)

    def _drop_others(self, master: tuple[str, int]) -> None:
        stale = [p for named, p in self._open if named != master]
        if stale:
            self.log.info(
                "master {name} is now {host}:{port}: dropping {count} connections to the old one",
                name=self._master_name,
                host=master[0],
                port=master[1],
                count=len(stale),
            )
        for protocol in stale:
            transport = getattr(protocol, "transport", None)
            if transport is not None:
                transport.abortConnection()
        self._polling = self._clock.callLater(self._poll, self._check_named)

    def _not_named(self, failure: Failure) -> None:
        # No sentinel answered: the connections stay as they are (they fail
        # by themselves if their server is gone), and the next poll asks again.
        self._polling = self._clock.callLater(self._poll, self._check_named)

    async def master(self) -> tuple[str, int]:
        """
        The master's host and port, from the first sentinel that knows it.

        @raise NoMaster: saying what each sentinel answered, when none did.
        """
        problems = []
        # A copy: the links connect at once, and each may reorder the list.
        for sentinel in list(self._sentinels):
            address, endpoint = sentinel
            try:
                reply = await self._ask(endpoint)
            except (ConnectError, ConnectionError, ResponseError, TimeoutError, OSError) as e:
                problems.append(f"{address}: {e}")
                continue
            if not isinstance(reply, list) or len(reply) != 2:
                problems.append(f"{address}: does not know a master named {self._master_name}")
                continue
            self._sentinels.remove(sentinel)
            self._sentinels.insert(0, sentinel)
            self._named_by = sentinel
            master = (reply[0].decode("utf-8"), int(reply[1]))
            if master != self._named:
                self._named = master
                self.log.info(
                    "Sentinel {sentinel} names {host}:{port} as master {name}",
                    sentinel=address,
                    host=master[0],
                    port=master[1],
                    name=self._master_name,
                )
            return master
        raise NoMaster(string="no sentinel named the master: " + "; ".join(problems))

    def check_master(self, run: Run) -> Deferred[None]:
        """
        Fail unless C{ROLE} says master: a failover may have made a replica
        of the server since a sentinel named it, and a replica refuses
        writes, and its blocking commands never see what producers push.
        The sentinel that named it is asked last next time, in case it is
        the one that is wrong.

        @param run: sends a command on the connection being set up.
        """

        def master(role: Sequence[Any]) -> None:
            if role and role[0] == b"master":
                return
            wrong = self._named_by
            if wrong is not None and wrong in self._sentinels:
                self._sentinels.remove(wrong)
                self._sentinels.append(wrong)
            kind = role[0].decode("ascii", "replace") if role else "nothing"
            raise ResponseError(f"ROLE is {kind}, not master: asking the sentinels again")

        d: Deferred[Any] = run("ROLE")
        return d.addCallback(master)

    async def _ask(self, endpoint: IStreamClientEndpoint) -> Any:
        protocol = _Query(charset=None, convertNumbers=False)
        connecting: Deferred[Any] = endpoint.connect(_QueryFactory(protocol))
        await connecting.addTimeout(self._timeout, self._clock)

        async def run(*command: str) -> Any:
            d: Deferred[Any] = protocol.execute_command(*command, apply_timeout=False)
            try:
                return await d.addTimeout(self._timeout, self._clock)
            except ConnectionError:
                why = lost_reason(protocol.why) if protocol.why else "no reason given"
                raise ConnectionError(f"connection lost: {why}") from None

        try:
            if self._password is not None:
                user = () if self._username is None else (self._username,)
                await run("AUTH", *user, self._password)
            return await run("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self._master_name)
        finally:
            if protocol.transport is not None:
                protocol.transport.loseConnection()
