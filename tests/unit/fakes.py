"""In-memory stand-ins for a process reactor and a Redis link.

Modelled on treq's C{local_httpbin} test helpers: every spawn is recorded
as a L{SpawnedProcess} that the test drives by hand (feed output, end it),
and every Redis command waits until the test answers it.  Nothing here
touches real time, real processes or a real Redis.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError, ProcessDone, ProcessTerminated
from twisted.internet.interfaces import (
    IProcessProtocol,
    IProcessTransport,
    IProtocol,
    IProtocolFactory,
    IReactorProcess,
    IStreamClientEndpoint,
)
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from goophry_tx.process.spawn import SpawnError
from goophry_tx.redis import Command, ConnectionError, ISubscriber, ISubscribingLink

T = TypeVar("T")

# --------------------------------------------------------------------------
# Inspecting Deferreds synchronously, as SynchronousTestCase does


def _result_now(d: Deferred[Any]) -> list[Any]:
    """What C{d} holds now (empty if it has not fired), leaving it in place."""
    results: list[Any] = []

    def peek(result: Any) -> Any:
        results.append(result)
        return result

    d.addBoth(peek)
    return results


def success_result_of(d: Deferred[T]) -> T:
    """The result C{d} already has; fails the test if it has none or failed."""
    results = _result_now(d)
    assert results, f"{d!r} has no result yet"
    result = results[0]
    if isinstance(result, Failure):
        raise AssertionError(f"{d!r} failed: {result.getTraceback()}")
    return result  # type: ignore[no-any-return]


def failure_result_of(d: Deferred[Any], *types: type[BaseException]) -> Failure:
    """The failure C{d} already has (of one of C{types} when given); handled now."""
    results = _result_now(d)
    assert results, f"{d!r} has no result yet"
    result = results[0]
    assert isinstance(result, Failure), f"{d!r} succeeded with {result!r}"
    d.addErrback(lambda _: None)
    if types:
        assert result.check(*types), f"{d!r} failed with {result!r}, not one of {types}"
    return result


def assert_no_result(d: Deferred[Any]) -> None:
    """C{d} has not fired yet."""
    results = _result_now(d)
    assert not results, f"{d!r} already has a result: {results[0]!r}"


# --------------------------------------------------------------------------
# Processes


@implementer(IProcessTransport)
@attrs.define(eq=False)
class FakeProcessTransport:
    """A child's transport that records what was done to it."""

    pid: int | None
    signals: list[str | int] = attrs.Factory(list)
    lose_connection_calls: int = 0
    stdin_closed: bool = False
    closed_fds: list[int] = attrs.Factory(list)
    written: list[tuple[int, bytes]] = attrs.Factory(list)

    def signalProcess(self, signalID: str | int) -> None:
        self.signals.append(signalID)

    def closeStdin(self) -> None:
        self.stdin_closed = True

    def closeStdout(self) -> None:
        self.closed_fds.append(1)

    def closeStderr(self) -> None:
        self.closed_fds.append(2)

    def closeChildFD(self, descriptor: int) -> None:
        self.closed_fds.append(descriptor)

    def writeToChild(self, childFD: int, data: bytes) -> None:
        self.written.append((childFD, data))

    def write(self, data: bytes) -> None:
        self.written.append((0, data))

    def writeSequence(self, data: Sequence[bytes]) -> None:
        for chunk in data:
            self.write(chunk)

    def loseConnection(self) -> None:
        self.lose_connection_calls += 1

    def getPeer(self) -> Any:
        return ("process", self.pid)

    def getHost(self) -> Any:
        return ("process", 1)


