"""Fixtures for the fault suite: every fault is caused for real.

The daemon runs as C{twistd -n goophry}, Redis is a real C{redis-server},
and scripts leave marker lines in files so that a test can tell what ran, how
often, and what was running at the moment of a crash. Every wait is bounded
(C{wait_for}); the only deliberate pauses are outages of a stated length.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import (
    DaemonProcess,
    Harness,
    RedisServer,
    free_port,
    redis_pipeline,
    task_payload,
    wait_for,
    wait_started,
)

#: Logged once per outage, and once when Redis is back (goophry_tx.redis).
UNREACHABLE = "unreachable"
BACK = "is back after"


class Rig(Harness):
    """
    One test's queue key on one Redis, with marker files for its scripts.

    Scripts written by C{recorder} append their first argument to
    C{started} when they begin and to C{done} only when they end, so a line
    in C{done} is a run to completion.
    """

    def __init__(
        self,
        server: RedisServer,
        queue_key: str,
        tmp_path: Path,
        run_daemon: Callable[..., DaemonProcess] | None = None,
    ) -> None:
        super().__init__(server, queue_key, tmp_path, run_daemon)
        self.marks = tmp_path / "marks"
        self.marks.mkdir(exist_ok=True)
        self.started_file = self.marks / "started"
        self.done_file = self.marks / "done"

    def queued_args(self, task_type: str) -> list[list[str]]:
        """The Args of the entries waiting in a queue, head first."""
        return [json.loads(item)["Args"] for item in self.lrange(self.queue(task_type))]

    def registered(self, daemon: DaemonProcess) -> bool:
        return any(f":{daemon.pid}:".encode() in name for name in self.instances())

    def inflight_of(self, daemon: DaemonProcess, task_type: str) -> list[bytes]:
        """The in-flight entries of the instance run by this process."""
        return [
            entry
            for key in self.inflight_keys()
            if key.startswith(self.keys.inflight(task_type, "").encode())
            and f":{daemon.pid}:".encode() in key
            for entry in self.lrange(key)
        ]

    def inflight_entries(self) -> list[bytes]:
        return [entry for key in self.inflight_keys() for entry in self.lrange(key)]

    def wait_consuming(self, clients: int = 1, timeout: float = 20.0) -> None:
        """Wait until C{clients} connections block in BLMOVE for the daemons.

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
        """Push one task with these Args; return the entry."""
        return self.push_args(task_type, *args)

    def push_each(self, task_type: str, names: Sequence[str]) -> None:
        """One entry per name, its only argument; in order."""
        self.push_payloads(task_type, *(task_payload(name) for name in names))

    # Scripts and their markers

    def recorder(self, name: str = "task.sh", seconds: float = 0.5, extra: str = "") -> Path:
        """A script that marks its start, runs C{extra}, sleeps, then marks its end."""
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
        """The config, with a FailedTasksTTL and a short InstanceTimeout unless told otherwise."""
        settings.setdefault("FailedTasksTTL", 3600)
        settings.setdefault("InstanceTimeout", 3)
        return super().config(tasks, **settings)


@pytest.fixture
def rig(
    redis: RedisServer,
    queue_key: str,
    tmp_path: Path,
    run_daemon: Callable[..., DaemonProcess],
) -> Rig:
    """A Rig on the worker's shared, flushed redis-server."""
    return Rig(redis, queue_key, tmp_path, run_daemon)


@pytest.fixture
def start_daemon(
    run_daemon: Callable[..., DaemonProcess],
) -> Callable[..., DaemonProcess]:
    """C{start_daemon(cfg, *args)}: run_daemon, then wait until the service started."""

    def start(config_path: Path, *args: str, timeout: float = 20.0) -> DaemonProcess:
        return wait_started(run_daemon(config_path, *args), timeout)

    return start


@pytest.fixture
def stats_address() -> str:
    return f"127.0.0.1:{free_port()}"


# --------------------------------------------------------------------------
# Redis with a password


def authed(server: RedisServer, password: str, *command: object) -> Any:
    """One command on a connection authenticated with C{password}."""
    _, reply = redis_pipeline(server.host, server.port, ["AUTH", password], command)
    return reply
