"""goophry_tx.process.spawn: PosixSpawner with real (short) /bin/sh children on the real reactor.

These are the only unit tests that start processes: the spawner's whole job
is the system calls, so a fake would prove nothing.  Each takes milliseconds;
every wait is bounded so that a regression fails instead of hanging.  Every
spawner test runs three times: spawning in the reactor's thread
(C{threads=0}, C{os.posix_spawn}), and from spawning threads as the daemon
does (C{threads=2}), through the C extension and through ctypes.  The tests
of L{LibcSpawner} alone run through both of those.
"""

from __future__ import annotations

import errno
import os
import select
import shutil
import signal
import subprocess
import sys
import sysconfig
from collections.abc import Generator, Iterator
from pathlib import Path
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
from goophry_tx.process.libc_spawn import LibcSpawner
from goophry_tx.process.spawn import IExitStatusReceiver, PosixSpawner, SpawnError
from tests.helpers import wait_for

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


def skip_unless_usable(backend: libc_spawn.Backend) -> None:
    if not libc_spawn.usable(backend):
        pytest.skip(
            "the C extension is not built (no C compiler or Python headers at install)"
            if backend == libc_spawn.C_EXTENSION
            else "libc's posix_spawn cannot be called through ctypes here"
        )


@pytest.fixture(params=[libc_spawn.C_EXTENSION, libc_spawn.CTYPES], ids=["c", "ctypes"])
def backend(request: pytest.FixtureRequest) -> libc_spawn.Backend:
    """How the spawning threads call posix_spawn."""
    skip_unless_usable(request.param)
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(
    params=[(0, None), (2, libc_spawn.C_EXTENSION), (2, libc_spawn.CTYPES)],
    ids=["inline", "threads-c", "threads-ctypes"],
)
def spawning(request: pytest.FixtureRequest) -> tuple[int, libc_spawn.Backend | None]:
    """
    How the spawner starts children: in the reactor's thread, or from the
    daemon's two threads through the C extension or through ctypes.
    """
    threads, backend = request.param
    if backend is not None:
        skip_unless_usable(backend)
    return threads, backend


@pytest.fixture
def threads(spawning: tuple[int, libc_spawn.Backend | None]) -> int:
    return spawning[0]


@pytest.fixture
def spawner(spawning: tuple[int, libc_spawn.Backend | None]) -> Iterator[PosixSpawner]:
    threads, backend = spawning
    spawner = PosixSpawner(reactor, threads=threads, backend=backend)  # type: ignore[arg-type]
    assert spawner.backend == (backend or "os module")
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


# LibcSpawner alone: one spawn at a time, inline, with its result at once.


@pytest.fixture
def libc(backend: libc_spawn.Backend) -> Iterator[LibcSpawner]:
    stdin = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    spawner = LibcSpawner(
        {"SPAWNER_ENV": "from the spawner"},
        [signal.SIGPIPE],
        stdin,
        lambda f, *args: pytest.fail("an inline spawn is never handed over"),
        threads=0,
        backend=backend,
    )
    assert spawner.backend == backend
    yield spawner
    spawner.close()
    os.close(stdin)


def open_fds() -> list[str]:
    return sorted(os.listdir("/proc/self/fd"))


def run(spawner: LibcSpawner, *argv: str, **env: str) -> tuple[int, int, int]:
    """Spawn C{argv} inline; C{(pid, error, fd)}."""
    results: list[tuple[int, int, int]] = []
    command = spawner.command(argv[0], argv, env or None)
    spawner.spawn(command, lambda *result: results.append(result), inline=True)
    [result] = results
    return result


def read_to_eof(fd: int) -> bytes:
    """What the child writes to its pipe until EOF (the read end does not block)."""
    chunks: list[bytes] = []

    def ended() -> bool:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return False
        chunks.append(chunk)
        return not chunk

    wait_for(ended, timeout=WAIT, message="the child's output to end")
    os.close(fd)
    return b"".join(chunks)


