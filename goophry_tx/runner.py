"""
Running one script and telling how it ended.

L{ScriptRunner} starts a script through any L{IReactorProcess} (the daemon
uses L{goophry_tx.spawn.PosixSpawner}; tests use a fake), captures its
output up to a limit, enforces its timeout by signalling its process group,
and fires an L{Outcome}.  The argv goes to the process as a list: no shell
ever sees an argument.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessTerminated
from twisted.internet.interfaces import IDelayedCall, IReactorProcess, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from goophry_tx.spawn import SpawnError
from goophry_tx.task import Outcome, start_error


class _ScriptProtocol(ProcessProtocol):
    """Collects a script's output, bounded, and its end."""

    def __init__(self, run: RunningScript, limit: int) -> None:
        self._run = run
        self._limit = limit
        self._chunks: list[bytes] = []
        self._size = 0
        self.truncated = 0

    def childDataReceived(self, childFD: int, data: bytes) -> None:  # noqa: N802, N803
        room = self._limit - self._size
        if room > 0:
            kept = data[:room]
            self._chunks.append(kept)
            self._size += len(kept)
            self.truncated += len(data) - len(kept)
        else:
            self.truncated += len(data)

    def processExited(self, reason: Failure) -> None:  # noqa: N802
        # The exit, not the end of the pipes: a grandchild may hold those.
        if isinstance(reason.value, SpawnError):
            self._run._start_failed(reason.value.error)
            return
        value = reason.value
        exit_code = getattr(value, "exitCode", 0)
        sig = getattr(value, "signal", None)
        if not isinstance(value, ProcessTerminated):
            exit_code, sig = 0, None
        self._run._exited(exit_code, sig, b"".join(self._chunks), self.truncated)
        if self.transport is not None:
            self.transport.loseConnection()


class RunningScript:
    """One script run: its outcome to come, and a way to stop it early."""

    def __init__(
        self, clock: IReactorTime, started: float, kill_grace: float, script: str = ""
    ) -> None:
        self._clock = clock
        self._script = script
        self._started = started
        self._kill_grace = kill_grace
        self.done: Deferred[Outcome] = Deferred()
        self.protocol: _ScriptProtocol | None = None
        self.pid: int | None = None
        self._timed_out: float | None = None
        self._timer: IDelayedCall | None = None
        self._killer: IDelayedCall | None = None
        self.stopped = False

    @property
    def finished(self) -> bool:
        return self.done.called

    def _signal(self, name: str) -> None:
        protocol = self.protocol
        if protocol is not None and protocol.transport is not None:
            protocol.transport.signalProcess(name)

    def _terminate(self) -> None:
        """SIGTERM to the group now, SIGKILL after the grace."""
        self._signal("TERM")
        if self._killer is None:
            self._killer = self._clock.callLater(self._kill_grace, self._kill)

    def _kill(self) -> None:
        # Also after the script itself has gone: its children may be left.
        self._killer = None
        self._signal("KILL")

    def _time_out(self, seconds: float) -> None:
        self._timer = None
        self._timed_out = seconds
        self._terminate()

    def stop(self) -> None:
        """Stop the script (daemon shutdown): its entry goes back to the queue."""
        if not self.finished:
            self.stopped = True
            self._terminate()

    def _start_failed(self, error: BaseException) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.done.callback(Outcome(start_error=start_error(self._script, error)))

    def _exited(
        self, exit_code: int | None, sig: int | None, output: bytes, truncated: int
    ) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._killer is not None and self._timed_out is None and not self.stopped:
            self._killer.cancel()
            self._killer = None
        outcome = Outcome(
            exit_code=exit_code,
            signal=sig,
            output=output,
            truncated=truncated,
            timed_out=self._timed_out,
            duration=self._clock.seconds() - self._started,
        )
        self.done.callback(outcome)


class ScriptRunner:
    """Starts scripts and reports their outcomes."""

    def __init__(
        self,
        spawner: IReactorProcess,
        clock: IReactorTime,
        output_limit: int = 65536,
        kill_grace: float = 5.0,
    ) -> None:
        self._spawner = spawner
        self._clock = clock
        self._output_limit = output_limit
        self._kill_grace = kill_grace

    def run(self, script: str, args: tuple[str, ...], timeout: float = 0.0) -> RunningScript:
        """
        Start C{script} with C{args}.  Its C{done} fires with an L{Outcome},
        never with a failure: a script that cannot start is an outcome too.
        """
        run = RunningScript(self._clock, self._clock.seconds(), self._kill_grace, script)
        protocol = _ScriptProtocol(run, self._output_limit)
        run.protocol = protocol
        try:
            transport = self._spawner.spawnProcess(protocol, script, [script, *args])
        except (OSError, ValueError, UnicodeError) as e:
            run.done = succeed(Outcome(start_error=start_error(script, e)))
            return run
        run.pid = transport.pid
        if timeout > 0 and not run.finished:
            run._timer = self._clock.callLater(timeout, run._time_out, timeout)
        return run
