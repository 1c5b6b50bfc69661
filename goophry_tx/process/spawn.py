"""
Starting scripts cheaply: C{posix_spawn}, one pipe, and a pidfd.

Twisted's C{spawnProcess} lists C{/dev/fd}, calls C{fcntl} per open
descriptor, resets 64 signal handlers and makes three pipes per child, and
puts the child in the daemon's process group.  A task runner starts a
process per task, so this module does the least that is correct instead:

  - the child gets a process group of its own (C{setpgroup=0}), so Ctrl-C
    on a foreground daemon misses it and a timeout can kill its whole tree;
  - stdin is C{/dev/null}; stdout and stderr share one pipe, since both
    count as output alike;
  - a child is reaped when its output pipe reaches EOF, which for most
    scripts comes as they exit; a child still running then, or still
    without EOF after L{EXIT_WATCH_DELAY}, gets a pidfd, so a backgrounded
    grandchild that keeps the pipe open cannot hold the task: output is
    drained when the script exits, then the pipe is closed.

L{PosixSpawner} offers this as L{IReactorProcess}, so the runner can be
tested against any fake process reactor, and delivers a script's output
before its C{processExited}.  A child that cannot be started ends with a
L{SpawnError}; one that something else reaped (C{SIGCHLD} ignored, another
C{waitpid}) ends with the C{ChildProcessError} that says so, never as a
clean exit.
"""

from __future__ import annotations

import collections
import errno
import os
import select
import signal
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, AnyStr, Protocol

from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import (
    IDelayedCall,
    IProcessProtocol,
    IProcessTransport,
    IReactorCore,
    IReactorProcess,
    IReadDescriptor,
)
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from goophry_tx.process import libc_spawn
from goophry_tx.process.libc_spawn import LibcSpawner

_READ_SIZE = 65536

#: Seconds after which a child whose output has not ended is watched by
#: pidfd, in case a grandchild holds its pipe open (checked once per this
#: delay, so it may be up to twice as long).
EXIT_WATCH_DELAY = 0.05

_SIGNALS = {"TERM": signal.SIGTERM, "KILL": signal.SIGKILL, "INT": signal.SIGINT}


class SpawnReactor(Protocol):
    """
    What L{PosixSpawner} uses of the reactor: the parts of
    L{IReactorFDSet<twisted.internet.interfaces.IReactorFDSet>},
    L{IReactorTime<twisted.internet.interfaces.IReactorTime>} and
    L{IReactorFromThreads<twisted.internet.interfaces.IReactorFromThreads>}
    that it calls.  Any Twisted reactor on POSIX provides them.
    """

    def addReader(self, reader: IReadDescriptor) -> None: ...

    def removeReader(self, reader: IReadDescriptor) -> None: ...

    def seconds(self) -> float: ...

    def callLater(
        self, delay: float, callable: Callable[..., Any], *args: object, **kwargs: object
    ) -> IDelayedCall: ...

    def callFromThread(
        self, callable: Callable[..., Any], *args: object, **kwargs: object
    ) -> None: ...


class IExitStatusReceiver(Interface):
    """
    A process protocol that takes its child's end as the wait status, not
    as C{processExited}/C{processEnded} with a L{Failure}: L{PosixSpawner}
    then calls L{childExited} in their place, which spares a Failure and an
    exception per child.  A child that could not be started still ends
    with C{processExited} (a L{SpawnError}).
    """

    def childExited(status: int | ChildProcessError) -> None:
        """
        The child has gone, and its output has been delivered: C{status} is
        its wait status (C{os.waitpid}'s), or the C{ChildProcessError} of a
        C{waitpid} that found it reaped already.
        """


class SpawnError(Exception):
    """
    The child could not be started.

    @ivar error: the C{OSError} saying why.
    """

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


