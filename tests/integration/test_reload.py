"""
SIGHUP reloads the configuration while tasks run: what changes live, what
waits for a restart, and that no entry is lost or run twice.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import DaemonProcess, daemon_env, shell_wait_for, wait_for
from tests.integration.conftest import Goophry, next_message, stats_when
from tests.integration.test_workers import _events, _max_overlap

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RELOADED = "configuration reloaded from "


class Recorder:
    """
    Scripts that note each start and end in one file, and hold their worker
    until the test releases them.
    """

    def __init__(self, goophry: Goophry, folder: Path) -> None:
        self.goophry = goophry
        self.events = folder / "events"
        self.release = folder / "release"

    def script(self, name: str, exit_code: int = 0) -> str:
        body = (
            f'echo "start $1 $(date +%s.%N)" >> {self.events}\n'
            f"{shell_wait_for(self.release)}\n"
            # Long enough for runs that overlap to be seen overlapping.
            "sleep 0.2\n"
            f'echo "end $1 $(date +%s.%N)" >> {self.events}\n'
            f"exit {exit_code}\n"
        )
        return str(self.goophry.script(name, body))

    def started(self) -> Counter[str]:
        """How many times each task started."""
        return Counter(task for _, kind, task in self.all() if kind == "start")

    def all(self) -> list[tuple[float, str, str]]:
        return _events(self.events) if self.events.exists() else []

    def wait_started(self, count: int, daemon: DaemonProcess) -> None:
        wait_for(
            lambda: sum(self.started().values()) >= count,
            message=lambda: f"{count} starts in {self.all()}:\n{daemon.log_text()}",
        )


def reload(daemon: DaemonProcess, text: str = RELOADED) -> str:
    """SIGHUP, and wait until the reload has been logged; return the log."""
    before = daemon.log_text().count(text)
    daemon.signal(signal.SIGHUP)
    wait_for(
        lambda: daemon.log_text().count(text) > before,
        message=lambda: f"{text!r} logged again:\n{daemon.log_text()}",
    )
    return daemon.log_text()


def test_workers_go_up_at_once_and_down_as_running_scripts_finish(
    goophry: Goophry, tmp_path: Path
) -> None:
    rec = Recorder(goophry, tmp_path)
    task = {"Type": "t", "Script": rec.script("t.sh")}
    config = goophry.config([{**task, "Workers": 1}])
    daemon = goophry.start(config)
    for n in range(6):
        goophry.push_args("t", f"t{n}")
    rec.wait_started(1, daemon)
    assert goophry.llen(goophry.queue("t")) == 5

    goophry.config([{**task, "Workers": 4}])
    assert "Workers of t 1 -> 4" in reload(daemon)
    # Three more at once, while the first still runs.
    rec.wait_started(4, daemon)
    assert goophry.llen(goophry.queue("t")) == 2

    goophry.config([{**task, "Workers": 1}])
    reload(daemon)
    rec.release.touch()
    goophry.wait_settled(15, message=daemon.log_text)
    assert goophry.llen(goophry.queue("t")) == 0
    assert rec.started() == Counter(f"t{n}" for n in range(6)), daemon.log_text()
    events = rec.all()
    # Four ran at once; the last two one at a time, once those had finished.
    assert _max_overlap(events) == 4, events
    last = [e for e in events if e[2] in ("t4", "t5")]
    first_ends = [when for when, kind, task in events if kind == "end" and task < "t4"]
    assert min(when for when, _, _ in last) >= max(first_ends), events
    assert _max_overlap(last) == 1, events


def test_a_type_added_takes_its_queued_entries(
    goophry: Goophry, tmp_path: Path, stats_address: str
) -> None:
    rec = Recorder(goophry, tmp_path)
    rec.release.touch()
    t = {"Type": "t", "Script": rec.script("t.sh")}
    config = goophry.config([t], StatsInterface=stats_address)
    daemon = goophry.start(config)
    goophry.push_args("u", "u0")
    goophry.push_args("u", "u1")
    # A task of t runs: the daemon takes entries, and none of u.
    goophry.push_args("t", "t0")
    rec.wait_started(1, daemon)
    goophry.wait_settled(message=daemon.log_text)
    assert goophry.llen(goophry.queue("u")) == 2

    goophry.config([t, {"Type": "u", "Script": rec.script("u.sh"), "Workers": 2}])
    assert "type u added (2 workers)" in reload(daemon)
    stats = stats_when(stats_address, lambda s: s["Succeeded"].get("u") == 2, timeout=15)
    assert stats["TaskCount"] == {"t": 1, "u": 2}
    goophry.wait_settled(message=daemon.log_text)
    assert rec.started() == Counter({"t0": 1, "u0": 1, "u1": 1})
    assert goophry.llen(goophry.queue("u")) == 0


def test_a_type_removed_leaves_its_entries_queued_and_its_running_one_finishes(
    goophry: Goophry, tmp_path: Path
) -> None:
    rec = Recorder(goophry, tmp_path)
    t = {"Type": "t", "Script": rec.script("t.sh")}
    u = {"Type": "u", "Script": rec.script("u.sh", exit_code=3)}
    config = goophry.config([t, u], FailedTasksTTL=600)
    daemon = goophry.start(config)
    goophry.push_args("u", "u0")
    rec.wait_started(1, daemon)
    queued = [goophry.push_args("u", "u1"), goophry.push_args("u", "u2")]

    goophry.config([t], FailedTasksTTL=600)
    assert "type u removed (its running scripts finish)" in reload(daemon)
    rec.release.touch()
    [failed] = goophry.wait_failed("u")
    assert failed["Args"] == ["u0"]
    assert failed["ErrorMessage"].startswith("exit status 3"), failed
    # The daemon still takes entries of t; none of u.
    goophry.push_args("t", "t0")
    rec.wait_started(2, daemon)
    goophry.wait_settled(message=daemon.log_text)
    assert goophry.lrange(goophry.queue("u")) == queued
    assert rec.started() == Counter({"u0": 1, "t0": 1})


def test_a_new_script_runs_the_next_entries_and_the_running_one_finishes_as_it_was(
    goophry: Goophry, tmp_path: Path
) -> None:
    rec = Recorder(goophry, tmp_path)
    config = goophry.config([{"Type": "t", "Script": rec.script("a.sh"), "Workers": 2}])
    daemon = goophry.start(config)
    goophry.push_args("t", "first")
    rec.wait_started(1, daemon)

    new = tmp_path / "b-ran"
    b = goophry.script("b.sh", f'echo "$1" >> {new}')
    goophry.config([{"Type": "t", "Script": str(b), "Workers": 2}])
    assert f"Script of t {goophry.tmp_path / 'scripts' / 'a.sh'} -> {b}" in reload(daemon)
    goophry.push_args("t", "second")
    wait_for(new.exists, message=daemon.log_text)
    rec.release.touch()
    goophry.wait_settled(message=daemon.log_text)
    assert new.read_text() == "second\n"
    assert rec.started() == Counter({"first": 1})
    assert [task for _, kind, task in rec.all() if kind == "end"] == ["first"]


@pytest.mark.parametrize("how", ["twistd", "tac", "cli"])
def test_a_broken_file_is_logged_as_a_start_says_it_and_the_daemon_runs_on(
    goophry: Goophry, tmp_path: Path, how: str
) -> None:
    ran = tmp_path / "ran"
    script = goophry.script("t.sh", f'echo "$1" >> {ran}')
    good = {"Type": "t", "Script": str(script)}
    config = goophry.config([good])
    daemon = goophry.start(config, how=how)
    goophry.config([{**good, "Workers": "two"}])
    check = subprocess.run(
        [sys.executable, "-m", "goophry_tx", "-t", "-c", str(config)],
        env=daemon_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert check.returncode == 2, check
    [message] = check.stderr.splitlines()

    log = reload(daemon, "not reloaded")
    assert f"{message}; not reloaded: running on with the configuration as it was" in log
    assert daemon.running()
    goophry.push_args("t", "a")
    wait_for(lambda: ran.exists() and ran.read_text() == "a\n", message=daemon.log_text)

    # A reload with the file mended applies it.
    goophry.config([{**good, "Workers": 2}])
    assert "Workers of t 1 -> 2" in reload(daemon)
    goophry.push_args("t", "b")
    wait_for(lambda: ran.read_text() == "a\nb\n", message=daemon.log_text)
    assert daemon.terminate(15) == 0, daemon.log_text()


def test_settings_that_need_a_restart_are_said_so_and_kept(
    goophry: Goophry, tmp_path: Path, stats_address: str
) -> None:
    ran = tmp_path / "ran"
    script = goophry.script("t.sh", f'echo "$1" >> {ran}')
    tasks: list[dict[str, Any]] = [{"Type": "t", "Script": str(script)}]
    daemon = goophry.start(goophry.config(tasks, StatsInterface=stats_address))
    goophry.config(tasks, RedisQueueKey="elsewhere", StatsInterface=None, OutputLimit=100)
    log = reload(daemon)
    assert "OutputLimit 65536 -> 100" in log
    assert (
        "changing RedisQueueKey, StatsInterface needs a restart; running on with the values "
        "it started with"
    ) in log
    # Still the queue and the stats server it started with.
    goophry.push_args("t", "a")
    stats_when(stats_address, lambda s: s["Succeeded"]["t"] == 1)
    assert ran.read_text() == "a\n"


def test_systemd_hears_reloading_then_ready(
    goophry: Goophry, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, path = notify_socket
    script = goophry.script("t.sh", "true")
    config = goophry.config([{"Type": "t", "Script": str(script)}])
    daemon = goophry.start(config, env={"NOTIFY_SOCKET": path})
    assert next_message(sock) == "READY=1\nSTATUS=1 types", daemon.log_text()
    goophry.config([{"Type": "t", "Script": str(script)}, {"Type": "u", "Script": str(script)}])
    daemon.signal(signal.SIGHUP)
    reloading = next_message(sock).split("\n")
    assert reloading[0] == "RELOADING=1", daemon.log_text()
    assert reloading[1].startswith("MONOTONIC_USEC="), reloading
    assert next_message(sock) == "READY=1\nSTATUS=2 types", daemon.log_text()
