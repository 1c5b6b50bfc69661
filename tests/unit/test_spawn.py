"""goophry_tx.process.spawn: PosixSpawner with real (short) /bin/sh children on the real reactor.

These are the only unit tests that start processes: the spawner's whole job
is the system calls, so a fake would prove nothing.  Each takes milliseconds;
every wait is bounded so that a regression fails instead of hanging.  Every
test runs twice: spawning in the reactor's thread (C{threads=0}), and from
spawning threads as the daemon does (C{threads=2}).
"""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Generator, Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IProcessTransport, IReactorProcess
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from goophry_tx.process import libc_spawn
from goophry_tx.process.spawn import IExitStatusReceiver, PosixSpawner, SpawnError

pytestmark = pytest.mark.real_process

SH = "/bin/sh"
WAIT = 5.0


class Recorder(ProcessProtocol):
    """Keeps what a child writes and when it exits and ends."""

    def __init__(self) -> None:
        self.output = b""
        self.fds: set[int] = set()
        # Fired with the reason's exception (a Failure would be an errback).
        self.exited: Deferred[BaseException] = Deferred()
        self.ended: Deferred[BaseException] = Deferred()
        self.output_at_exit: bytes | None = None
        self._waiting: list[tuple[bytes, Deferred[None]]] = []

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self.fds.add(childFD)
        self.output += data
        for item in list(self._waiting):
            if item[0] in self.output:
                self._waiting.remove(item)
                item[1].callback(None)

    def processExited(self, reason: Failure) -> None:
        self.output_at_exit = self.output
        self.exited.callback(reason.value)

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(reason.value)

    def wait_for(self, text: bytes) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._waiting.append((text, d))
        self.childDataReceived(1, b"")
        return d.addTimeout(WAIT, reactor)


@pytest.fixture(params=[0, 2], ids=["inline", "threads"])
def threads(request: pytest.FixtureRequest) -> int:
    """How many spawning threads the spawner has: none, or the daemon's two."""
    if request.param and not libc_spawn.available():
        pytest.skip("libc's posix_spawn cannot be called here")
    return int(request.param)


@pytest.fixture
def spawner(threads: int) -> Iterator[PosixSpawner]:
    spawner = PosixSpawner(reactor, threads=threads)  # type: ignore[arg-type]
    yield spawner
    spawner.close()


@pytest.fixture
def groups() -> Iterator[list[int]]:
    """Process groups to kill at the end, whatever the test left behind."""
    pgids: list[int] = []
    yield pgids
    for pgid in pgids:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def sh(spawner: PosixSpawner, groups: list[int], command: str) -> tuple[Recorder, Any]:
    protocol = Recorder()
    transport = spawner.spawnProcess(protocol, SH, [SH, "-c", command])
    # With nothing else running, even the threaded spawner starts it at once.
    assert transport.pid is not None
    groups.append(transport.pid)
    return protocol, transport


def bounded(d: Deferred[Any]) -> Deferred[Any]:
    return d.addTimeout(WAIT, reactor)


def test_it_is_a_process_reactor(spawner: PosixSpawner) -> None:
    assert verifyObject(IReactorProcess, spawner)


@pytest_twisted.inlineCallbacks
def test_stdout_and_stderr_are_both_captured(
    spawner: PosixSpawner, groups: list[int]
) -> Generator[Deferred[Any], Any, None]:
    protocol, transport = sh(spawner, groups, "echo out; echo err >&2; exit 3")
    assert verifyObject(IProcessTransport, transport)
    reason = yield bounded(protocol.exited)
    assert isinstance(reason, ProcessTerminated)
    assert reason.exitCode == 3
    # Everything written is delivered before the exit.
    assert protocol.output_at_exit == b"out\nerr\n"
    ended = yield bounded(protocol.ended)
    assert isinstance(ended, ProcessTerminated)
    assert ended.exitCode == 3


@pytest_twisted.inlineCallbacks
def test_a_clean_exit_is_process_done(
    spawner: PosixSpawner, groups: list[int]
) -> Generator[Deferred[Any], Any, None]:
    protocol, _ = sh(spawner, groups, "exit 0")
    reason = yield bounded(protocol.ended)
    assert isinstance(reason, ProcessDone)
    assert protocol.output == b""


@pytest_twisted.inlineCallbacks
def test_argv_reaches_the_child_verbatim(
    spawner: PosixSpawner, groups: list[int]
) -> Generator[Deferred[Any], Any, None]:
    protocol = Recorder()
    args = ["$(id)", "a b", ";", "*", '"']
    transport = spawner.spawnProcess(
        protocol, SH, [SH, "-c", 'for a in "$@"; do echo "[$a]"; done', "sh", *args]
    )
    groups.append(transport.pid)
    yield bounded(protocol.ended)
    assert protocol.output == b'[$(id)]\n[a b]\n[;]\n[*]\n["]\n'


