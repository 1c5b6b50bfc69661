"""Stopping by signal: running scripts finish (or go back), nothing is lost."""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest

from tests.faults.conftest import Rig
from tests.helpers import DaemonProcess, session_pids, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

StartDaemon = Callable[..., DaemonProcess]
STOPPING = "stopping: no more entries taken"


def _assert_nothing_in_flight(rig: Rig) -> None:
    assert rig.inflight_keys() == []
    assert rig.instances() == []


def test_sigterm_lets_running_scripts_finish_and_leaves_the_queue_alone(
    rig: Rig, start_daemon: StartDaemon
) -> None:
    script = rig.recorder(seconds=1.0)
    cfg = rig.config([{"Type": "work", "Script": str(script), "Workers": 2}])
    names = [f"e{n}" for n in range(5)]
    rig.push_each("work", names)
    daemon = start_daemon(cfg)
    wait_for(lambda: len(rig.started()) == 2, 10, message=daemon.log_text)
    running = set(rig.started())

    daemon.signal(signal.SIGTERM)
    assert daemon.wait(10) == 0, daemon.log_text()
    assert set(rig.done()) == running
    assert set(rig.started()) == running, "no entry taken after the signal"
    assert rig.queued_args("work") == [[name] for name in names if name not in running]
    assert rig.failed("work") == []
    _assert_nothing_in_flight(rig)


def test_shutdown_timeout_stops_scripts_and_puts_their_entries_back_at_the_head(
    rig: Rig, start_daemon: StartDaemon
) -> None:
    # "stubborn" ignores SIGTERM (and so does its sleep): only SIGKILL ends it.
    script = rig.recorder(seconds=30, extra='[ "$1" = stubborn ] && trap "" TERM')
    cfg = rig.config(
        [{"Type": "work", "Script": str(script), "Workers": 2}], ShutdownTimeout=1, KillGrace=1
    )
    rig.push_each("work", ["gentle", "stubborn", "queued"])
    daemon = start_daemon(cfg)
    wait_for(lambda: len(rig.started()) == 2, 10, message=daemon.log_text)

    daemon.signal(signal.SIGTERM)
    daemon.wait_for_log("ShutdownTimeout (1s) is over: stopping the running scripts now")
    # ShutdownTimeout, then KillGrace, then the writes: well before the scripts' 30 s.
    assert daemon.wait(20, expected="stopped the scripts, not waited for them") == 0
    queued = rig.queued_args("work")
    assert sorted(queued[:2]) == [["gentle"], ["stubborn"]]
    assert queued[2:] == [["queued"]]
    assert rig.done() == {}
    assert rig.failed("work") == []
    _assert_nothing_in_flight(rig)
    # The scripts' process groups are gone, their sleeps included.
    wait_for(lambda: not session_pids(daemon.pid), 5, message="no script left running")


def test_a_second_sigterm_stops_the_scripts_at_once_and_loses_nothing(
    rig: Rig, start_daemon: StartDaemon
) -> None:
    script = rig.recorder(seconds=30)
    cfg = rig.config([{"Type": "work", "Script": str(script), "Workers": 1}], KillGrace=1)
    rig.push_each("work", ["running", "queued"])
    daemon = start_daemon(cfg)
    wait_for(lambda: rig.started() == ["running"], 10, message=daemon.log_text)

    daemon.signal(signal.SIGTERM)
    daemon.wait_for_log(STOPPING)
    assert daemon.running(), "ShutdownTimeout 0: it waits for the script"
    daemon.signal(signal.SIGTERM)
    daemon.wait_for_log("a second signal: stopping the running scripts now")
    # KillGrace, then the writes: well before the script's 30 s.
    assert daemon.wait(20, expected="stopped the script, not waited for it") == 0
    assert rig.queued_args("work") == [["running"], ["queued"]]
    assert rig.done() == {}
    _assert_nothing_in_flight(rig)


def test_ctrl_c_on_a_foreground_daemon_does_not_hit_the_running_script(
    rig: Rig, start_daemon: StartDaemon
) -> None:
    script = rig.recorder(seconds=1.5)
    cfg = rig.config([{"Type": "work", "Script": str(script)}])
    rig.push_each("work", ["running", "queued"])
    daemon = start_daemon(cfg)
    wait_for(lambda: rig.started() == ["running"], 10, message=daemon.log_text)

    # What a terminal does on Ctrl-C: SIGINT to the foreground process group.
    daemon.signal_group(signal.SIGINT)
    daemon.wait_for_log(STOPPING)
    assert rig.done() == {}, "the daemon stops only after its script"
    assert daemon.wait(10) == 0, daemon.log_text()
    assert rig.done() == {"running": 1}
    assert rig.failed("work") == []
    assert rig.queued_args("work") == [["queued"]]
    _assert_nothing_in_flight(rig)
