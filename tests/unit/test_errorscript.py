"""ErrorNotifier: ErrorScript told of each failure, one at a time, with fake processes."""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.task import Clock
from twisted.logger import Logger

from goophry_tx.errorscript import ErrorNotifier
from goophry_tx.process.runner import ScriptRunner
from tests.unit.fakes import MemoryProcessReactor, assert_no_result, success_result_of

ERROR_SCRIPT = "/s/err.sh"


@attrs.define
class Rig:
    clock: Clock
    processes: MemoryProcessReactor
    notifier: ErrorNotifier
    events: list[dict[str, Any]]

    def told(self) -> list[str]:
        return [str(p.args[1]) for p in self.processes.spawned]


def make_rig(queue_size: int = 10) -> Rig:
    clock, processes = Clock(), MemoryProcessReactor()
    runner = ScriptRunner(processes, clock, output_limit=100, kill_grace=5.0)
    notifier = ErrorNotifier(runner, ERROR_SCRIPT, queue_size=queue_size, timeout=30.0)
    events: list[dict[str, Any]] = []
    notifier.log = Logger(observer=events.append)
    return Rig(clock, processes, notifier, events)


def test_failures_are_told_one_at_a_time() -> None:
    rig = make_rig()
    rig.notifier.notify("/s/a.sh", ("1",), "exit status 1")
    rig.notifier.notify("/s/b.sh", (), "exit status 2")
    assert rig.told() == ['/s/a.sh "1"\n\nexit status 1']
    idle = rig.notifier.when_idle()
    rig.processes.last.end(0)
    assert rig.told()[1:] == ["/s/b.sh\n\nexit status 2"]
    assert_no_result(idle)
    rig.processes.last.end(0)
    success_result_of(idle)


def test_a_failed_error_script_is_logged_and_the_next_one_told() -> None:
    rig = make_rig()
    rig.notifier.notify("/s/a.sh", (), "first")
    rig.notifier.notify("/s/a.sh", (), "second")
    rig.processes.last.end(3)
    assert [e["error"] for e in rig.events if "error" in e] == ["exit status 3"]
    assert len(rig.told()) == 2


def test_a_raise_while_reporting_does_not_leave_the_queue_busy() -> None:
    rig = make_rig()
    failures: list[dict[str, Any]] = []

    def observer(event: dict[str, Any]) -> None:
        if "log_failure" in event:
            failures.append(event)
            return
        raise RuntimeError("a broken log observer")

    rig.notifier.log = Logger(observer=observer)
    rig.notifier.notify("/s/a.sh", (), "first")
    rig.notifier.notify("/s/a.sh", (), "second")
    idle = rig.notifier.when_idle()
    rig.processes.last.end(1)  # reporting this raises
    assert [f["log_failure"].check(RuntimeError) for f in failures] == [RuntimeError]
    assert len(rig.told()) == 2
    rig.processes.last.end(0)
    success_result_of(idle)


def test_a_full_queue_logs_the_message_in_full() -> None:
    rig = make_rig(queue_size=1)
    rig.notifier.notify("/s/a.sh", (), "running")
    rig.notifier.notify("/s/a.sh", (), "queued")
    rig.notifier.notify("/s/a.sh", (), "no room")
    [event] = rig.events
    assert event["message"] == "/s/a.sh\n\nno room"
    rig.processes.last.end(0)
    assert len(rig.told()) == 2


def test_flush_gives_up_after_its_timeout_and_logs_what_is_left() -> None:
    rig = make_rig()
    rig.notifier.notify("/s/a.sh", (), "running")
    rig.notifier.notify("/s/a.sh", (), "left")
    flushed = rig.notifier.flush(rig.clock, timeout=5.0)
    rig.clock.advance(5.0)
    success_result_of(flushed)
    assert [e["message"] for e in rig.events] == ["/s/a.sh\n\nleft"]


def test_without_an_error_script_nothing_runs() -> None:
    clock, processes = Clock(), MemoryProcessReactor()
    notifier = ErrorNotifier(ScriptRunner(processes, clock), None)
    notifier.notify("/s/a.sh", (), "failed")
    assert processes.spawned == []
    success_result_of(notifier.when_idle())