def reap(pid: int) -> int:
    """The exit code of C{pid}, waited for with a bound."""
    statuses: list[int] = []

    def exited() -> bool:
        reaped, status = os.waitpid(pid, os.WNOHANG)
        statuses.append(status)
        return reaped != 0

    wait_for(exited, timeout=WAIT, message=f"child {pid} to exit")
    return os.waitstatus_to_exitcode(statuses[-1])


def test_output_on_stdout_and_stderr_comes_through_one_pipe(libc: LibcSpawner) -> None:
    pid, error, fd = run(libc, SH, "-c", "echo out; echo err >&2; exit 3")
    assert (error, pid > 0) == (0, True)
    # The reactor must never block on it, and no other child may inherit it.
    assert not os.get_blocking(fd)
    assert not os.get_inheritable(fd)
    assert read_to_eof(fd) == b"out\nerr\n"
    assert reap(pid) == 3


def test_a_missing_executable_is_enoent_and_leaves_no_descriptor(
    libc: LibcSpawner, tmp_path: Path
) -> None:
    before = open_fds()
    assert run(libc, str(tmp_path / "absent")) == (0, errno.ENOENT, -1)
    assert open_fds() == before


@pytest.mark.parametrize(
    "executable, argv, env",
    [
        ("/bin/s\0h", [SH], None),
        (SH, [SH, "-c", "a\0b"], None),
        (SH, [SH], {"A": "x\0y"}),
        (SH, [SH], {"A\0B": "x"}),
        (b"/bin/s\0h", [b"sh"], None),
        (SH, [b"a\0b"], None),
    ],
    ids=["executable", "argument", "value", "name", "bytes executable", "bytes argument"],
)
def test_a_nul_byte_anywhere_raises_before_anything_starts(
    libc: LibcSpawner, executable: str | bytes, argv: list[Any], env: dict[str, str] | None
) -> None:
    before = open_fds()
    with pytest.raises(ValueError, match="embedded null byte"):
        libc.command(executable, argv, env)
    assert open_fds() == before


def test_the_spawners_environment_and_a_childs_own(libc: LibcSpawner) -> None:
    script = 'echo "[$SPAWNER_ENV][$OWN]"'
    pid, _, fd = run(libc, SH, "-c", script)
    assert read_to_eof(fd) == b"[from the spawner][]\n"
    assert reap(pid) == 0
    pid, _, fd = run(libc, SH, "-c", script, OWN="a b")
    # A child's own environment replaces the spawner's, as os.posix_spawn's does.
    assert read_to_eof(fd) == b"[][a b]\n"
    assert reap(pid) == 0


def test_str_and_bytes_arguments_alike(libc: LibcSpawner) -> None:
    command = libc.command(SH.encode(), [b"sh", "-c", b'echo "$0 $1"', "zero", "\u00e9"])
    results: list[tuple[int, int, int]] = []
    libc.spawn(command, lambda *result: results.append(result), inline=True)
    [(pid, _, fd)] = results
    assert read_to_eof(fd) == "zero \u00e9\n".encode()
    assert reap(pid) == 0


def test_the_c_extension_checks_what_it_is_given() -> None:
    skip_unless_usable(libc_spawn.C_EXTENSION)
    from goophry_tx.process import _cspawn

    with pytest.raises(OSError):
        _cspawn.Spawner([0], 0, [])
    spawner = _cspawn.Spawner([signal.SIGPIPE], 0, [])
    with pytest.raises(TypeError):
        spawner.spawn((SH, [SH]))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        spawner.command(SH, [SH, 1])  # type: ignore[list-item]


def test_the_c_extension_is_built_where_a_compiler_is() -> None:
    # On CI (.ci/run installs gcc and python3-dev) the C path must be the one tested.
    compiler = (sysconfig.get_config_var("CC") or "").split()
    headers = Path(sysconfig.get_paths()["include"], "Python.h")
    if not compiler or shutil.which(compiler[0]) is None or not headers.exists():
        pytest.skip("no C compiler or no Python.h here: the ctypes path serves")
    assert libc_spawn.C_BUILT, (
        f"{compiler[0]} and {headers} exist but goophry_tx/process/_cspawn.c is not built: "
        "`pip install -e .` (make venv) builds it"
    )


