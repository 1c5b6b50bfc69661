"""Starting, stopping and signals: nothing is lost, and a clean stop exits 0."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import (
    REPO_ROOT,
    TWISTD,
    kill_quietly,
    shell_wait_for,
    shell_write,
    task_payload,
    wait_for,
)
from tests.integration.conftest import STARTED, Goophry

pytestmark = pytest.mark.integration

HOWS = ["twistd", "tac", "cli"]


@pytest.mark.parametrize("how", HOWS)
def test_each_way_starts_runs_a_task_and_stops_on_sigterm(
    goophry: Goophry, tmp_path: Path, how: str
) -> None:
    out = tmp_path / "out"
    daemon = goophry.launch(shell_write(out, 'printf "%s" "$1"'), task_payload(how), how=how).daemon
    wait_for(out.exists, message=lambda: daemon.log_text())
    assert out.read_text() == how

    code = daemon.terminate()
    log = daemon.log_text()
    assert code == 0, log
    assert "stopping: no more entries taken" in log
    assert "Traceback" not in log
    assert goophry.inflight_keys() == []


def _signal_mask(pid: int, field: str) -> int:
    """A signal mask of /proc/PID/status (SigCgt: caught, SigIgn: ignored)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name == field:
                return int(value, 16)
    raise AssertionError(f"no {field} in /proc/{pid}/status")


@pytest.mark.parametrize("how", HOWS)
def test_each_way_leaves_sigchld_to_the_kernel_and_still_sees_exit_statuses(
    goophry: Goophry, how: str
) -> None:
    # The daemon reaps its children by their pipes and pidfds: SIGCHLD is
    # left at its default (neither caught, which costs a wake-up per task,
    # nor ignored, which would make the kernel reap them and lose statuses).
    daemon = goophry.launch("exit 3", task_payload("a"), how=how, FailedTasksTTL=60).daemon
    [failed] = goophry.wait_failed("t")
    assert failed["ErrorMessage"] == "exit status 3", daemon.log_text()
    bit = 1 << (signal.SIGCHLD - 1)
    assert not _signal_mask(daemon.pid, "SigCgt") & bit
    assert not _signal_mask(daemon.pid, "SigIgn") & bit
    assert daemon.terminate() == 0, daemon.log_text()


@pytest.mark.parametrize(
    "how",
    [
        "twistd",
        "tac",
        "cli",
    ],
)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_exits_with_status_zero(goophry: Goophry, how: str, signum: int) -> None:
    daemon = goophry.launch("true", how=how).daemon
    daemon.signal(signum)
    assert daemon.wait() == 0, daemon.log_text()


