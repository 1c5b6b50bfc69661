"""Redis goes away (SIGKILL, down at start, refusing our password) and comes back."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.conftest import BACK, UNREACHABLE, Rig, authed
from tests.helpers import DaemonProcess, RedisServer, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

StartDaemon = Callable[..., DaemonProcess]
MakeServer = Callable[..., RedisServer]


def _failing_recorder(rig: Rig, seconds: float) -> Path:
    """Like C{rig.recorder}, but an argument starting with C{bad} exits 3 at the end."""
    return rig.script(
        "task.sh",
        f'echo "$1" >> {rig.started_file}\nsleep {seconds}\necho "$1" >> {rig.done_file}\n'
        'case "$1" in bad*) exit 3;; esac\n',
    )


def _durable_redis(make_redis_server: MakeServer) -> RedisServer:
    """A server that keeps every write across a SIGKILL."""
    return make_redis_server(appendonly="yes", appendfsync="always")


def test_redis_killed_while_tasks_run_outcomes_are_written_when_it_is_back(
    make_redis_server: MakeServer, queue_key: str, tmp_path: Path, start_daemon: StartDaemon
) -> None:
    server = _durable_redis(make_redis_server)
    rig = Rig(server, queue_key, tmp_path)
    script = _failing_recorder(rig, seconds=1.0)
    cfg = rig.config([{"Type": "work", "Script": str(script), "Workers": 2}])
    names = ["ok0", "bad0", "ok1", "bad1", "ok2"]
    rig.push_each("work", names)
    daemon = start_daemon(cfg)
    wait_for(lambda: len(rig.started()) >= 2, 10, message=daemon.log_text)
    running = set(rig.started())
    assert running == {"ok0", "bad0"}

    server.kill()
    daemon.wait_for_log(UNREACHABLE)
    # The running scripts are not disturbed: they finish while Redis is away.
    wait_for(lambda: rig.all_done(sorted(running)), 10, message=daemon.log_text)
    assert daemon.running()

    server.start()
    daemon.wait_for_log(BACK, timeout=10)
    wait_for(
        lambda: rig.all_done(names) and not rig.inflight_keys() and len(rig.failed("work")) == 2,
        15,
        message=lambda: f"every entry done: {rig.done()}\n{daemon.log_text()}",
    )
    assert rig.done() == dict.fromkeys(names, 1)
    failed = rig.failed("work")
    assert sorted(f["Args"][0] for f in failed) == ["bad0", "bad1"]
    assert {f["ErrorMessage"] for f in failed} == {"exit status 3"}
    assert rig.lrange(rig.queue("work")) == []
    log = daemon.log_text()
    assert log.count(UNREACHABLE) == 1, log
    assert log.count(BACK) == 1, log


def test_redis_down_at_start_the_daemon_waits_and_consumes_when_it_comes(
    make_redis_server: MakeServer, queue_key: str, tmp_path: Path, start_daemon: StartDaemon
) -> None:
    server = make_redis_server()
    server.kill()
    rig = Rig(server, queue_key, tmp_path)
    script = rig.recorder(seconds=0)
    daemon = start_daemon(rig.config([{"Type": "work", "Script": str(script)}]))
    daemon.wait_for_log(UNREACHABLE)
    time.sleep(3)  # the outage itself, not a wait for anything
    assert daemon.running()

    server.start()
    rig.wait_consuming()
    rig.push("work", "after")
    wait_for(lambda: rig.all_done(["after"]), 10, message=daemon.log_text)
    wait_for(lambda: not rig.inflight_keys(), 5, message=daemon.log_text)
    assert daemon.running()
    # Logged once the last link is back: the pause subscriber's may retry
    # up to the backoff's cap (5 s) after those that took and ran the entry.
    daemon.wait_for_log(BACK, 10)
    log = daemon.log_text()
    assert log.count(UNREACHABLE) == 1, log
    assert log.count(BACK) == 1, log


def test_a_password_fixed_on_the_server_side_is_picked_up(
    make_redis_server: MakeServer, queue_key: str, tmp_path: Path, start_daemon: StartDaemon
) -> None:
    # Started open (the fixture's readiness check is an unauthenticated PING),
    # then locked with the password the daemon does not know.
    server = make_redis_server()
    server.cli("CONFIG", "SET", "requirepass", "pw1")
    rig = Rig(server, queue_key, tmp_path)
    script = rig.recorder(seconds=0)
    cfg = rig.config([{"Type": "work", "Script": str(script)}], RedisPassword="pw2")
    daemon = start_daemon(cfg)
    daemon.wait_for_log(UNREACHABLE)

    def refusals() -> int:
        """Failed AUTHs, from the server's ACL log (similar events are merged, counted)."""
        total = 0
        for event in authed(server, "pw1", "ACL", "LOG"):
            fields = dict(zip(event[::2], event[1::2], strict=True))
            if fields[b"reason"] == b"auth":
                total += fields[b"count"]
        return total

    # It keeps trying (and is refused) without exiting or logging each attempt.
    wait_for(lambda: refusals() >= 3, 10, message=daemon.log_text)
    assert daemon.running()

    authed(server, "pw1", "CONFIG", "SET", "requirepass", "pw2")
    daemon.wait_for_log(BACK, timeout=10)
    authed(server, "pw2", "RPUSH", rig.queue("work"), '{"Args":["after"]}')
    wait_for(lambda: rig.all_done(["after"]), 10, message=daemon.log_text)
    log = daemon.log_text()
    assert log.count(UNREACHABLE) == 1, log
    assert "WRONGPASS" in log or "invalid password" in log, log