def _ignored_signals() -> tuple[int, ...]:
    """Signals this process ignores: a child would inherit them ignored."""
    ignored = {signal.SIGPIPE, signal.SIGXFSZ}
    for number in signal.valid_signals():
        try:
            if signal.getsignal(number) == signal.SIG_IGN:
                ignored.add(number)
        except (ValueError, OSError):
            # A signal this platform will not let Python look at cannot
            # have been set to SIG_IGN through Python either.
            pass
    return tuple(sorted(ignored))


def discard_child_signals(reactor: IReactorCore) -> None:
    """
    Once C{reactor} runs, have the kernel discard C{SIGCHLD} (its default
    action) instead of Twisted's handler catching it.

    Twisted catches C{SIGCHLD} to reap the children of its own
    C{spawnProcess}; the daemon starts none (L{PosixSpawner} reaps its
    children by their pipe and pidfd), yet each child's exit would cost a
    signal delivery, a Python handler call, a write and a read of the
    reactor's wake-up pipe and a turn of the loop: about a tenth of the
    daemon's CPU per task.  C{SIG_DFL}, not C{SIG_IGN}: an ignored
    C{SIGCHLD} makes the kernel reap children itself, and their exit
    statuses would be lost.

    Called by L{goophry_tx.startup.when_running} (the three ways to start),
    after Twisted has installed its handlers, never by the service itself:
    a test process may use C{spawnProcess}.
    """
    reactor.callWhenRunning(signal.signal, signal.SIGCHLD, signal.SIG_DFL)


@implementer(IReadDescriptor)
class _Reader:
    """
    A file descriptor the reactor watches for one of our children.

    A pipe whose writers have all gone is reported as a hang-up, not as
    readable, and the reactor then calls C{connectionLost} instead of
    C{doRead}: both mean "read now" here.
    """

    #: Called when C{fd} is readable; an attribute, not a method, so that a
    #: read costs no extra call.
    doRead: Callable[[], None]

    def __init__(self, fd: int, on_read: Callable[[], None]) -> None:
        self.fd = fd
        self.doRead = on_read

    def fileno(self) -> int:
        return self.fd

    def connectionLost(self, reason: Failure) -> None:
        self.doRead()

    def logPrefix(self) -> str:
        return "goophry-child"


@implementer(IReadDescriptor)
class _ChildPoller:
    """
    One epoll set for every child's descriptors, watched by the reactor as
    a single reader: a child's events skip the reactor's per-event work.
    It offers the reactor's C{addReader}/C{removeReader} for L{_Reader}s.
    """

    def __init__(self, reactor: SpawnReactor) -> None:
        self._reactor = reactor
        self._epoll = select.epoll()
        self._readers: dict[int, _Reader] = {}
        reactor.addReader(self)

    def fileno(self) -> int:
        return self._epoll.fileno()

    def addReader(self, reader: _Reader) -> None:
        self._epoll.register(reader.fd, select.EPOLLIN)
        self._readers[reader.fd] = reader

    def removeReader(self, reader: _Reader) -> None:
        if self._readers.get(reader.fd) is reader:
            del self._readers[reader.fd]
            self._epoll.unregister(reader.fd)

    def doRead(self) -> None:
        for fd, _ in self._epoll.poll(0):
            reader = self._readers.get(fd)
            if reader is not None:
                reader.doRead()

    def connectionLost(self, reason: Failure) -> None:
        """The epoll descriptor is ours: only L{close} ends it."""

    def logPrefix(self) -> str:
        return "goophry-children"

    def close(self) -> None:
        self._reactor.removeReader(self)
        self._epoll.close()