@pytest_twisted.inlineCallbacks
def test_stdin_reads_eof(
    spawner: PosixSpawner, groups: list[int]
) -> Generator[Deferred[Any], Any, None]:
    protocol, _ = sh(spawner, groups, 'cat; if read -r line; then echo got; else echo "eof"; fi')
    yield bounded(protocol.ended)
    assert protocol.output == b"eof\n"


@pytest_twisted.inlineCallbacks
def test_the_child_leads_a_process_group_of_its_own(
    spawner: PosixSpawner, groups: list[int]
) -> Generator[Deferred[Any], Any, None]:
    protocol, transport = sh(spawner, groups, "read -r _ _ _ _ pgid _ < /proc/$$/stat; echo $pgid")
    pid = transport.pid
    yield bounded(protocol.ended)
    assert int(protocol.output) == pid
    assert pid != os.getpgrp()


@pytest_twisted.inlineCallbacks
def test_a_backgrounded_child_holding_stdout_does_not_hold_the_exit(
    spawner: PosixSpawner, groups: list[int]
) -> Generator[Deferred[Any], Any, None]:
    protocol, _ = sh(spawner, groups, "sleep 30 & echo $!")
    reason = yield bounded(protocol.exited)
    assert isinstance(reason, ProcessDone)
    # The spawner lets go of the pipe once the script has gone.
    yield bounded(protocol.ended)
    sleeper = int(protocol.output)
    os.kill(sleeper, 0)  # still running, still holding the pipe's other end


@pytest_twisted.inlineCallbacks
def test_signals_go_to_the_whole_group(
    spawner: PosixSpawner, groups: list[int]
) -> Generator[Deferred[Any], Any, None]:
    protocol, transport = sh(
        spawner,
        groups,
        "trap 'echo parent' TERM; "
        "(trap 'echo child; exit 0' TERM; echo ready; sleep 30 & wait) & "
        "wait; wait",
    )
    yield protocol.wait_for(b"ready")
    transport.signalProcess("TERM")
    reason = yield bounded(protocol.exited)
    assert isinstance(reason, ProcessDone)
    assert sorted(protocol.output.split()) == [b"child", b"parent", b"ready"]


@pytest_twisted.inlineCallbacks
def test_kill_ends_the_child(
    spawner: PosixSpawner, groups: list[int]
) -> Generator[Deferred[Any], Any, None]:
    protocol, transport = sh(spawner, groups, "echo ready; sleep 30")
    yield protocol.wait_for(b"ready")
    transport.signalProcess("KILL")
    reason = yield bounded(protocol.ended)
    assert isinstance(reason, ProcessTerminated)
    assert reason.signal == signal.SIGKILL
    # Signalling a group that has gone is not an error.
    transport.signalProcess("TERM")


@pytest_twisted.inlineCallbacks
def test_several_children_at_once(
    spawner: PosixSpawner, threads: int, groups: list[int]
) -> Generator[Deferred[Any], Any, None]:
    # With threads, the first starts at once and the others are handed to
    # the threads while it runs; each must still get its own output and status.
    protocols = []
    handed_over = 0
    for n in range(1, 7):
        protocol = Recorder()
        transport = spawner.spawnProcess(protocol, SH, [SH, "-c", f"echo {n}; exit {n}"])
        if transport.pid is None:
            handed_over += 1
        else:
            groups.append(transport.pid)
        protocols.append(protocol)
    # The reactor has not turned since: no child has ended to free the way.
    assert handed_over == (5 if threads else 0)
    for n, protocol in enumerate(protocols, 1):
        reason = yield bounded(protocol.ended)
        assert isinstance(reason, ProcessTerminated)
        assert reason.exitCode == n
        assert protocol.output == f"{n}\n".encode()
    assert spawner.live == 0


@pytest_twisted.inlineCallbacks
def test_a_child_reaped_elsewhere_is_a_failure_not_exit_0(
    spawner: PosixSpawner, groups: list[int]
) -> Generator[Deferred[Any], Any, None]:
    protocol, transport = sh(spawner, groups, "exit 0")
    # Reap it before the reactor can (as with SIGCHLD ignored): its status
    # is lost to the spawner, which must not report a clean exit.
    os.waitpid(transport.pid, 0)
    reason = yield bounded(protocol.exited)
    assert isinstance(reason, ChildProcessError)
    assert reason.errno == errno.ECHILD
    ended = yield bounded(protocol.ended)
    assert isinstance(ended, ChildProcessError)
    assert spawner.live == 0