def test_sigterm_while_redis_is_down_loses_no_outcome(
    make_redis_server: MakeServer, queue_key: str, tmp_path: Path, start_daemon: StartDaemon
) -> None:
    """The outcome cannot be written: the entry stays in flight and runs again later."""
    server = _durable_redis(make_redis_server)
    rig = Rig(server, queue_key, tmp_path)
    script = rig.recorder(seconds=0.5)
    cfg = rig.config([{"Type": "work", "Script": str(script)}], InstanceTimeout=60)
    rig.push("work", "e0")
    first = start_daemon(cfg)
    wait_for(lambda: rig.started() == ["e0"], 10, message=first.log_text)
    server.kill()
    wait_for(lambda: rig.all_done(["e0"]), 10, message=first.log_text)

    # Bounded by the daemon's own flush timeout (10 s) plus slack.
    assert first.terminate(timeout=20) == 0, first.log_text()
    log = first.log_text()
    assert "could not be written" in log, log
    assert "Traceback" not in log and "Unhandled" not in log, log

    server.start()
    second = start_daemon(cfg)
    wait_for(
        lambda: rig.done()["e0"] == 2 and not rig.inflight_keys(),
        10,
        message=second.log_text,
    )
    assert rig.failed("work") == []


def test_entries_in_flight_that_the_daemon_does_not_know_of_go_back_after_a_reconnect(
    rig: Rig, start_daemon: StartDaemon
) -> None:
    """A BLMOVE whose reply was lost with the connection: the entry is in our list, unknown."""
    script = rig.recorder(seconds=0)
    daemon = start_daemon(rig.config([{"Type": "work", "Script": str(script)}]))
    rig.wait_consuming()
    [instance] = rig.instances()
    inflight = rig.keys.inflight("work", instance.decode())
    rig.redis.cli("RPUSH", inflight, '{"Args":["lost-reply"]}')

    # Every connection of the daemon is cut (ours is skipped).
    rig.redis.cli("CLIENT", "KILL", "TYPE", "normal")
    daemon.wait_for_log(BACK)
    wait_for(
        lambda: rig.all_done(["lost-reply"]) and not rig.inflight_keys(),
        10,
        message=daemon.log_text,
    )
    assert rig.done() == {"lost-reply": 1}
    assert "went back to the head" in daemon.log_text()

    # A second outage is logged again, once.
    rig.redis.cli("CLIENT", "KILL", "TYPE", "normal")
    wait_for(lambda: daemon.log_text().count(BACK) == 2, 10, message=daemon.log_text)
    rig.wait_consuming()
    rig.push("work", "after")
    wait_for(lambda: rig.all_done(["after"]), 10, message=daemon.log_text)
    assert daemon.log_text().count(UNREACHABLE) == 2, daemon.log_text()
