"""goophry_tx.process.runner: ScriptRunner against a memory process reactor and a Clock."""

from __future__ import annotations

import signal

import pytest
from twisted.internet.interfaces import IProcessTransport, IReactorProcess
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from goophry_tx.process.runner import ScriptRunner
from goophry_tx.task import Outcome
from tests.unit.fakes import (
    FakeProcessTransport,
    MemoryProcessReactor,
    assert_no_result,
    enoent,
    success_result_of,
)

SCRIPT = "/opt/scripts/task.sh"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def processes() -> MemoryProcessReactor:
    return MemoryProcessReactor()


@pytest.fixture
def runner(processes: MemoryProcessReactor, clock: Clock) -> ScriptRunner:
    return ScriptRunner(processes, clock, output_limit=10, kill_grace=5.0)


def test_the_fakes_provide_their_interfaces(processes: MemoryProcessReactor) -> None:
    assert verifyObject(IReactorProcess, processes)
    assert verifyObject(IProcessTransport, FakeProcessTransport(pid=1))


def test_argv_is_the_script_then_the_args_verbatim(
    runner: ScriptRunner, processes: MemoryProcessReactor
) -> None:
    args = ("; rm -rf /", "$(id)", "a b", "*", '"', "")
    run = runner.run(SCRIPT, args)
    [spawned] = processes.spawned
    assert spawned.executable == SCRIPT
    assert spawned.args == [SCRIPT, *args]
    # The daemon's environment is inherited: no env of our own.
    assert spawned.env is None
    assert run.pid == spawned.transport.pid
    assert_no_result(run.done)


def test_silent_exit_0_succeeds(
    runner: ScriptRunner, processes: MemoryProcessReactor, clock: Clock
) -> None:
    run = runner.run(SCRIPT, ())
    clock.advance(2.5)
    processes.last.end(0)
    outcome = success_result_of(run.done)
    assert outcome.succeeded
    assert (outcome.exit_code, outcome.signal, outcome.duration) == (0, None, 2.5)
    assert processes.last.transport.signals == []


@pytest.mark.parametrize("fd", [1, 2])
def test_any_output_is_a_failure(
    runner: ScriptRunner, processes: MemoryProcessReactor, fd: int
) -> None:
    run = runner.run(SCRIPT, ())
    processes.last.output(b"note", fd)
    processes.last.end(0)
    outcome = success_result_of(run.done)
    assert not outcome.succeeded
    assert outcome.error_message() == "note"


def test_exit_status_and_output(runner: ScriptRunner, processes: MemoryProcessReactor) -> None:
    run = runner.run(SCRIPT, ())
    processes.last.output(b"out ")
    processes.last.output(b"err", 2)
    processes.last.end(3)
    outcome = success_result_of(run.done)
    assert (outcome.exit_code, outcome.output) == (3, b"out err")
    assert outcome.error_message() == "exit status 3\nout err"


def test_killed_by_a_signal(runner: ScriptRunner, processes: MemoryProcessReactor) -> None:
    run = runner.run(SCRIPT, ())
    processes.last.end(None, signal=signal.SIGKILL)
    assert success_result_of(run.done).error_message() == "signal: killed"


def test_output_is_bounded_and_the_rest_counted(
    runner: ScriptRunner, processes: MemoryProcessReactor
) -> None:
    run = runner.run(SCRIPT, ())
    processes.last.output(b"12345678")
    processes.last.output(b"abcdef")  # 2 kept, 4 cut
    processes.last.output(b"x" * 1000)  # all cut
    processes.last.end(0)
    outcome = success_result_of(run.done)
    assert outcome.output == b"12345678ab"
    assert outcome.truncated == 1004
    assert not outcome.succeeded
    assert outcome.error_message() == "12345678ab\n... [truncated 1004 bytes]"


def test_output_exactly_at_the_limit_is_not_truncated(
    runner: ScriptRunner, processes: MemoryProcessReactor
) -> None:
    run = runner.run(SCRIPT, ())
    processes.last.output(b"0123456789")
    processes.last.end(1)
    outcome = success_result_of(run.done)
    assert (outcome.output, outcome.truncated) == (b"0123456789", 0)


def test_the_outcome_fires_at_exit_even_if_a_grandchild_holds_the_pipe(
    runner: ScriptRunner, processes: MemoryProcessReactor
) -> None:
    run = runner.run(SCRIPT, ())
    processes.last.output(b"bye")
    processes.last.exit(0)  # processEnded never comes
    outcome = success_result_of(run.done)
    assert outcome.output == b"bye"
    # The runner lets go of the pipe the grandchild holds.
    assert processes.last.transport.lose_connection_calls == 1