@pytest_twisted.inlineCallbacks
def test_a_missing_executable_fails_to_start(
    spawner: PosixSpawner, threads: int, tmp_path: Any
) -> Generator[Deferred[Any], Any, None]:
    missing = str(tmp_path / "absent.sh")
    protocol = Recorder()
    if not threads:
        with pytest.raises(FileNotFoundError):
            spawner.spawnProcess(protocol, missing, [missing])
        return
    # From the threads, spawnProcess returns and the protocol learns of it.
    transport = spawner.spawnProcess(protocol, missing, [missing])
    reason = yield bounded(protocol.exited)
    assert isinstance(reason, SpawnError)
    assert reason.error.errno == errno.ENOENT
    ended = yield bounded(protocol.ended)
    assert isinstance(ended, SpawnError)
    assert transport.pid is None
    assert spawner.live == 0


def test_a_nul_byte_in_an_argument_raises(spawner: PosixSpawner) -> None:
    with pytest.raises(ValueError, match="null"):
        spawner.spawnProcess(Recorder(), SH, [SH, "-c", "a\0b"])


@pytest_twisted.inlineCallbacks
def test_a_child_given_an_environment_sees_that_one(
    spawner: PosixSpawner, groups: list[int]
) -> Generator[Deferred[Any], Any, None]:
    protocol = Recorder()
    transport = spawner.spawnProcess(
        protocol, SH, [SH, "-c", 'echo "[$GREETING][$HOME]"'], env={"GREETING": "a b"}
    )
    groups.append(transport.pid)
    yield bounded(protocol.ended)
    assert protocol.output == b"[a b][]\n"
    # The next child without one has the spawner's again.
    protocol, _ = sh(spawner, groups, 'echo "[$GREETING]"')
    yield bounded(protocol.ended)
    assert protocol.output == b"[]\n"


def test_a_nul_byte_in_the_environment_raises(spawner: PosixSpawner) -> None:
    with pytest.raises(ValueError):
        spawner.spawnProcess(Recorder(), SH, [SH], env={"A": "x\0y"})


@implementer(IExitStatusReceiver)
class StatusRecorder(Recorder):
    """A L{Recorder} that takes its child's end as a wait status."""

    def __init__(self) -> None:
        super().__init__()
        self.status: Deferred[int | ChildProcessError] = Deferred()
        self.ends: list[str] = []

    def childExited(self, status: int | ChildProcessError) -> None:
        self.output_at_exit = self.output
        self.status.callback(status)

    def processExited(self, reason: Failure) -> None:
        self.ends.append("processExited")

    def processEnded(self, reason: Failure) -> None:
        self.ends.append("processEnded")


def status_of(spawner: PosixSpawner, groups: list[int], command: str) -> StatusRecorder:
    protocol = StatusRecorder()
    transport = spawner.spawnProcess(protocol, SH, [SH, "-c", command])
    groups.append(transport.pid)
    return protocol


@pytest_twisted.inlineCallbacks
def test_a_status_receiver_gets_the_wait_status_after_the_output(
    spawner: PosixSpawner, groups: list[int]
) -> Generator[Deferred[Any], Any, None]:
    protocol = status_of(spawner, groups, "echo out; echo err >&2; exit 3")
    status = yield bounded(protocol.status)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 3
    assert protocol.output_at_exit == b"out\nerr\n"
    # In place of processExited and processEnded, not as well.
    assert protocol.ends == []
    assert spawner.live == 0


@pytest_twisted.inlineCallbacks
def test_a_status_receiver_gets_the_signal_that_ended_the_child(
    spawner: PosixSpawner, groups: list[int]
) -> Generator[Deferred[Any], Any, None]:
    protocol = status_of(spawner, groups, "echo up; exec sleep 30")
    yield protocol.wait_for(b"up\n")
    os.killpg(groups[-1], signal.SIGKILL)
    status = yield bounded(protocol.status)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert protocol.ends == []


@pytest_twisted.inlineCallbacks
def test_a_status_receiver_is_told_when_the_status_is_lost(
    spawner: PosixSpawner, groups: list[int]
) -> Generator[Deferred[Any], Any, None]:
    protocol = StatusRecorder()
    transport = spawner.spawnProcess(protocol, SH, [SH, "-c", "exit 0"])
    os.waitpid(transport.pid, 0)
    status = yield bounded(protocol.status)
    assert isinstance(status, ChildProcessError)
    assert protocol.ends == []
