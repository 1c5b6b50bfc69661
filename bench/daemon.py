"""Run the daemon under test as users run it, and watch it from outside."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import psutil  # type: ignore[import-untyped,unused-ignore]

from bench.redisproc import RespClient, free_port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: `twistd -n goophry`, from the venv the harness runs in; no pidfile (it would
#: land in the repository and clash between runs). (`python -m twisted` is `twist`,
#: which has no `-n`: its form would be `python -m twisted goophry -c cfg`.)
DEFAULT_DAEMON_CMD = "{twistd} -n --pidfile= goophry -c {config}"
#: The plain BLPOP spawner in the daemon's place (for testing the harness).
STANDIN_DAEMON_CMD = "{python} -m bench.blpop_spawner -c {config}"

NO_STATS = "serves no stats: drains timed until the queue is empty (LLEN) and no child is left"


def twistd_path() -> str:
    """The twistd script next to this interpreter."""
    return os.path.join(os.path.dirname(sys.executable), "twistd")


@dataclass
class TaskSpec:
    """One task type of the daemon's config."""

    type: str
    script: str
    workers: int


def write_config(
    path: str, redis_port: int, tasks: list[TaskSpec], stats_port: int, queue_key: str = "bench"
) -> None:
    """Write the daemon's JSON config (the original's keys)."""
    cfg = {
        "RedisAddress": f"127.0.0.1:{redis_port}",
        "RedisQueueKey": queue_key,
        "Tasks": [{"Type": t.type, "Script": t.script, "Workers": t.workers} for t in tasks],
        "StatsInterface": f"127.0.0.1:{stats_port}",
        "StatsPattern": "/",
    }
    with open(path, "w") as f:
        json.dump(cfg, f, indent=1)


def http_get_json(port: int, path: str = "/", timeout: float = 1.0) -> dict[str, Any] | None:
    """GET a JSON document from 127.0.0.1:port, or None if that fails."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
    except OSError:
        return None
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.") or head.split()[1:2] != [b"200"]:
        return None
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _sum(doc: dict[str, Any], key: str) -> int:
    value = doc.get(key)
    return sum(int(v) for v in value.values()) if isinstance(value, dict) else 0


@dataclass
class Counts:
    """Task counters from the stats endpoint, summed over types."""

    started: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    invalid: int = 0

    @classmethod
    def of(cls, doc: dict[str, Any]) -> Counts:
        """Read TaskCount/Running/Succeeded/Failed/Invalid."""
        return cls(
            _sum(doc, "TaskCount"),
            _sum(doc, "Running"),
            _sum(doc, "Succeeded"),
            _sum(doc, "Failed"),
            _sum(doc, "Invalid"),
        )

    @property
    def finished(self) -> int:
        """Tasks whose outcome is known."""
        return self.succeeded + self.failed + self.invalid


@dataclass
class Daemon:
    """The daemon process under test (or the stand-in), with its config."""

    cmd_template: str
    workdir: str
    redis_port: int
    tasks: list[TaskSpec]
    queue_key: str = "bench"
    stats_port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    ps: psutil.Process | None = None
    has_stats: bool = False
    exit_code: int | None = None
    stop_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def log_path(self) -> str:
        """Where its stdout and stderr go."""
        return os.path.join(self.workdir, "daemon.log")

    def start(self, redis: RespClient, timeout: float = 30.0) -> None:
        """Start it and wait until it blocks on Redis (and, if it has one, its stats answer)."""
        self.stats_port = free_port()
        cfg = os.path.join(self.workdir, "goophry.bench.json")
        write_config(cfg, self.redis_port, self.tasks, self.stats_port, self.queue_key)
        cmd = shlex.split(
            self.cmd_template.format(config=cfg, python=sys.executable, twistd=twistd_path())
        )
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
        log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()
        self.ps = psutil.Process(self.proc.pid)
        deadline = time.monotonic() + timeout
        blocked_since: float | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}: {self.log_tail()}")
            if self.stats() is not None:
                self.has_stats = True
            if int(redis.info("clients").get("blocked_clients", "0")) > 0:
                blocked_since = blocked_since or time.monotonic()
                # A daemon may block on Redis before its stats listen: give them 2 s.
                if self.has_stats or time.monotonic() - blocked_since > 2.0:
                    if not self.has_stats:
                        self.notes.append(NO_STATS)
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"daemon not ready after {timeout:.0f} s: {self.log_tail()}")

    def log_tail(self, size: int = 2000) -> str:
        """The end of its log, for error messages."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - size))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def stats(self) -> dict[str, Any] | None:
        """Its stats document, or None."""
        return http_get_json(self.stats_port) if self.stats_port else None

    def counts(self) -> Counts | None:
        """Its task counters, or None without stats."""
        doc = self.stats()
        return Counts.of(doc) if doc is not None else None

    def children(self) -> list[psutil.Process]:
        """Its child processes alive now (its running scripts)."""
        assert self.ps is not None
        children: list[psutil.Process] = self.ps.children()
        return children

    def cpu_s(self) -> float:
        """Its own CPU seconds (user + system, all its threads; not its children)."""
        assert self.ps is not None
        t = self.ps.cpu_times()
        return float(t.user + t.system)

    def cpu_ns_precise(self) -> int:
        """Its CPU time in ns from schedstat (finer than clock ticks; live threads only)."""
        assert self.proc is not None
        total = seen = 0
        base = f"/proc/{self.proc.pid}/task"
        for tid in os.listdir(base):
            try:
                with open(f"{base}/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
                    seen += 1
            except (OSError, ValueError, IndexError):
                continue
        if not seen:
            raise RuntimeError(f"no readable {base}/*/schedstat")
        return total

    def peak_rss_kb(self) -> int:
        """VmHWM: the exact peak resident set size so far."""
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        return 0

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait for the exit; SIGKILL (and say so) if it does not come."""
        if self.proc is None:
            return None
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.notes.append(f"did not exit {timeout:.0f} s after SIGTERM: killed")
                self.proc.kill()
                self.proc.wait()
        self.stop_s = time.monotonic() - t0
        self.exit_code = self.proc.returncode
        if self.exit_code != 0:
            self.notes.append(f"exit code after SIGTERM: {self.exit_code}")
        return self.exit_code