@attrs.define(eq=False)
class SpawnedProcess:
    """One C{spawnProcess} call, and the means to play the child's part."""

    executable: bytes | str
    args: list[bytes | str]
    env: Mapping[Any, Any] | None
    protocol: IProcessProtocol
    transport: FakeProcessTransport

    def output(self, data: bytes, fd: int = 1) -> None:
        """The child writes C{data} to C{fd} (1: stdout, 2: stderr)."""
        self.protocol.childDataReceived(fd, data)

    def exit(self, exit_code: int | None = 0, signal: int | None = None) -> None:
        """The child exits (processExited) but something still holds its pipes."""
        self.protocol.processExited(Failure(_reason(exit_code, signal)))

    def end(self, exit_code: int | None = 0, signal: int | None = None) -> None:
        """The child exits and its pipes close: processExited, then processEnded."""
        self._finish(_reason(exit_code, signal))

    def start(self, pid: int) -> None:
        """The child of a spawn that returned before it started runs now, as C{pid}."""
        assert self.transport.pid is None, "the child has started already"
        self.transport.pid = pid

    def fail_to_start(self, error: OSError) -> None:
        """
        The child of a spawn that returned before it started cannot start:
        the protocol learns of it as L{PosixSpawner} tells it then.
        """
        assert self.transport.pid is None, "the child has started already"
        self._finish(SpawnError(error))

    def reaped_elsewhere(self) -> None:
        """
        The child was reaped by someone else (C{SIGCHLD} ignored, another
        C{waitpid}): its status is lost, as L{PosixSpawner} tells it.
        """
        self._finish(ChildProcessError(errno.ECHILD, os.strerror(errno.ECHILD)))

    def _finish(self, reason: Exception) -> None:
        self.protocol.processExited(Failure(reason))
        self.protocol.processEnded(Failure(reason))


def _reason(exit_code: int | None, signal: int | None) -> Exception:
    if signal is None and exit_code == 0:
        return ProcessDone(0)
    return ProcessTerminated(exitCode=exit_code, signal=signal)


@implementer(IReactorProcess)
class MemoryProcessReactor:
    """
    Records every spawn; starts nothing.

    @ivar spawn_error: makes the next spawn raise it, as C{posix_spawn} does
        for a missing script.
    @ivar start_later: spawns return before their child has started, with
        no pid yet, as L{PosixSpawner} does when it spawns from threads; the
        test then calls L{SpawnedProcess.start} or
        L{SpawnedProcess.fail_to_start}.
    """

    def __init__(self, start_later: bool = False) -> None:
        self.spawned: list[SpawnedProcess] = []
        self.spawn_error: BaseException | None = None
        self.start_later = start_later
        self._next_pid = 1000

    def spawnProcess(
        self,
        processProtocol: IProcessProtocol,
        executable: bytes | str,
        args: Sequence[bytes | str] = (),
        env: Mapping[Any, Any] | None = None,
        path: bytes | str | None = None,
        uid: int | None = None,
        gid: int | None = None,
        usePTY: bool = False,
        childFDs: Mapping[int, object] | None = None,
    ) -> FakeProcessTransport:
        error, self.spawn_error = self.spawn_error, None
        if error is not None:
            raise error
        self._next_pid += 1
        transport = FakeProcessTransport(pid=None if self.start_later else self._next_pid)
        self.spawned.append(SpawnedProcess(executable, list(args), env, processProtocol, transport))
        processProtocol.makeConnection(transport)
        return transport

    @property
    def last(self) -> SpawnedProcess:
        """The most recent spawn."""
        assert self.spawned, "nothing was spawned"
        return self.spawned[-1]


def enoent(path: str) -> OSError:
    """The error posix_spawn raises for a script that does not exist."""
    return FileNotFoundError(errno.ENOENT, "No such file or directory", path)


# --------------------------------------------------------------------------
# Redis


@attrs.define(eq=False)
class SentCommand:
    """
    A command waiting for the test's answer.  A MULTI/EXEC transaction is
    recorded as C{("MULTI", command, command, ...)}.
    """

    command: tuple[Any, ...]
    deferred: Deferred[Any]

    @property
    def name(self) -> str:
        return str(self.command[0])

    def answer(self, reply: Any = None) -> None:
        self.deferred.callback(reply)

    def refuse(self, error: BaseException) -> None:
        self.deferred.errback(Failure(error))


