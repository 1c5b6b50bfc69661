"""C{make run} (examples/run-demo.sh): a signal stops the daemon first, then its Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import (
    REPO_ROOT,
    daemon_env,
    free_port,
    redis_command,
    wait_for,
    write_config,
    write_script,
)
from tests.integration.conftest import STARTED

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def session_members(sid: int) -> list[int]:
    """Every process still alive in session C{sid}."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid:
                    members.append(int(entry.name))
            except (ProcessLookupError, PermissionError):
                continue
    return members


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# Not `make run` with SIGINT: make itself exits at once on SIGINT (as at a
# terminal, where the script gets the same SIGINT and goes on alone).
@pytest.mark.parametrize(
    ("how", "signum"),
    [
        ("run-demo.sh", signal.SIGTERM),
        ("run-demo.sh", signal.SIGINT),
        ("make run", signal.SIGTERM),
    ],
)
def test_a_signal_stops_the_daemon_then_its_throwaway_redis(
    tmp_path: Path, how: str, signum: int
) -> None:
    port = free_port()
    demo = tmp_path / "demo"
    started, finished = tmp_path / "started", tmp_path / "finished"
    script = write_script(tmp_path, "slow.sh", f"touch {started}\nsleep 2\ntouch {finished}")
    cfg = write_config(
        tmp_path,
        RedisAddress=f"127.0.0.1:{port}",
        RedisQueueKey="demo",
        Tasks=[{"Type": "slow", "Script": str(script)}],
    )
    env = daemon_env(
        {
            "GOOPHRY_DEMO_PORT": str(port),
            "GOOPHRY_DEMO_CONFIG": str(cfg),
            "GOOPHRY_DEMO_DIR": str(demo),
            "VENV": str(Path(sys.executable).parent.parent),
        }
    )
    if how == "make run":
        # -o venv: the virtualenv is there already; do not reinstall it.
        argv = ["make", "--no-print-directory", "-o", "venv", "run"]
    else:
        argv = [str(REPO_ROOT / "examples" / "run-demo.sh")]
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(
            lambda: STARTED in log.read_text() or proc.poll() is not None,
            timeout=30,
            message=log.read_text,
        )
        assert proc.poll() is None, log.read_text()
        redis_pid = int((demo / "redis.pid").read_text())
        daemon_pid = int(wait_for(lambda: (demo / "goophry.pid").read_text().strip()))
        redis_command("127.0.0.1", port, "RPUSH", "demo:slow", '{"Args":[]}')
        wait_for(started.exists, timeout=15, message=log.read_text)

        proc.send_signal(signum)
        # make passes SIGTERM on to the script, waits for it, then ends itself
        # by the same signal, as make does.
        assert proc.wait(30) == (-signum if how == "make run" else 0), log.read_text()
        text = log.read_text()
        # The running script finished, and its outcome was written: Redis was still up.
        assert finished.exists(), text
        assert "unreachable" not in text and "could not be written" not in text, text
        assert text.index("run-demo: goophry exited with status 0") < text.index(
            "run-demo: stopped the throwaway redis-server"
        ), text
        assert not alive(daemon_pid) and not alive(redis_pid), text
        assert session_members(proc.pid) == [], text
    finally:
        for pid in session_members(proc.pid):
            os.kill(pid, signal.SIGKILL)
        if (demo / "redis.pid").exists():
            os.kill(int((demo / "redis.pid").read_text()), signal.SIGKILL)