@pytest.mark.parametrize("forced, expected", [("ctypes", "ctypes"), ("", None)])
def test_goophry_spawn_ctypes_forces_the_ctypes_path(forced: str, expected: str | None) -> None:
    found = (
        subprocess.run(
            [
                sys.executable,
                "-c",
                "from goophry_tx.process import libc_spawn; print(libc_spawn.BACKEND)",
            ],
            env={**os.environ, "GOOPHRY_SPAWN": forced},
            capture_output=True,
            check=True,
            timeout=60,
        )
        .stdout.decode()
        .strip()
    )
    assert found == (expected or libc_spawn._default_backend() or "None")


@pytest.fixture
def pooled() -> Iterator[tuple[Any, Any]]:
    """A C extension's spawner (/dev/null as stdin) and its pool of two threads."""
    skip_unless_usable(libc_spawn.C_EXTENSION)
    from goophry_tx.process import _cspawn

    stdin = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    spawner = _cspawn.Spawner([signal.SIGPIPE], stdin, [b"FROM=the spawner"])
    pool = _cspawn.Pool(spawner, 2)
    yield spawner, pool
    pool.close()
    os.close(stdin)


def collect(pool: Any, count: int) -> list[tuple[Any, int, int, int]]:
    """Wait (bounded) until C{count} results have come, by the pool's descriptor."""
    results: list[tuple[Any, int, int, int]] = []

    def arrived() -> bool:
        readable, _, _ = select.select([pool.fileno()], [], [], 0.5)
        if readable:
            results.extend(pool.collect())
        return len(results) >= count

    wait_for(arrived, timeout=WAIT, message=f"{count} results from the pool")
    return results


def test_the_pool_hands_back_each_token_with_its_childs_pipe(pooled: tuple[Any, Any]) -> None:
    spawner, pool = pooled
    before = open_fds()
    commands = {n: spawner.command(SH, [SH, "-c", f'echo "{n} $FROM"']) for n in range(20)}
    for n, command in commands.items():
        pool.submit(command, n)
    results = collect(pool, 20)
    assert sorted(token for token, _, _, _ in results) == list(range(20))
    for token, pid, error, fd in results:
        assert (error, pid > 0) == (0, True)
        assert not os.get_blocking(fd)
        assert read_to_eof(fd) == f"{token} the spawner\n".encode()
        assert reap(pid) == 0
    # Nothing left to collect, and no descriptor of ours left open.
    assert pool.collect() == []
    assert open_fds() == before


def test_the_pool_reports_a_failed_spawn_with_its_errno(pooled: tuple[Any, Any]) -> None:
    spawner, pool = pooled
    pool.submit(spawner.command("/nonexistent/script", ["script"]), "missing")
    assert collect(pool, 1) == [("missing", 0, errno.ENOENT, -1)]


def test_a_closed_pool_closes_what_was_not_collected_and_takes_nothing(
    pooled: tuple[Any, Any],
) -> None:
    spawner, pool = pooled
    before = open_fds()
    pool.submit(spawner.command(SH, [SH, "-c", "exit 0"]), "late")
    # The eventfd says the result is there; it is not collected.
    assert select.select([pool.fileno()], [], [], WAIT)[0]
    pool.close()
    # Its pipe and the eventfd are closed: fewer descriptors than before.
    assert len(open_fds()) == len(before) - 1
    with pytest.raises(RuntimeError, match="closed"):
        pool.submit(spawner.command(SH, [SH, "-c", "exit 0"]), "after")
    # (The child itself ran; its pid went with the result, so this test
    # process keeps its zombie until it exits.)


def test_the_daemons_threads_are_the_pools_with_the_c_extension() -> None:
    skip_unless_usable(libc_spawn.C_EXTENSION)
    spawner = PosixSpawner(reactor, threads=2, backend=libc_spawn.C_EXTENSION)  # type: ignore[arg-type]
    try:
        assert spawner._threaded is not None and spawner._threaded.pooled
    finally:
        spawner.close()
