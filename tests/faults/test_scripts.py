"""Scripts that misbehave: run too long, leave children behind, flood their output."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.faults.conftest import Rig
from tests.helpers import (
    DaemonProcess,
    kill_quietly,
    proc_status_kib,
    process_gone,
    task_payload,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

StartDaemon = Callable[..., DaemonProcess]
MiB = 1024  # in KiB, the unit of /proc/<pid>/status


def test_a_timeout_kills_the_script_and_the_child_it_started(rig: Rig) -> None:
    grandchild = rig.marks / "gc.pid"
    daemon = rig.launch(
        f"sleep 100 &\necho $! > {grandchild}\nwait\n",
        task_payload("e0"),
        task_type="work",
        task={"Timeout": 1},
        KillGrace=2,
    ).daemon
    wait_for(grandchild.exists, 10, message=daemon.log_text)
    pid = int(wait_for(lambda: grandchild.read_text().strip(), 5))
    try:
        wait_for(lambda: rig.failed("work"), 10, message=daemon.log_text)
        [failed] = rig.failed("work")
        assert rig.stamped(failed, daemon) == {
            "Args": ["e0"],
            "ErrorMessage": "timed out after 1s (signal: terminated)",
        }
        # The whole process group got the signal: the grandchild too.
        wait_for(lambda: process_gone(pid), 5, message=f"grandchild {pid} to be gone")
        assert rig.inflight_keys() == []
    finally:
        kill_quietly(pid)


def test_a_backgrounded_child_holding_stdout_does_not_hold_the_worker_slot(
    rig: Rig, start_daemon: StartDaemon
) -> None:
    bg = rig.marks / "bg.pid"
    # `sleep 30 &` keeps the script's stdout (the daemon's pipe) open for 30 s.
    script = rig.script(
        "bg.sh",
        f'if [ "$1" = bg ]; then\n  sleep 30 &\n  echo $! > {bg}\nfi\n'
        f'echo "$1" >> {rig.done_file}\n',
    )
    cfg = rig.config([{"Type": "work", "Script": str(script), "Workers": 1}])
    daemon = start_daemon(cfg)
    rig.wait_consuming()
    rig.push_each("work", ["bg", "next"])
    wait_for(bg.exists, 10, message=daemon.log_text)
    pid = int(wait_for(lambda: bg.read_text().strip(), 5))
    try:
        wait_for(lambda: rig.all_done(["bg", "next"]), 10, message=daemon.log_text)
        # The event that proves it: "next" ran while the child still held the pipe.
        assert not process_gone(pid), "the child still holds the pipe: the slot was freed anyway"
        wait_for(lambda: not rig.inflight_keys(), 5, message=daemon.log_text)
        assert rig.failed("work") == []
    finally:
        kill_quietly(pid)


def test_200_mb_of_output_does_not_grow_the_daemon_and_is_truncated(
    rig: Rig, start_daemon: StartDaemon
) -> None:
    size, limit = 200_000_000, 65536
    script = rig.script(
        "flood.sh",
        f'if [ "$1" = small ]; then echo small >> {rig.done_file}; exit 0; fi\n'
        f"head -c {size} /dev/zero\n",
    )
    cfg = rig.config([{"Type": "work", "Script": str(script)}], OutputLimit=limit)
    daemon = start_daemon(cfg)
    # Warm up: connected, and one task run, so the baseline is a working daemon's.
    rig.push("work", "small")
    wait_for(
        lambda: rig.all_done(["small"]) and not rig.inflight_keys(), 10, message=daemon.log_text
    )
    baseline = proc_status_kib(daemon.pid)
    peak_before = proc_status_kib(daemon.pid, "VmHWM")

    rig.push("work", "flood")
    peak = baseline

    def failed() -> object:
        nonlocal peak
        peak = max(peak, proc_status_kib(daemon.pid))
        return rig.failed("work")

    wait_for(failed, 60, interval=0.01, message=daemon.log_text)
    assert peak - baseline <= 15 * MiB, (baseline, peak)
    # VmHWM catches a spike between two samples.
    assert proc_status_kib(daemon.pid, "VmHWM") <= max(peak_before, baseline + 15 * MiB)
    [entry] = rig.failed("work")
    assert entry["Args"] == ["flood"]
    message = entry["ErrorMessage"]
    assert message.endswith(f"[truncated {size - limit} bytes]")
    assert message.startswith("\0" * limit)