@implementer(IProcessTransport)
class SpawnedProcess:
    """
    The transport of one child: its pid, its output pipe and its pidfd.

    Signals go to the child's whole process group, since it leads one.
    """

    def __init__(
        self,
        readers: SpawnReactor | _ChildPoller,
        clock: SpawnReactor,
        protocol: IProcessProtocol,
        out_fd: int | None,
        on_end: Callable[[], object] | None = None,
        watch: Callable[[SpawnedProcess], object] | None = None,
    ) -> None:
        """
        @param readers: what watches the child's descriptors: the reactor,
            or the spawner's L{_ChildPoller}.
        @param clock: the reactor, to poll for the exit where there is no
            pidfd.
        @param out_fd: the output pipe, or C{None} until L{_spawned} gives it.
        @param on_end: called once when the child has ended or failed to
            start.
        @param watch: called with this transport once the child runs, to
            arrange L{watch_exit} later; without it, that is done at once.
        """
        self._reactor = readers
        self._clock = clock
        self._on_end = on_end
        self._watch = watch
        self.proto = protocol
        #: The protocol's C{childExited}, if it has one (L{IExitStatusReceiver}).
        self._status_receiver: Callable[[int | ChildProcessError], object] | None = (
            protocol.childExited if IExitStatusReceiver.providedBy(protocol) else None
        )
        self.pid: int | None = None
        self._pgid: int | None = None
        self._signals: list[int] = []
        self._out: _Reader | None = None
        self._exit: _Reader | None = None
        if out_fd is not None:
            self._read_from(out_fd)

    def _read_from(self, out_fd: int) -> None:
        self._out = _Reader(out_fd, self._read_output)
        self._reactor.addReader(self._out)

    def _spawned(self, pid: int, error: int, out_fd: int = -1) -> None:
        """
        The spawn is done: C{pid} runs, or C{error} (an errno) says why not;
        C{out_fd}, when given, is its output pipe.
        """
        if out_fd >= 0:
            self._read_from(out_fd)
        if error:
            self._close_output()
            if self._on_end is not None:
                self._on_end()
            reason = Failure(SpawnError(OSError(error, os.strerror(error))))
            self.proto.processExited(reason)
            self.proto.processEnded(reason)
            return
        self.pid = self._pgid = pid
        signals, self._signals = self._signals, []
        for number in signals:
            self.signalProcess(number)
        if self._out is None:
            # The output ended (or was closed) before we knew the pid.
            self.watch_exit()
        elif self._watch is not None:
            self._watch(self)
        else:
            self.watch_exit()

    def watch_exit(self) -> None:
        """See the child's exit through a pidfd, whatever its pipe does."""
        if self.pid is None or self._exit is not None:
            return
        try:
            pidfd = os.pidfd_open(self.pid)
        except OSError:
            # No pidfd (a kernel before 5.3, no descriptors left): look for
            # the exit now and then instead, never blocking the reactor.
            self._poll_exit()
            return
        self._exit = _Reader(pidfd, self._exited)
        self._reactor.addReader(self._exit)

    # Output

    def _read_output(self) -> None:
        reader = self._out
        if reader is None:
            return
        try:
            data = os.read(reader.fd, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self.proto.childDataReceived(1, data)
            return
        self._close_output()
        if self.pid is not None and self._exit is None:
            # Most scripts close their output by exiting: reap it now if so.
            try:
                reaped, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError as e:
                self._ended(e)
                return
            if reaped:
                self._ended(status)
            else:
                self.watch_exit()

    def _drain_output(self) -> None:
        """Read what the script left in the pipe, without waiting for EOF."""
        while self._out is not None:
            try:
                data = os.read(self._out.fd, _READ_SIZE)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._close_output()
                return
            self.proto.childDataReceived(1, data)

    def _close_output(self) -> None:
        reader, self._out = self._out, None
        if reader is not None:
            self._reactor.removeReader(reader)
            os.close(reader.fd)
            self.proto.childConnectionLost(1)

    # Exit

    def _exited(self) -> None:
        pid = self.pid
        if pid is None:
            return
        try:
            reaped, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError as e:
            self._ended(e)
            return
        if reaped == 0:
            return
        self._ended(status)

    def _poll_exit(self) -> None:
        self._exited()
        if self.pid is not None:
            self._clock.callLater(0.05, self._poll_exit)

    def _ended(self, status: int | ChildProcessError) -> None:
        """
        The child has gone: C{status} is its wait status, or the
        C{ChildProcessError} of a C{waitpid} that found it reaped already,
        which leaves its status unknown.
        """
        self.pid = None
        if self._on_end is not None:
            self._on_end()
        reader, self._exit = self._exit, None
        if reader is not None:
            self._reactor.removeReader(reader)
            os.close(reader.fd)
        self._drain_output()
        receiver = self._status_receiver
        if receiver is not None:
            # The wait status as it is: no exception and no Failure per run.
            receiver(status)
            self._close_output()
            return
        if isinstance(status, ChildProcessError):
            reason: Exception = status
        elif os.WIFSIGNALED(status):
            reason = ProcessTerminated(None, os.WTERMSIG(status), status)
        else:
            code = os.WEXITSTATUS(status)
            reason = ProcessDone(status) if code == 0 else ProcessTerminated(code, None, status)
        self.proto.processExited(Failure(reason))
        # What a backgrounded grandchild writes later is not the script's.
        self._close_output()
        self.proto.processEnded(Failure(reason))

    # IProcessTransport

    def signalProcess(self, signalID: str | int) -> None:
        """Signal the child's process group (the group outlives the child)."""
        number = _SIGNALS[signalID] if isinstance(signalID, str) else signalID
        if self._pgid is None:
            self._signals.append(number)
            return
        try:
            os.killpg(self._pgid, number)
        except (ProcessLookupError, PermissionError):
            # The group has gone, or is left with members we may not signal
            # (a setuid program): there is nothing of ours to stop.
            pass

    def closeStdin(self) -> None:
        """Nothing to do: stdin is C{/dev/null} already."""

    def closeStdout(self) -> None:
        self._close_output()

    def closeStderr(self) -> None:
        self._close_output()

    def closeChildFD(self, descriptor: int) -> None:
        if descriptor in (1, 2):
            self._close_output()

    def writeToChild(self, childFD: int, data: bytes) -> None:
        raise OSError(errno.EBADF, "the child's stdin is /dev/null")

    def loseConnection(self) -> None:
        self._close_output()

    def write(self, data: bytes) -> None:
        raise OSError(errno.EBADF, "the child's stdin is /dev/null")

    def writeSequence(self, data: Iterable[bytes]) -> None:
        raise OSError(errno.EBADF, "the child's stdin is /dev/null")

    def getPeer(self) -> Any:
        return ("process", self.pid)

    def getHost(self) -> Any:
        return ("process", os.getpid())


@implementer(IReactorProcess)
class PosixSpawner:
    """
    L{IReactorProcess} on C{posix_spawn}, for scripts only.

    C{path}, C{uid}, C{gid}, C{usePTY} and C{childFDs} are not supported:
    scripts run in the daemon's working directory, as the daemon's user,
    with stdin from C{/dev/null} and stdout and stderr on one pipe.
    """

    def __init__(
        self,
        reactor: SpawnReactor,
        environ: Mapping[str, str] | None = None,
        threads: int = 0,
        backend: libc_spawn.Backend | None = None,
    ) -> None:
        """
        @param reactor: watches the children's descriptors and keeps time.
        @param environ: the children's environment; the daemon's by default.
        @param threads: spawn from this many threads, outside the GIL (a
            failure to start then comes as C{processExited} with a
            L{SpawnError}); 0 spawns in the caller's thread, raising.
        @param backend: how the threads call C{posix_spawn}; by default
            L{libc_spawn.BACKEND}.
        """
        self._reactor = reactor
        self._environ = dict(os.environ if environ is None else environ)
        self._sigdef = _ignored_signals()
        self._devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self._threaded: LibcSpawner | None = None
        #: Children started from the threads and not yet ended.
        self.live = 0
        self._poller = _ChildPoller(reactor)
        self._unwatched: collections.deque[tuple[float, SpawnedProcess]] = collections.deque()
        self._sweep: IDelayedCall | None = None
        if threads > 0 and (backend or libc_spawn.available()):
            self._threaded = LibcSpawner(
                self._environ,
                self._sigdef,
                self._devnull,
                reactor.callFromThread,
                threads,
                backend,
                watch=self._watch_results,
            )
        #: How children are started: through the C extension or ctypes from
        #: the threads, or through the C{os} module in the caller's thread.
        self.backend = "os module" if self._threaded is None else self._threaded.backend

    def _watch_results(self, fd: int, on_readable: Callable[[], None]) -> None:
        """Call C{on_readable} when C{fd} (the spawning threads' results) is readable."""
        self._poller.addReader(_Reader(fd, on_readable))

    def spawnProcess(
        self,
        processProtocol: IProcessProtocol,
        executable: bytes | str,
        args: Sequence[bytes | str],
        env: Mapping[AnyStr, AnyStr] | None = None,
        path: bytes | str | None = None,
        uid: int | None = None,
        gid: int | None = None,
        usePTY: bool = False,
        childFDs: Mapping[int, int | str] | None = None,
    ) -> SpawnedProcess:
        if path is not None or uid is not None or gid is not None or usePTY or childFDs:
            raise ValueError("PosixSpawner takes no path, uid, gid, usePTY or childFDs")
        if self._threaded is not None:
            return self._spawn_threaded(processProtocol, executable, args, env)
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        try:
            os.set_blocking(read_fd, False)
            pid = os.posix_spawn(
                executable,
                list(args),
                self._environ if env is None else env,
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, self._devnull, 0),
                    (os.POSIX_SPAWN_DUP2, write_fd, 1),
                    (os.POSIX_SPAWN_DUP2, write_fd, 2),
                ],
                setpgroup=0,
                setsigdef=self._sigdef,
                setsigmask=(),
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        transport = SpawnedProcess(self._reactor, self._reactor, processProtocol, read_fd)
        processProtocol.makeConnection(transport)
        transport._spawned(pid, 0)
        return transport

    def _spawn_threaded(
        self,
        protocol: IProcessProtocol,
        executable: bytes | str,
        args: Sequence[bytes | str],
        env: Mapping[AnyStr, AnyStr] | None,
    ) -> SpawnedProcess:
        assert self._threaded is not None
        # Encoded and checked here, so that a NUL byte raises from this call.
        command = self._threaded.command(executable, args, env)
        transport = SpawnedProcess(
            self._poller, self._reactor, protocol, None, self._child_ended, self._watch_later
        )
        protocol.makeConnection(transport)
        # Nothing else running: start it at once rather than hand it over.
        inline = self.live == 0
        self.live += 1
        self._threaded.spawn(command, transport._spawned, inline)
        return transport

    def _child_ended(self) -> None:
        self.live -= 1

    def _watch_later(self, transport: SpawnedProcess) -> None:
        """Give C{transport} a pidfd if its output has not ended by then."""
        self._unwatched.append((self._reactor.seconds() + EXIT_WATCH_DELAY, transport))
        if self._sweep is None:
            self._sweep = self._reactor.callLater(EXIT_WATCH_DELAY, self._watch_due)

    def _watch_due(self) -> None:
        self._sweep = None
        now = self._reactor.seconds()
        pending = self._unwatched
        while pending and pending[0][0] <= now:
            pending.popleft()[1].watch_exit()
        if pending:
            # Not sooner than a whole delay from now: one timer per delay
            # for all the children started meanwhile, not one per child (a
            # child still running gets its pidfd at most twice the delay
            # after it started).
            delay = max(EXIT_WATCH_DELAY, pending[0][0] - now)
            self._sweep = self._reactor.callLater(delay, self._watch_due)

    def close(self) -> None:
        """Release the /dev/null descriptor and the spawning threads."""
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
        self._sweep = None
        self._poller.close()
        if self._threaded is not None:
            self._threaded.close()
            self._threaded = None
        os.close(self._devnull)
