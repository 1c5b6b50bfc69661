"""
Running one script and telling how it ended.

L{ScriptRunner} starts a script through any L{IReactorProcess} (the daemon
uses L{goophry_tx.process.spawn.PosixSpawner}; tests use a fake), captures
its output up to a limit, enforces its timeout by signalling its process
group, and fires an L{Outcome}.  The argv goes to the process as a list: no
shell ever sees an argument.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessTerminated
from twisted.internet.interfaces import IDelayedCall, IReactorProcess, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from goophry_tx.process.spawn import IExitStatusReceiver, SpawnError
from goophry_tx.task import Outcome, start_error


def _wait_error(script: str, error: OSError) -> str:
    """
    The ErrorMessage for a run whose exit status is lost: C{waitpid} found
    the child reaped already (C{SIGCHLD} ignored, another C{waitpid}).

    @param script: the script that ran.
    @param error: the C{ChildProcessError} C{waitpid} raised.
    """
    reason = os.strerror(error.errno).lower() if error.errno else str(error)
    return f"wait: {reason} (the exit status of {script} is lost)"


@implementer(IExitStatusReceiver)
class _ScriptProtocol(ProcessProtocol):
    """
    Collects a script's output, bounded, and its end: from L{PosixSpawner}
    as a wait status (L{childExited}), from any other process reactor as
    C{processExited}.
    """

    def __init__(self, run: RunningScript, limit: int) -> None:
        self._run = run
        self._limit = limit
        self._chunks: list[bytes] = []
        self._size = 0
        self.truncated = 0

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        room = self._limit - self._size
        if room > 0:
            kept = data[:room]
            self._chunks.append(kept)
            self._size += len(kept)
            self.truncated += len(data) - len(kept)
        else:
            self.truncated += len(data)

    def childExited(self, status: int | ChildProcessError) -> None:
        if isinstance(status, ChildProcessError):
            self._ended(None, None, _wait_error(self._run._script, status))
        elif os.WIFSIGNALED(status):
            self._ended(None, os.WTERMSIG(status))
        else:
            self._ended(os.WEXITSTATUS(status), None)

    def _ended(self, exit_code: int | None, sig: int | None, lost: str | None = None) -> None:
        self._run._exited(exit_code, sig, b"".join(self._chunks), self.truncated, lost)

    def processExited(self, reason: Failure) -> None:
        # The exit, not the end of the pipes: a grandchild may hold those.
        value = reason.value
        lost: str | None = None
        if isinstance(value, ProcessTerminated):
            exit_code, sig = value.exitCode, value.signal
        elif isinstance(value, SpawnError):
            self._run._start_failed(value.error)
            return
        elif isinstance(value, ChildProcessError):
            exit_code, sig = None, None
            lost = _wait_error(self._run._script, value)
        else:
            exit_code, sig = 0, None
        self._ended(exit_code, sig, lost)
        if self.transport is not None:
            self.transport.loseConnection()


class RunningScript:
    """
    One script run: its outcome to come, and a way to stop it early.

    @ivar pid: the child's pid when the spawn returned it at once, else
        C{None}.
    @ivar stopped: L{stop} was called before the run finished.
    @ivar outcome: the run's L{Outcome} once it has finished, else C{None}.
    """

    def __init__(
        self,
        clock: IReactorTime,
        started: float,
        kill_grace: float,
        script: str = "",
        on_done: Callable[[Outcome], object] | None = None,
    ) -> None:
        """
        @param on_done: called with the L{Outcome} when the run ends, before
            L{done} fires.
        """
        self._clock = clock
        self._script = script
        self._started = started
        self._kill_grace = kill_grace
        self._on_done = on_done
        self._done: Deferred[Outcome] | None = None
        self.outcome: Outcome | None = None
        #: In L{ScriptRunner.run}: an outcome now is told once it has returned.
        self._starting = True
        self.protocol: _ScriptProtocol | None = None
        self.pid: int | None = None
        self._timed_out: float | None = None
        self._timer: IDelayedCall | None = None
        self._killer: IDelayedCall | None = None
        self.stopped = False

    @property
    def done(self) -> Deferred[Outcome]:
        """
        Fires with the run's L{Outcome}, never with a failure.  Made when
        first asked for: a caller that gave C{on_done} makes none.
        """
        if self._done is None:
            self._done = Deferred() if self.outcome is None else succeed(self.outcome)
        return self._done

    @property
    def finished(self) -> bool:
        """Whether the run has ended (L{done} has fired, or would have)."""
        return self.outcome is not None

    def _finish(self, outcome: Outcome) -> None:
        self.outcome = outcome
        if not self._starting:
            self._deliver()

    def _deliver(self) -> None:
        """Tell C{on_done} and L{done} of the outcome."""
        assert self.outcome is not None
        if self._on_done is not None:
            self._on_done(self.outcome)
        if self._done is not None and not self._done.called:
            self._done.callback(self.outcome)

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
        # A stop may have come before the failure did: no group to kill.
        if self._killer is not None:
            self._killer.cancel()
            self._killer = None
        self._finish(Outcome(start_error=start_error(self._script, error)))

    def _exited(
        self,
        exit_code: int | None,
        sig: int | None,
        output: bytes,
        truncated: int,
        lost: str | None = None,
    ) -> None:
        """
        The script has exited.

        @param lost: the ErrorMessage when its exit status is lost; it
            takes L{Outcome.start_error}'s place, the message of a run that
            has no status.
        """
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
            start_error=lost,
            timed_out=self._timed_out,
            duration=self._clock.seconds() - self._started,
        )
        self._finish(outcome)


class ScriptRunner:
    """Starts scripts and reports their outcomes."""

    def __init__(
        self,
        spawner: IReactorProcess,
        clock: IReactorTime,
        output_limit: int = 65536,
        kill_grace: float = 5.0,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        """
        @param spawner: starts the processes.
        @param environ: what a script's own variables are added to; the
            daemon's by default.  A script without any gets the spawner's.
        @param clock: times the runs, their timeouts and the kill grace.
        @param output_limit: the bytes of output kept per run; the rest is
            counted.
        @param kill_grace: seconds between SIGTERM and SIGKILL.
        """
        self._spawner = spawner
        self._clock = clock
        # Read at each run: a reload changes them for the next ones.
        self.output_limit = output_limit
        self.kill_grace = kill_grace
        self._environ = dict(os.environ if environ is None else environ)

    def run(
        self,
        script: str,
        args: tuple[str, ...],
        timeout: float = 0.0,
        env: Mapping[str, str] | None = None,
        on_done: Callable[[Outcome], object] | None = None,
    ) -> RunningScript:
        """
        Start C{script} with C{args}.  Its C{done} fires with an L{Outcome},
        never with a failure: a script that cannot start is an outcome too.

        @param timeout: seconds after which the script's group gets SIGTERM,
            then SIGKILL after the grace; 0 for none.
        @param env: variables set for this run only, over the environment.
        @param on_done: called with the L{Outcome} when the run ends (at
            once, for a script that cannot start): a plain call, where
            C{done} would be a L{Deferred} per run.
        """
        run = RunningScript(self._clock, self._clock.seconds(), self.kill_grace, script, on_done)
        protocol = _ScriptProtocol(run, self.output_limit)
        run.protocol = protocol
        try:
            transport = self._spawner.spawnProcess(
                protocol, script, [script, *args], env={**self._environ, **env} if env else None
            )
        except (OSError, ValueError, UnicodeError) as e:
            run._finish(Outcome(start_error=start_error(script, e)))
        else:
            run.pid = transport.pid
        run._starting = False
        if run.finished:
            # It could not start: C{on_done} is told on the next turn, once
            # the caller holds the run, never from inside this call.
            if on_done is not None:
                self._clock.callLater(0, run._deliver)
        elif timeout > 0:
            run._timer = self._clock.callLater(timeout, run._time_out, timeout)
        return run
