"""Fixtures for the fault suite: every fault is caused for real.

The daemon runs as ``twistd -n goophry``, Redis is a real ``redis-server``,
and scripts leave marker lines in files so that a test can tell what ran, how
often, and what was running at the moment of a crash. Every wait is bounded
(``wait_for``); the only deliberate pauses are outages of a stated length.
"""

from __future__ import annotations

import http.client
import json
import os
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from goophry_tx import __version__
from tests.helpers import (
    DaemonProcess,
    RedisServer,
    free_port,
    redis_pipeline,
    wait_for,
    write_script,
)

#: Logged once the configuration is loaded and the service has started.
STARTED = f"Goophry {__version__} instance "
#: Logged once per outage, and once when Redis is back (goophry_tx.redis).
UNREACHABLE = "unreachable"
BACK = "is back after"


class Rig:
    """One test's queue key on one Redis, with marker files for its scripts.

    Scripts written by ``recorder`` append their first argument to
    ``started`` when they begin and to ``done`` only when they end, so a line
    in ``done`` is a run to completion.
    """

    def __init__(self, server: RedisServer, queue_key: str, tmp_path: Path) -> None:
        self.redis = server
        self.key = queue_key
        self.tmp_path = tmp_path
        self.marks = tmp_path / "marks"
        self.marks.mkdir(exist_ok=True)
        self.started_file = self.marks / "started"
        self.done_file = self.marks / "done"

    # Keys

    def queue(self, task_type: str) -> str:
        return f"{self.key}:{task_type}"

    def failed_key(self, task_type: str) -> str:
        return f"{self.key}:{task_type}:failed"

    def lrange(self, key: str | bytes) -> list[bytes]:
        items = self.redis.cli("LRANGE", key, 0, -1)
        assert isinstance(items, list)
        return items  # type: ignore[return-value]

    def queued_args(self, task_type: str) -> list[list[str]]:
        """The Args of the entries waiting in a queue, head first."""
        return [json.loads(item)["Args"] for item in self.lrange(self.queue(task_type))]

    def failed(self, task_type: str) -> list[dict[str, Any]]:
        return [json.loads(item) for item in self.lrange(self.failed_key(task_type))]

    def instances(self) -> list[bytes]:
        """The names of the registered daemon instances."""
        names = self.redis.cli("HKEYS", f"{self.key}:instances")
        assert isinstance(names, list)
        return names  # type: ignore[return-value]

    def registered(self, daemon: DaemonProcess) -> bool:
        return any(f":{daemon.pid}:".encode() in name for name in self.instances())

    def inflight_keys(self) -> list[bytes]:
        keys = self.redis.cli("KEYS", f"{self.key}:*:inflight:*")
        assert isinstance(keys, list)
        return sorted(keys)  # type: ignore[arg-type]

    def inflight_of(self, daemon: DaemonProcess, task_type: str) -> list[bytes]:
        """The in-flight entries of the instance run by this process."""
        return [
            entry
            for key in self.inflight_keys()
            if key.startswith(f"{self.queue(task_type)}:inflight:".encode())
            and f":{daemon.pid}:".encode() in key
            for entry in self.lrange(key)
        ]

    def inflight_entries(self) -> list[bytes]:
        return [entry for key in self.inflight_keys() for entry in self.lrange(key)]

    def wait_consuming(self, clients: int = 1, timeout: float = 20.0) -> None:
        """Wait until ``clients`` connections block in BLMOVE for the daemons.

        An entry pushed after that is taken at once.
        """

        def blocked() -> bool:
            listing = self.redis.cli("CLIENT", "LIST")
            assert isinstance(listing, bytes)
            lines = listing.decode().splitlines()
            waiting = [line for line in lines if "cmd=blmove" in line and "goophry:take:" in line]
            return len(waiting) >= clients

        wait_for(blocked, timeout, message=f"{clients} daemon connections waiting in BLMOVE")

    # Entries

    def push(self, task_type: str, *args: str) -> bytes:
        payload = json.dumps({"Args": list(args)}).encode()
        self.redis.cli("RPUSH", self.queue(task_type), payload)
        return payload

    def push_each(self, task_type: str, names: Sequence[str]) -> None:
        """One entry per name, its only argument; in order."""
        payloads = [json.dumps({"Args": [name]}) for name in names]
        self.redis.cli("RPUSH", self.queue(task_type), *payloads)

    # Scripts and their markers

    def script(self, name: str, body: str) -> Path:
        return write_script(self.tmp_path / "scripts", name, body)

    def recorder(self, name: str = "task.sh", seconds: float = 0.5, extra: str = "") -> Path:
        """A script that marks its start, runs ``extra``, sleeps, then marks its end."""
        return self.script(
            name,
            f'echo "$1" >> {self.started_file}\n{extra}\nsleep {seconds}\n'
            f'echo "$1" >> {self.done_file}\n',
        )

    @staticmethod
    def lines(path: Path) -> list[str]:
        return path.read_text().splitlines() if path.exists() else []

    def started(self) -> list[str]:
        return self.lines(self.started_file)

    def done(self) -> Counter[str]:
        return Counter(self.lines(self.done_file))

    def all_done(self, names: Sequence[str]) -> bool:
        done = self.done()
        return all(done[name] for name in names)

    # The daemon

    def config(self, tasks: list[dict[str, Any]], **settings: Any) -> Path:
        settings.setdefault("RedisAddress", self.redis.address)
        settings.setdefault("RedisQueueKey", self.key)
        settings.setdefault("FailedTasksTTL", 3600)
        settings.setdefault("InstanceTimeout", 3)
        path = self.tmp_path / "goophry.config.json"
        path.write_text(json.dumps({"Tasks": tasks, **settings}, indent=2) + "\n")
        return path