def test_timeout_sends_term_then_kill_after_the_grace(
    runner: ScriptRunner, processes: MemoryProcessReactor, clock: Clock
) -> None:
    run = runner.run(SCRIPT, ("a",), timeout=30.0)
    transport = processes.last.transport
    clock.advance(29.9)
    assert transport.signals == []
    clock.advance(0.1)
    assert transport.signals == ["TERM"]
    clock.advance(4.9)
    assert transport.signals == ["TERM"]
    assert_no_result(run.done)
    clock.advance(0.1)
    assert transport.signals == ["TERM", "KILL"]
    processes.last.end(None, signal=signal.SIGKILL)
    outcome = success_result_of(run.done)
    assert outcome.timed_out == 30.0
    assert not outcome.succeeded
    assert outcome.error_message() == "timed out after 30s (signal: killed)"
    assert outcome.duration == 35.0
    assert not clock.getDelayedCalls()


def test_after_a_timeout_the_group_is_killed_even_if_the_script_left(
    runner: ScriptRunner, processes: MemoryProcessReactor, clock: Clock
) -> None:
    # The script dies of the TERM, its children may not: KILL still goes out.
    run = runner.run(SCRIPT, (), timeout=1.0)
    clock.advance(1.0)
    processes.last.end(None, signal=signal.SIGTERM)
    outcome = success_result_of(run.done)
    assert outcome.error_message() == "timed out after 1s (signal: terminated)"
    clock.advance(5.0)
    assert processes.last.transport.signals == ["TERM", "KILL"]


def test_a_script_that_ends_in_time_is_not_signalled(
    runner: ScriptRunner, processes: MemoryProcessReactor, clock: Clock
) -> None:
    run = runner.run(SCRIPT, (), timeout=30.0)
    clock.advance(10)
    processes.last.end(0)
    assert success_result_of(run.done).succeeded
    assert not clock.getDelayedCalls()
    clock.advance(100)
    assert processes.last.transport.signals == []


def test_no_timeout_means_no_timer(runner: ScriptRunner, clock: Clock) -> None:
    runner.run(SCRIPT, ())
    assert not clock.getDelayedCalls()


@pytest.mark.parametrize(
    "error, message",
    [
        (enoent(SCRIPT), f"fork/exec {SCRIPT}: no such file or directory"),
        (PermissionError(13, "Permission denied"), f"fork/exec {SCRIPT}: permission denied"),
        (ValueError("embedded null byte"), f"fork/exec {SCRIPT}: argument contains a NUL byte"),
    ],
)
def test_a_script_that_cannot_start_is_an_outcome(
    runner: ScriptRunner,
    processes: MemoryProcessReactor,
    clock: Clock,
    error: BaseException,
    message: str,
) -> None:
    processes.spawn_error = error
    run = runner.run(SCRIPT, ("a\0b",), timeout=5.0)
    outcome = success_result_of(run.done)
    assert outcome.start_error == message
    assert outcome.error_message() == message
    assert not outcome.succeeded
    assert run.pid is None
    assert not clock.getDelayedCalls()
    run.stop()  # nothing to stop
    assert not run.stopped


def test_stop_marks_the_run_and_sends_term_then_kill(
    runner: ScriptRunner, processes: MemoryProcessReactor, clock: Clock
) -> None:
    run = runner.run(SCRIPT, ())
    run.stop()
    assert run.stopped
    assert processes.last.transport.signals == ["TERM"]
    clock.advance(5.0)
    assert processes.last.transport.signals == ["TERM", "KILL"]
    processes.last.end(None, signal=signal.SIGKILL)
    outcome = success_result_of(run.done)
    assert outcome.timed_out is None
    assert run.finished


def test_stop_after_the_end_does_nothing(
    runner: ScriptRunner, processes: MemoryProcessReactor, clock: Clock
) -> None:
    run = runner.run(SCRIPT, ())
    processes.last.end(0)
    run.stop()
    clock.advance(10)
    assert not run.stopped
    assert processes.last.transport.signals == []


def test_a_stopped_script_that_exits_in_the_grace_still_gets_its_group_killed(
    runner: ScriptRunner, processes: MemoryProcessReactor, clock: Clock
) -> None:
    run = runner.run(SCRIPT, ())
    run.stop()
    processes.last.end(None, signal=signal.SIGTERM)
    assert success_result_of(run.done).signal == signal.SIGTERM
    clock.advance(5.0)
    assert processes.last.transport.signals == ["TERM", "KILL"]