@pytest.mark.slow
@pytest.mark.parametrize("signals", [1, 2], ids=["one-signal", "second-signal"])
@pytest.mark.parametrize("how", ["twistd", "cli"])
def test_sigterm_lets_the_running_task_finish_and_loses_nothing(
    goophry: Goophry,
    tmp_path: Path,
    stats_address: str,
    how: str,
    signals: int,
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    payloads = [json.dumps({"Args": [name]}) for name in ("first", "second", "third")]
    goophry.push("t", *payloads)
    daemon = goophry.launch(
        f"touch {marks}/started-$1\nsleep 2\ntouch {marks}/finished-$1",
        task={"Workers": 1},
        how=how,
        FailedTasksTTL=60,
        StatsInterface=stats_address,
    ).daemon
    started = marks / "started-first"
    wait_for(started.exists, message=lambda: daemon.log_text())
    [inflight] = goophry.inflight_keys()
    assert goophry.redis.cli("LRANGE", inflight, 0, -1) == [payloads[0].encode()]

    daemon.signal(signal.SIGTERM)
    if signals == 2:
        daemon.wait_for_log("stopping: no more entries taken")
        daemon.signal(signal.SIGTERM)
    code = daemon.wait(10)
    log = daemon.log_text()
    assert code == 0, log

    if signals == 1:
        # The running task ran to its end; the others were never taken.
        assert sorted(p.name for p in marks.iterdir()) == ["finished-first", "started-first"]
        left = payloads[1:]
    else:
        # A second signal stops the running script; its entry goes back to the head.
        assert "finished-first" not in {p.name for p in marks.iterdir()}
        left = payloads
    assert goophry.redis.cli("LRANGE", goophry.queue("t"), 0, -1) == [p.encode() for p in left]
    assert goophry.inflight_keys() == []
    assert goophry.redis.cli("EXISTS", goophry.failed_key("t")) == 0
    assert "Traceback" not in log


@pytest.mark.parametrize("how", ["twistd", "cli"])
def test_a_stop_while_redis_has_not_answered_yet_is_clean(goophry: Goophry, how: str) -> None:
    """The same race that a stop right after the start sometimes hits, made certain."""
    # A "Redis" that accepts connections (the kernel does, from the backlog) but never answers.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen(16)
        address = f"127.0.0.1:{mute.getsockname()[1]}"
        daemon = goophry.launch("true", how=how, RedisAddress=address).daemon
        # Its links have connected and sent their first commands.
        wait_for(lambda: _backlog(mute) >= 2, message="the daemon's links to connect")
        daemon.signal(signal.SIGTERM)
        daemon.wait()
        log = daemon.log_text()
    assert "Unhandled Error" not in log, log
    assert "Traceback" not in log, log


def _backlog(listener: socket.socket) -> int:
    """How many connections wait in the listener's accept queue (from /proc/net/tcp)."""
    port = listener.getsockname()[1]
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state = fields[1], fields[3]
        # The server's end of each connection: local port is ours, ESTABLISHED.
        if int(local.split(":")[1], 16) == port and state == "01":
            count += 1
    return count


@pytest.mark.parametrize("how", ["twistd", "cli"])
def test_verbose_logs_each_task_taken_started_and_done(
    goophry: Goophry, tmp_path: Path, how: str
) -> None:
    out = tmp_path / "out"
    quiet, script, cfg = goophry.launch(f'printf "%s" "$1" > {out}', task_payload("quiet"), how=how)
    wait_for(lambda: out.exists() and out.read_text() == "quiet", message=quiet.log_text)
    assert quiet.terminate() == 0
    assert "task t " not in quiet.log_text()

    verbose = goophry.start(cfg, "-v", how=how)
    goophry.push_args("t", "loud")
    wait_for(lambda: "task t done in" in verbose.log_text(), message=verbose.log_text)
    log = verbose.log_text()
    assert "task t taken: " in log and '"loud"' in log
    assert f"task t started: {script} ['loud']" in log
    assert verbose.terminate() == 0


def test_in_the_background_it_runs_workers_at_once_and_stops_on_sigterm(
    goophry: Goophry,
    tmp_path: Path,
    write_config: Callable[..., Path],
) -> None:
    """twistd without -n forks into the background after the service is made."""
    marks = tmp_path / "marks"
    marks.mkdir()
    release = tmp_path / "release"
    # Each run holds its worker until the test releases it (bounded, for an
    # orphan): four starts before the release can only be four at once.
    script = goophry.script(
        "t.sh",
        f'touch {marks}/"$1".start\n{shell_wait_for(release)}\ntouch {marks}/"$1".end',
    )
    cfg = write_config(Tasks=[{"Type": "t", "Script": str(script), "Workers": 4}])
    pidfile, logfile = tmp_path / "twistd.pid", tmp_path / "twistd.log"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    argv = [*TWISTD, f"--pidfile={pidfile}", f"--logfile={logfile}", "goophry", "-c", str(cfg)]
    subprocess.run(argv, cwd=tmp_path, env=env, check=True, timeout=30)
    # Read once twistd has written it, not only made it.
    pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), message="no pid"))
    try:
        wait_for(lambda: STARTED in logfile.read_text(), message=lambda: logfile.read_text())
        for n in range(4):
            goophry.push_args("t", f"e{n}")
        # All four start together: the spawning threads exist after the fork.
        wait_for(
            lambda: len(list(marks.glob("*.start"))) == 4,
            timeout=15,
            message=lambda: f"four runs at once:\n{logfile.read_text()}",
        )
        record = json.loads(goophry.redis.cli("HGET", goophry.keys.instances, _only(goophry)))
        assert record["pid"] == pid, "the instance is registered with the daemon's own pid"
        os.kill(pid, signal.SIGTERM)
        wait_for(
            lambda: "stopping: no more entries taken" in logfile.read_text(),
            message=lambda: logfile.read_text(),
        )
        release.touch()
        wait_for(lambda: not pidfile.exists(), timeout=15, message=lambda: logfile.read_text())
        assert len(list(marks.glob("*.end"))) == 4, "the stop waited for every run"
    finally:
        kill_quietly(pid)


def _only(goophry: Goophry) -> str:
    [name] = goophry.instances()
    return name.decode()
