"""The daemon dies by SIGKILL: every entry still runs to completion at least once."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.conftest import Rig
from tests.helpers import DaemonProcess, session_pids, shell_wait_for, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

StartDaemon = Callable[..., DaemonProcess]


def _instance_of(rig: Rig, daemon: DaemonProcess) -> str:
    """The instance name the daemon registered under (it holds its pid)."""
    [name] = [n for n in rig.instances() if f":{daemon.pid}:".encode() in n]
    return name.decode()


def _names(entries: list[bytes]) -> set[str]:
    return {json.loads(entry)["Args"][0] for entry in entries}


def test_kill_9_then_restart_runs_every_entry_and_repeats_only_those_running(
    rig: Rig, start_daemon: StartDaemon
) -> None:
    names = [f"e{n}" for n in range(8)]
    script = rig.recorder(seconds=0.6)
    # A long InstanceTimeout: the restarted daemon must not wait for a
    # heartbeat to lapse, it sees at once that the old process is gone.
    cfg = rig.config([{"Type": "work", "Script": str(script), "Workers": 2}], InstanceTimeout=60)
    rig.push_each("work", names)
    first = start_daemon(cfg)
    wait_for(lambda: len(rig.started()) >= 3, 15, message=first.log_text)

    first.kill()
    inflight_at_kill = _names(rig.inflight_entries())
    queued_at_kill = rig.queued_args("work")
    assert inflight_at_kill, "tasks were running at the kill"
    assert queued_at_kill, "tasks were queued at the kill"
    # The killed daemon's scripts live on in their own process groups and
    # complete: let them, so that what ran before the restart is known.
    wait_for(lambda: not session_pids(first.pid), 10, message="the orphaned scripts to end")
    running_at_kill = inflight_at_kill & set(rig.started())

    second = start_daemon(cfg)
    wait_for(
        lambda: rig.all_done(names) and not rig.inflight_keys(),
        10,
        message=lambda: f"every entry done: {rig.done()}\n{second.log_text()}",
    )
    done = rig.done()
    duplicates = {name for name, count in done.items() if count > 1}
    assert duplicates == running_at_kill
    assert running_at_kill
    assert max(done.values()) == 2
    assert sorted(done) == names
    assert rig.lrange(rig.queue("work")) == []
    assert rig.failed("work") == []
    assert "is gone" in second.log_text()


def test_a_live_instance_recovers_a_killed_ones_entries_within_instance_timeout(
    rig: Rig, start_daemon: StartDaemon
) -> None:
    instance_timeout = 3
    runs = rig.marks / "runs"
    script = rig.recorder(seconds=1.5, extra=f'echo "$1 $PPID" >> {runs}')
    cfg = rig.config(
        [{"Type": "work", "Script": str(script), "Workers": 1}], InstanceTimeout=instance_timeout
    )
    a = start_daemon(cfg)
    b = start_daemon(cfg)
    rig.wait_consuming(2)
    names = [f"e{n}" for n in range(4)]
    rig.push_each("work", names)
    wait_for(
        lambda: rig.inflight_of(a, "work") and rig.inflight_of(b, "work"),
        10,
        message="each daemon to take an entry",
    )
    [taken_by_a] = _names(rig.inflight_of(a, "work"))
    heartbeat_of_a = rig.keys.heartbeat(_instance_of(rig, a))

    a.kill()
    # The heartbeat lapses within InstanceTimeout; the bound adds a margin for
    # the next beat of b on a loaded machine, and says so when it is exceeded.
    wait_for(
        lambda: not rig.inflight_of(a, "work"),
        instance_timeout + 3,
        message=lambda: (
            f"the killed instance's entries recovered within InstanceTimeout "
            f"({instance_timeout}s) and a 3s margin:\n{b.log_text()}"
        ),
    )
    # Recovered because its heartbeat lapsed (not because its host saw it go).
    assert rig.redis.cli("EXISTS", heartbeat_of_a) == 0

    wait_for(
        lambda: rig.all_done(names) and not rig.inflight_keys(),
        15,
        message=lambda: f"every entry done: {rig.done()}\n{b.log_text()}",
    )
    # The recovered entry ran again, in the live daemon.
    assert f"{taken_by_a} {b.pid}" in rig.lines(runs)
    assert rig.lrange(rig.queue("work")) == []
    assert "is gone" in b.log_text()
    assert not rig.registered(a)


def _poison_script(rig: Rig, deadly: bool = True) -> str:
    """A script that marks each run of the entry "poison" and, if deadly, hangs in it."""
    hang = "\n  sleep 30" if deadly else ""
    script = rig.script(
        "poison.sh",
        f'if [ "$1" = poison ]; then\n  echo run >> {rig.marks / "poison"}{hang}\nfi\n'
        f'echo "$1" >> {rig.done_file}\n',
    )
    return str(script)


def _crash_on_poison(rig: Rig, start_daemon: StartDaemon, cfg: Path, runs: int) -> None:
    """Start a daemon, wait for its run of the poison entry, SIGKILL it and its script."""
    daemon = start_daemon(cfg)
    wait_for(
        lambda: len(rig.lines(rig.marks / "poison")) >= runs,
        10,
        message=lambda: f"run {runs} of the poison entry:\n{daemon.log_text()}",
    )
    daemon.kill_session()


def test_an_entry_that_keeps_killing_the_daemon_is_abandoned_after_max_recoveries(
    rig: Rig, start_daemon: StartDaemon
) -> None:
    script = _poison_script(rig)
    cfg = rig.config(
        [{"Type": "work", "Script": script, "Workers": 1}], MaxRecoveries=3, InstanceTimeout=60
    )
    rig.push_each("work", ["poison", "a", "b"])
    for run in range(1, 4):
        _crash_on_poison(rig, start_daemon, cfg, run)

    last = start_daemon(cfg)
    wait_for(
        lambda: rig.failed("work") and rig.all_done(["a", "b"]) and not rig.inflight_keys(),
        10,
        message=lambda: f"poison abandoned, a and b done:\n{last.log_text()}",
    )
    [failed] = rig.failed("work")
    assert failed["Args"] == ["poison"]
    assert failed["ErrorMessage"].startswith("abandoned after 3 recoveries")
    assert len(rig.lines(rig.marks / "poison")) == 3
    assert rig.done() == {"a": 1, "b": 1}
    assert rig.lrange(rig.queue("work")) == []


def test_recoveries_of_an_earlier_push_do_not_count_against_a_new_push_of_the_same_entry(
    rig: Rig, start_daemon: StartDaemon
) -> None:
    """Producers push identical entries again and again (e.g. a nightly report)."""
    script = _poison_script(rig)
    cfg = rig.config(
        [{"Type": "work", "Script": script, "Workers": 1}], MaxRecoveries=3, InstanceTimeout=60
    )
    rig.push("work", "poison")
    # Two crashes: recovered twice, below the limit.
    for run in range(1, 3):
        _crash_on_poison(rig, start_daemon, cfg, run)
    # The third run is let finish: recovered twice, then done.
    (rig.marks / "poison").unlink()
    _poison_script(rig, deadly=False)
    daemon = start_daemon(cfg)
    wait_for(lambda: rig.done()["poison"] == 1, 10, message=daemon.log_text)
    wait_for(lambda: not rig.inflight_keys(), 5, message=daemon.log_text)
    daemon.terminate()
    assert rig.failed("work") == []

    # A new push of the same entry, later on, crashes its daemon once.
    _poison_script(rig)
    (rig.marks / "poison").unlink()
    rig.push("work", "poison")
    _crash_on_poison(rig, start_daemon, cfg, 1)
    last = start_daemon(cfg)
    # One recovery of this push: it runs again, it is not abandoned.
    wait_for(
        lambda: len(rig.lines(rig.marks / "poison")) >= 2 or rig.failed("work"),
        10,
        message=last.log_text,
    )
    assert rig.failed("work") == [], last.log_text()


def test_a_frozen_instance_is_recovered_and_works_on_when_it_thaws(
    rig: Rig, start_daemon: StartDaemon
) -> None:
    """SIGSTOP (a VM pause, a stuck host): alive but silent, then back."""
    instance_timeout = 2
    runs = rig.marks / "runs"
    release = rig.marks / "release"
    # A run holds its worker until released: a's run still goes on when a is frozen.
    script = rig.recorder(seconds=0, extra=f'echo "$1 $PPID" >> {runs}\n{shell_wait_for(release)}')
    cfg = rig.config(
        [{"Type": "work", "Script": str(script), "Workers": 1}], InstanceTimeout=instance_timeout
    )
    a = start_daemon(cfg)
    rig.wait_consuming(1)
    rig.push("work", "e0")
    wait_for(lambda: rig.inflight_of(a, "work"), 10, message=a.log_text)
    b = start_daemon(cfg)
    # a's one worker is busy: the connection waiting in BLMOVE is b's.
    rig.wait_consuming(1)

    a.signal(signal.SIGSTOP)
    try:
        wait_for(
            lambda: not rig.inflight_of(a, "work"),
            instance_timeout + 3,
            message=lambda: f"the frozen instance's entry recovered:\n{b.log_text()}",
        )
        wait_for(lambda: f"e0 {b.pid}" in rig.lines(runs), 5, message=b.log_text)
    finally:
        release.touch()
        a.signal(signal.SIGCONT)

    wait_for(lambda: rig.done()["e0"] == 2, 10, message=a.log_text)
    # A thawed instance registers again and goes on taking entries.
    wait_for(lambda: rig.registered(a), 5, message=a.log_text)
    rig.wait_consuming(2)
    names = [f"later{n}" for n in range(4)]
    rig.push_each("work", names)
    wait_for(
        lambda: rig.all_done(names) and not rig.inflight_keys(),
        15,
        message=lambda: f"{rig.done()}\n{a.log_text()}\n{b.log_text()}",
    )
    assert rig.failed("work") == []
    assert rig.lrange(rig.queue("work")) == []
    for daemon in (a, b):
        assert "Traceback" not in daemon.log_text(), daemon.log_text()