# A spawner that spawns from threads returns before the child has started,
# and tells the protocol later whether it could.


@pytest.fixture
def later() -> MemoryProcessReactor:
    return MemoryProcessReactor(start_later=True)


def test_a_start_failure_that_comes_later_is_an_outcome(
    later: MemoryProcessReactor, clock: Clock
) -> None:
    runner = ScriptRunner(later, clock, kill_grace=5.0)
    run = runner.run(SCRIPT, ("a",), timeout=5.0)
    assert run.pid is None
    assert_no_result(run.done)
    later.last.fail_to_start(enoent(SCRIPT))
    outcome = success_result_of(run.done)
    assert outcome.start_error == f"fork/exec {SCRIPT}: no such file or directory"
    assert not outcome.succeeded
    # The timeout's timer goes with the run.
    assert not clock.getDelayedCalls()
    run.stop()  # nothing to stop
    assert not run.stopped
    assert later.last.transport.signals == []


def test_a_stop_before_a_late_start_failure_leaves_no_kill_timer(
    later: MemoryProcessReactor, clock: Clock
) -> None:
    runner = ScriptRunner(later, clock, kill_grace=5.0)
    run = runner.run(SCRIPT, ())
    run.stop()
    assert later.last.transport.signals == ["TERM"]
    later.last.fail_to_start(PermissionError(13, "Permission denied"))
    outcome = success_result_of(run.done)
    assert outcome.start_error == f"fork/exec {SCRIPT}: permission denied"
    # Nothing started, so there is no group to SIGKILL after the grace.
    assert not clock.getDelayedCalls()


def test_a_script_that_starts_later_runs_as_any_other(
    later: MemoryProcessReactor, clock: Clock
) -> None:
    runner = ScriptRunner(later, clock, kill_grace=5.0)
    run = runner.run(SCRIPT, (), timeout=30.0)
    later.last.start(4242)
    clock.advance(30.0)
    assert later.last.transport.signals == ["TERM"]
    later.last.end(None, signal=signal.SIGTERM)
    outcome = success_result_of(run.done)
    assert outcome.error_message() == "timed out after 30s (signal: terminated)"


def test_a_script_reaped_elsewhere_is_a_failure(
    runner: ScriptRunner, processes: MemoryProcessReactor, clock: Clock
) -> None:
    run = runner.run(SCRIPT, (), timeout=30.0)
    processes.last.output(b"partial")
    clock.advance(1.0)
    processes.last.reaped_elsewhere()
    outcome = success_result_of(run.done)
    assert not outcome.succeeded
    assert outcome.exit_code is None
    assert outcome.error_message() == (
        f"wait: no child processes (the exit status of {SCRIPT} is lost)"
    )
    assert (outcome.output, outcome.duration) == (b"partial", 1.0)
    assert not clock.getDelayedCalls()


def test_a_run_with_variables_of_its_own_adds_them_to_the_environment(
    processes: MemoryProcessReactor, clock: Clock
) -> None:
    runner = ScriptRunner(processes, clock, environ={"PATH": "/bin", "A": "old"})
    runner.run(SCRIPT, (), env={"A": "new", "B": "b"})
    runner.run(SCRIPT, (), env={})
    first, second = processes.spawned
    assert first.env == {"PATH": "/bin", "A": "new", "B": "b"}
    assert second.env is None


def test_on_done_is_told_the_outcome_once_without_a_deferred(
    runner: ScriptRunner, processes: MemoryProcessReactor
) -> None:
    told: list[Outcome] = []
    run = runner.run(SCRIPT, (), on_done=told.append)
    processes.last.output(b"oops")
    processes.last.end(1)
    [outcome] = told
    assert (outcome.exit_code, outcome.output) == (1, b"oops")
    assert run.outcome is outcome
    # A Deferred asked for afterwards has the same outcome.
    assert success_result_of(run.done) is outcome


def test_on_done_of_a_script_that_cannot_start_comes_after_run_returns(
    runner: ScriptRunner, processes: MemoryProcessReactor, clock: Clock
) -> None:
    processes.spawn_error = enoent(SCRIPT)
    told: list[Outcome] = []
    run = runner.run(SCRIPT, (), timeout=5.0, on_done=told.append)
    assert told == []
    assert run.finished
    clock.advance(0)
    [outcome] = told
    assert outcome.start_error == f"fork/exec {SCRIPT}: no such file or directory"
    assert not clock.getDelayedCalls()
