"""
Pausing a type with goophry-ctl, as real daemons on a real Redis see it:
within a second, on every daemon, across restarts of the daemon and of Redis.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.conftest import BACK, UNREACHABLE, Rig
from tests.helpers import (
    DaemonProcess,
    RedisServer,
    daemon_env,
    free_port,
    shell_wait_for,
    wait_for,
)
from tests.integration.conftest import stats_when

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: What the daemons promise: they stop, or start again, taking a type's
#: entries within a second of the change.
PROMISED = 1.0
#: Added to it for a loaded machine (two CPU-bound processes beside the suite).
MARGIN = 1.5


@pytest.fixture
def rig(
    redis: RedisServer, queue_key: str, tmp_path: Path, run_daemon: Callable[..., DaemonProcess]
) -> Rig:
    return Rig(redis, queue_key, tmp_path, run_daemon)


def ctl(config: Path, *args: str) -> float:
    """Run goophry-ctl; the monotonic time at which it returned, done."""
    done = subprocess.run(
        [sys.executable, "-m", "goophry_tx.ctl", "-c", str(config), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=daemon_env(),
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return time.monotonic()


def blocked_takes(rig: Rig) -> int:
    """Daemon connections blocked in BLMOVE now (CLIENT LIST flag C{b})."""
    listing = rig.redis.cli("CLIENT", "LIST")
    assert isinstance(listing, bytes)
    return sum(
        1
        for line in listing.decode().splitlines()
        if "name=goophry:take:" in line and " flags=b " in line and "cmd=blmove" in line
    )


def within_bound(since: float, what: str) -> None:
    took = time.monotonic() - since
    assert took < PROMISED + MARGIN, (
        f"{what} {took:.2f}s after goophry-ctl returned: promised within {PROMISED:g}s, "
        f"allowed {MARGIN:g}s more for a loaded machine"
    )


def gated(rig: Rig) -> Path:
    """A script that marks its start and holds its worker until C{marks/go-<arg>} exists."""
    return rig.script(
        "gated.sh",
        f'echo "$1" >> {rig.started_file}\n'
        f"{shell_wait_for(rig.marks / 'go-$1')}\n"
        f'echo "$1" >> {rig.done_file}\n',
    )


def release(rig: Rig, name: str) -> None:
    (rig.marks / f"go-{name}").touch()


def test_pause_stops_two_daemons_within_a_second_and_resume_starts_them_again(
    rig: Rig, stats_address: str
) -> None:
    script = gated(rig)
    tasks = [{"Type": "t", "Script": str(script)}]
    other = f"127.0.0.1:{free_port()}"
    configs = [
        rig.config(tasks, StatsInterface=address, filename=f"goophry-{n}.config.json")
        for n, address in enumerate((stats_address, other))
    ]
    daemons = [rig.start(cfg) for cfg in configs]
    rig.wait_consuming(clients=2)
    # One daemon runs a task; the other waits in BLMOVE.
    rig.push("t", "busy")
    wait_for(lambda: rig.started() == ["busy"], 10, message=daemons[0].log_text)
    wait_for(lambda: blocked_takes(rig) == 1, 10, message="one daemon blocked in BLMOVE")

    paused_at = ctl(configs[0], "pause", "t")
    # Pushed at once: the pending BLMOVE may take it before it is ended.
    late = rig.push("t", "late")
    wait_for(lambda: blocked_takes(rig) == 0, 10, message="no daemon blocked in BLMOVE")
    within_bound(paused_at, "a daemon was still blocked in BLMOVE")
    for address in (stats_address, other):
        stats_when(address, lambda s: s["Paused"] == {"t": True})
    within_bound(paused_at, "the stats showed t paused")
    # The entry the ended take may have moved went back; it never ran.
    wait_for(lambda: rig.lrange(rig.queue("t")) == [late], 10, message="late back in the queue")

    # The running task finishes, and its worker takes nothing.
    release(rig, "busy")
    rig.wait_settled(message=lambda: "\n".join(d.log_text() for d in daemons))
    assert rig.done() == {"busy": 1}
    assert blocked_takes(rig) == 0
    assert rig.lrange(rig.queue("t")) == [late]
    assert rig.started() == ["busy"]
    for daemon in daemons:
        assert daemon.log_text().count("t paused") == 1, daemon.log_text()

    # Each daemon has one worker and each entry holds it: both must take one.
    rig.push("t", "later")
    resumed_at = ctl(configs[1], "resume", "t")
    wait_for(
        lambda: sorted(rig.started()) == ["busy", "late", "later"],
        10,
        message=lambda: "\n".join(d.log_text() for d in daemons),
    )
    within_bound(resumed_at, "both daemons took an entry")
    assert [len(rig.inflight_of(d, "t")) for d in daemons] == [1, 1]
    release(rig, "late")
    release(rig, "later")
    wait_for(lambda: rig.all_done(["late", "later"]), 10)
    for daemon in daemons:
        assert "t resumed" in daemon.log_text()
        assert daemon.running()


def test_a_pause_survives_a_restart_of_the_daemon(rig: Rig) -> None:
    script = rig.recorder(seconds=0)
    cfg = rig.config([{"Type": "t", "Script": str(script)}, {"Type": "u", "Script": str(script)}])
    ctl(cfg, "pause", "t")
    held = rig.push("t", "held")
    for run in range(2):
        daemon = rig.start(cfg)
        daemon.wait_for_log("t paused")
        # The other type runs, so the daemon is taking entries: not t's.
        name = f"u{run}"
        rig.push("u", name)
        wait_for(lambda: rig.all_done([name]), 10, message=daemon.log_text)  # noqa: B023
        rig.wait_settled(message=daemon.log_text)
        assert rig.lrange(rig.queue("t")) == [held]
        assert "held" not in rig.started()
        assert daemon.terminate() == 0
    daemon = rig.start(cfg)
    daemon.wait_for_log("t paused")
    ctl(cfg, "resume", "t")
    wait_for(lambda: rig.all_done(["held"]), 10, message=daemon.log_text)


def test_a_pause_made_while_redis_restarts_is_read_after_the_reconnect(rig: Rig) -> None:
    script = rig.recorder(seconds=0)
    # A beat every 12 s: the set is read again on reconnect, not by a beat.
    cfg = rig.config(
        [{"Type": "t", "Script": str(script)}, {"Type": "u", "Script": str(script)}],
        InstanceTimeout=60,
    )
    daemon = rig.start(cfg)
    rig.wait_consuming(clients=2)
    rig.redis.kill()
    daemon.wait_for_log(UNREACHABLE)
    rig.redis.start()
    # Redis kept nothing; the daemon is not back yet, so it hears no message.
    rig.redis.pipeline(
        ["MULTI"],
        ["SADD", rig.keys.paused, "t"],
        ["PUBLISH", rig.keys.paused_channel, "pause t"],
        ["EXEC"],
    )
    daemon.wait_for_log(BACK, timeout=15)
    daemon.wait_for_log("t paused", timeout=5)
    held = rig.push("t", "held")
    rig.push("u", "u1")
    wait_for(lambda: rig.all_done(["u1"]), 10, message=daemon.log_text)
    rig.wait_settled(message=daemon.log_text)
    assert rig.lrange(rig.queue("t")) == [held]
    ctl(cfg, "resume", "t")
    wait_for(lambda: rig.all_done(["held"]), 10, message=daemon.log_text)
