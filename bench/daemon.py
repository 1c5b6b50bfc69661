"""Run the daemon under test as users run it, and watch it from outside."""

from __future__ import annotations

import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped,unused-ignore]

from tests.helpers import (
    REPO_ROOT,
    TWISTD,
    DaemonProcess,
    RedisConnection,
    daemon_env,
    free_port,
    get_stats,
    proc_status_kib,
    stats_total,
    write_config,
)

#: C{twistd -n goophry}, from the venv the harness runs in; no pidfile (it would
#: land in the repository and clash between runs). (C{python -m twisted} is C{twist},
#: which has no C{-n}: its form would be C{python -m twisted goophry -c cfg}.)
DEFAULT_DAEMON_CMD = "{twistd} -n --pidfile= goophry -c {config}"
#: The plain BLPOP spawner in the daemon's place (for testing the harness).
STANDIN_DAEMON_CMD = "{python} -m bench.blpop_spawner -c {config}"

NO_STATS = "serves no stats: drains timed until the queue is empty (LLEN) and no child is left"


@dataclass
class TaskSpec:
    """One task type of the daemon's config."""

    type: str
    script: str
    workers: int


def write_bench_config(
    directory: Path, redis_port: int, tasks: list[TaskSpec], stats_port: int, queue_key: str
) -> Path:
    """Write the daemon's JSON config (the original's keys)."""
    return write_config(
        directory,
        filename="goophry.bench.json",
        RedisAddress=f"127.0.0.1:{redis_port}",
        RedisQueueKey=queue_key,
        Tasks=[{"Type": t.type, "Script": t.script, "Workers": t.workers} for t in tasks],
        StatsInterface=f"127.0.0.1:{stats_port}",
        StatsPattern="/",
    )


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
            stats_total(doc, "TaskCount"),
            stats_total(doc, "Running"),
            stats_total(doc, "Succeeded"),
            stats_total(doc, "Failed"),
            stats_total(doc, "Invalid"),
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
    process: DaemonProcess | None = None
    ps: psutil.Process | None = None
    has_stats: bool = False
    exit_code: int | None = None
    stop_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    def start(self, redis: RedisConnection, timeout: float = 30.0) -> None:
        """Start it and wait until it blocks on Redis (and, if it has one, its stats answer)."""
        self.stats_port = free_port()
        cfg = write_bench_config(
            Path(self.workdir), self.redis_port, self.tasks, self.stats_port, self.queue_key
        )
        cmd = shlex.split(
            self.cmd_template.format(config=cfg, python=sys.executable, twistd=shlex.join(TWISTD))
        )
        self.process = process = DaemonProcess(
            cmd, cwd=REPO_ROOT, env=daemon_env(), log_path=Path(self.workdir) / "daemon.log"
        )
        self.ps = psutil.Process(process.pid)
        deadline = time.monotonic() + timeout
        blocked_since: float | None = None
        while time.monotonic() < deadline:
            if not process.running():
                raise RuntimeError(
                    f"daemon exited with {process.proc.returncode}: {self.log_tail()}"
                )
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
        return self.process.log_text()[-size:] if self.process is not None else ""

    def stats(self) -> dict[str, Any] | None:
        """Its stats document, or None."""
        return get_stats(f"127.0.0.1:{self.stats_port}", timeout=1.0) if self.stats_port else None

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
        assert self.process is not None
        total = seen = 0
        base = f"/proc/{self.process.pid}/task"
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
        assert self.process is not None
        return proc_status_kib(self.process.pid, "VmHWM")

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait for the exit; SIGKILL (and say so) if it does not come."""
        if self.process is None:
            return None
        t0 = time.monotonic()
        if self.process.stop(timeout) is None:
            self.notes.append(f"did not exit {timeout:.0f} s after SIGTERM: killed")
        self.stop_s = time.monotonic() - t0
        self.exit_code = self.process.proc.returncode
        if self.exit_code != 0:
            self.notes.append(f"exit code after SIGTERM: {self.exit_code}")
        return self.exit_code