@pytest.fixture
def rig(redis: RedisServer, queue_key: str, tmp_path: Path) -> Rig:
    """A Rig on the worker's shared, flushed redis-server."""
    return Rig(redis, queue_key, tmp_path)


@pytest.fixture
def start_daemon(
    run_daemon: Callable[..., DaemonProcess],
) -> Callable[..., DaemonProcess]:
    """``start_daemon(cfg, *args)``: run_daemon, then wait until the service started."""

    def start(config_path: Path, *args: str, timeout: float = 20.0) -> DaemonProcess:
        daemon = run_daemon(config_path, *args)
        daemon.wait_for_log(STARTED, timeout)
        return daemon

    return start


@pytest.fixture
def stats_address() -> str:
    return f"127.0.0.1:{free_port()}"


# --------------------------------------------------------------------------
# Processes


def process_gone(pid: int) -> bool:
    """True once ``pid`` has ended.

    A killed orphan is reparented to PID 1, which here (a container whose init
    does not reap) may leave it a zombie: a zombie runs nothing, so it counts.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return True
    return stat[stat.rfind(b")") + 2 :][:1] in (b"Z", b"X")


def session_pids(sid: int) -> list[int]:
    """Live (non-zombie) processes of a session: what a killed daemon left running."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            if os.getsid(pid) == sid and not process_gone(pid):
                pids.append(pid)
        except (ProcessLookupError, PermissionError):
            continue
    return pids


def kill_quietly(pid: int, signum: int = 9) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """A memory figure of a process from /proc/<pid>/status, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for pid {pid}")


# --------------------------------------------------------------------------
# Redis with a password, and the stats server


def authed(server: RedisServer, password: str, *command: object) -> Any:
    """One command on a connection authenticated with ``password``."""
    _, reply = redis_pipeline(server.host, server.port, ["AUTH", password], command)
    return reply


def stats(address: str) -> dict[str, Any] | None:
    """The stats JSON, or None while the server does not answer."""
    host, _, port = address.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=2.0)
    try:
        conn.request("GET", "/")
        data: dict[str, Any] = json.loads(conn.getresponse().read())
        return data
    except (OSError, ValueError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def outcomes(address: str) -> int | None:
    """Succeeded + Failed + Invalid over every type: entries dealt with."""
    data = stats(address)
    if data is None:
        return None
    return sum(sum(data[field].values()) for field in ("Succeeded", "Failed", "Invalid"))
