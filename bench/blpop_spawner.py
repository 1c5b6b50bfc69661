"""The plain reference consumer: BLPOP, posix_spawn the script, waitpid.

Synchronous, no framework, at-most-once (as the Go original). It reads the
daemon's config format (RedisAddress, RedisQueueKey, Tasks[].Type/Script/Workers),
so the harness can run it in the daemon's place:

    python -m bench.blpop_spawner -c cfg.json

With Workers 1 it is exactly BLPOP -> spawn -> waitpid -> BLPOP. With more
workers it tops its free slots up with LPOP <key> <count> while children run,
and blocks in BLPOP only when none run. It serves no stats; SIGTERM ends it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from tests.helpers import RedisConnection, RespValue


def _get(d: dict[str, Any], key: str, default: Any = None) -> Any:
    """Case-insensitive key lookup, as the daemon's config loader does."""
    for k, v in d.items():
        if k.lower() == key.lower():
            return v
    return default


class Spawner:
    """Consume task types from Redis and run their scripts directly."""

    def __init__(self, config: dict[str, Any]) -> None:
        host, _, port = str(_get(config, "RedisAddress", "127.0.0.1:6379")).rpartition(":")
        self.redis = RedisConnection(host, int(port), timeout=None)
        prefix = _get(config, "RedisQueueKey")
        self.scripts: dict[bytes, str] = {}
        self.free: dict[bytes, int] = {}
        for task in _get(config, "Tasks"):
            key = f"{prefix}:{_get(task, 'Type')}".encode()
            self.scripts[key] = _get(task, "Script")
            self.free[key] = max(1, int(_get(task, "Workers", 1)))
        self.running: dict[int, bytes] = {}
        self.env = os.environ

    def spawn(self, key: bytes, entry: bytes) -> None:
        """Run one entry's script (invalid entries are dropped, like the original)."""
        try:
            args = json.loads(entry)["Args"]
        except (ValueError, KeyError, TypeError):
            return
        script = self.scripts[key]
        pid = os.posix_spawn(script, [script, *args], self.env)
        self.running[pid] = key
        self.free[key] -= 1

    def reap(self, pid: int) -> None:
        """Give the finished child's slot back."""
        self.free[self.running.pop(pid)] += 1

    def step(self) -> None:
        """Take what the free slots allow, or wait for the next event."""
        if not self.running:
            keys = [k for k, f in self.free.items() if f > 0]
            reply = self.redis.call("BLPOP", *keys, 0)
            assert isinstance(reply, list)
            key, entry = reply
            assert isinstance(key, bytes) and isinstance(entry, bytes)
            self.spawn(key, entry)
            return
        took = 0
        for key, free in list(self.free.items()):
            if free > 0:
                got: RespValue = self.redis.call("LPOP", key, free)
                for entry in got if isinstance(got, list) else []:
                    assert isinstance(entry, bytes)
                    self.spawn(key, entry)
                    took += 1
        if not took:
            self.reap(os.waitpid(-1, 0)[0])
        while self.running:
            pid, _ = os.waitpid(-1, os.WNOHANG)
            if not pid:
                break
            self.reap(pid)

    def run(self) -> None:
        """Consume forever."""
        while True:
            self.step()


def _exit(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line."""
    p = argparse.ArgumentParser(prog="python -m bench.blpop_spawner", description=__doc__)
    p.add_argument("-c", "--config", required=True)
    a = p.parse_args(argv)
    with open(a.config) as f:
        spawner = Spawner(json.load(f))
    signal.signal(signal.SIGTERM, _exit)
    signal.signal(signal.SIGINT, _exit)
    spawner.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