@implementer(ISubscribingLink)
class FakeRedisLink:
    """
    An L{IRedisLink} that the test answers.  Every command is kept (in
    C{sent}, and in C{pending} until answered); C{lose_connection} fails the
    pending ones with L{ConnectionError}, as a dropped connection does.  A
    link given a subscription tells its subscriber at every (re)connect.
    """

    def __init__(self, client_id: bytes = b"7", connected: bool = True) -> None:
        self.client_id: bytes | None = client_id if connected else None
        self._next_client_id = client_id
        self.connected = connected
        self.aborted = 0
        self.sent: list[tuple[Any, ...]] = []
        self.pending: list[SentCommand] = []
        self._waiting: list[Deferred[None]] = []
        self.subscription: tuple[str, ISubscriber] | None = None

    def subscribe(self, channel: str, subscriber: ISubscriber) -> None:
        self.subscription = (channel, subscriber)

    def _send(self, command: tuple[Any, ...]) -> Deferred[Any]:
        self.sent.append(command)
        if not self.connected:
            return fail(ConnectionError("not connected to Redis (fake)"))
        sent = SentCommand(command, Deferred())
        self.pending.append(sent)
        sent.deferred.addBoth(self._settled, sent)
        return sent.deferred

    def _settled(self, result: Any, sent: SentCommand) -> Any:
        if sent in self.pending:
            self.pending.remove(sent)
        return result

    def execute(self, *command: Any) -> Deferred[Any]:
        return self._send(tuple(command))

    def transaction(self, commands: Sequence[Command]) -> Deferred[list[Any]]:
        return self._send(("MULTI", *(tuple(c) for c in commands)))

    def when_connected(self) -> Deferred[None]:
        if self.connected:
            return succeed(None)
        d: Deferred[None] = Deferred(lambda d: self._waiting.remove(d))
        self._waiting.append(d)
        return d

    def abort(self) -> None:
        """Counted; the connection drops, as a real abort does."""
        self.aborted += 1
        self.lose_connection()

    # Driving it from the test

    def names(self) -> list[str]:
        """The names of the pending commands, oldest first."""
        return [p.name for p in self.pending]

    def take(self, name: str) -> SentCommand:
        """The oldest pending command called C{name}; fails if there is none."""
        for sent in self.pending:
            if sent.name == name:
                return sent
        raise AssertionError(f"no pending {name}; pending: {[p.command for p in self.pending]}")

    def lose_connection(self) -> None:
        self.connected = False
        self.client_id = None
        pending, self.pending = self.pending, []
        for sent in pending:
            sent.deferred.errback(Failure(ConnectionError("Lost connection (fake)")))

    def reconnect(self) -> None:
        self.connected = True
        self.client_id = self._next_client_id
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)
        if self.subscription is not None:
            self.subscription[1].subscribed()

    def publish(self, data: bytes) -> None:
        """A message arrives on the subscribed channel."""
        assert self.subscription is not None, "not subscribed"
        channel, subscriber = self.subscription
        subscriber.message(channel.encode(), data)


# --------------------------------------------------------------------------
# Connections


@implementer(IStreamClientEndpoint)
@attrs.define(eq=False)
class FakeEndpoint:
    """Connects at once over a L{StringTransport}, or refuses."""

    refuse: bool = False
    connections: list[tuple[IProtocol, StringTransport]] = attrs.Factory(list)

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:  # noqa: N803
        if self.refuse:
            return fail(ConnectionRefusedError("refused"))
        protocol = protocolFactory.buildProtocol(None)
        assert protocol is not None
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.connections.append((protocol, transport))
        return succeed(protocol)

    def answer(self, reply: bytes) -> None:
        """The last connection's server sends C{reply} (RESP)."""
        protocol, _ = self.connections[-1]
        protocol.dataReceived(reply)

    def sent(self) -> bytes:
        return self.connections[-1][1].value()
